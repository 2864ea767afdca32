// Drive a `compresstune web` page in headless Chromium (puppeteer-core, the system browser).
//   node tests/js/browser.mjs URL TEXTS.json SCREENSHOT.png [EXAMPLE_TEXT]
// Env: CHROMIUM (the browser binary; default /usr/bin/chromium). Prints one JSON object:
//   {"ready": {dtype, threads}, "labels", "scores", "ms" (per text, batch 1), "example": {label, score, ms},
//    "console": [browser console errors], "requests": [same-origin paths fetched], "offsite": [other URLs asked for]}
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const [url, textsFile, shot, example = 'a gripping, funny and beautifully acted film'] = process.argv.slice(2);
if (!url || !textsFile || !shot) {
  console.error('usage: node tests/js/browser.mjs URL TEXTS.json SCREENSHOT.png [EXAMPLE_TEXT]');
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const web = process.env.COMPRESSTUNE_WEB_DIR || path.resolve(here, '../../web');
const puppeteer = (await import(createRequire(path.join(web, 'package.json')).resolve('puppeteer-core'))).default;

const texts = JSON.parse(readFileSync(textsFile, 'utf8'));
const origin = new URL(url).origin;
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run'],
});
const out = { console: [], requests: [], offsite: [] };
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 900, height: 520 });
  page.on('console', (m) => { if (m.type() === 'error') out.console.push(m.text()); });
  page.on('pageerror', (e) => out.console.push(String(e)));
  await page.setRequestInterception(true);
  page.on('request', (r) => {  // offline: anything not from the page's own server is refused and recorded
    if (r.url().startsWith(origin) || r.url().startsWith('data:') || r.url().startsWith('blob:')) {
      out.requests.push(new URL(r.url(), origin).pathname);
      r.continue();
    } else {
      out.offsite.push(r.url());
      r.abort();
    }
  });
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForFunction('window.pageReady || window.pageError', { timeout: 120000 });
  const err = await page.evaluate('window.pageError');
  if (err) throw new Error(`the page failed to load the model: ${err}`);
  out.ready = await page.evaluate('window.pageReady');
  const res = await page.evaluate((t) => window.classifyAll(t), texts);
  out.labels = res.map((r) => r.label);
  out.scores = res.map((r) => r.score);
  out.ms = res.map((r) => r.ms);
  await page.$eval('#text', (el, v) => { el.value = v; }, example);
  await page.click('#go');
  await page.waitForFunction("document.getElementById('ms').textContent !== '-'", { timeout: 60000 });
  out.example = await page.evaluate(() => ({
    text: document.getElementById('text').value,
    label: document.getElementById('label').textContent,
    score: Number(document.getElementById('score').textContent),
    ms: Number(document.getElementById('ms').textContent),
  }));
  await page.screenshot({ path: shot });
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
