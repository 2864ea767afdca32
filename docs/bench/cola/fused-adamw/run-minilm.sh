set -x
cd /work/main
for i in 1 2; do
  PYTHONPATH=/tmp/wt-old .venv/bin/compresstune bench speed --task cola --glue-dir ../shared/data/glue --steps 40 --rounds 2 --methods full,learner64-p2,learner64-p0,learner8-p2 --out /tmp/bs/old-$i.md
  .venv/bin/compresstune bench speed --task cola --glue-dir ../shared/data/glue --steps 40 --rounds 2 --methods full,learner64-p2,learner64-p0,learner8-p2 --out /tmp/bs/new-$i.md
done
date -u +%T
