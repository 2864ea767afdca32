// Classify texts with a compresstune bundle in transformers.js (Node, onnxruntime-node, CPU), from disk only.
//   node tests/js/classify.mjs BUNDLE_DIR TEXTS.json [q8|fp32|fp16]
// TEXTS.json: a JSON list of strings. Prints one JSON object to stdout:
//   {"dtype", "labels": [...], "scores": [...], "load_ms", "ms": [per-text latency]}
// Each text is its own call (batch 1), as Predictor(...).predict(texts, batch_size=1).
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const [bundle, textsFile, dtype = 'q8'] = process.argv.slice(2);
if (!bundle || !textsFile) {
  console.error('usage: node tests/js/classify.mjs BUNDLE_DIR TEXTS.json [q8|fp32|fp16]');
  process.exit(2);
}
// transformers.js is installed in web/ (the pinned toolchain), not beside this script
const web = process.env.COMPRESSTUNE_WEB_DIR || path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../web');
const req = createRequire(path.join(web, 'package.json'));
const { env, pipeline } = await import(req.resolve('@huggingface/transformers'));

env.allowRemoteModels = false;
env.allowLocalModels = true;
const dir = path.resolve(bundle);
env.localModelPath = path.dirname(dir) + path.sep;
const texts = JSON.parse(readFileSync(textsFile, 'utf8'));

let t0 = performance.now();
const clf = await pipeline('text-classification', path.basename(dir), { dtype, device: 'cpu' });
const load_ms = performance.now() - t0;
const labels = [], scores = [], ms = [];
for (const text of texts) {
  t0 = performance.now();
  const [top] = await clf(text);
  ms.push(performance.now() - t0);
  labels.push(top.label);
  scores.push(top.score);
}
await clf.dispose();
process.stdout.write(JSON.stringify({ dtype, labels, scores, load_ms, ms }) + '\n');
