cd /work/main
for i in 1 2; do
  PYTHONPATH=/tmp/wt-old .venv/bin/compresstune bench speed --task cola --model /tmp/distilbert-random --glue-dir ../shared/data/glue --steps 20 --rounds 3 --methods full,learner64-p2 --out /tmp/bs/db-old-$i.md
  .venv/bin/compresstune bench speed --task cola --model /tmp/distilbert-random --glue-dir ../shared/data/glue --steps 20 --rounds 3 --methods full,learner64-p2 --out /tmp/bs/db-new-$i.md
done
date -u +%T
