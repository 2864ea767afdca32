"""``compresstune web``: a static page that runs a bundle in the browser with transformers.js.

The page folder is self-contained and works offline once served over http (browsers refuse ``fetch``
from ``file://``; ``python -m http.server -d DIR`` is enough)::

    index.html, app.js                        the page: a textarea, a button; label, score, latency
    page.json                                 what app.js reads: model folder, dtype, task, versions
    vendor/transformers.min.js                transformers.js (with onnxruntime-web's JS inside)
    vendor/ort-wasm-simd-threaded.{mjs,wasm}  onnxruntime-web's WebAssembly CPU backend
    model/                                    the bundle's Hugging Face files: config.json, tokenizer.json,
                                              tokenizer_config.json, special_tokens_map.json, onnx/<model>

The JavaScript comes from the pinned npm toolchain (``package.json`` + ``package-lock.json``) in the
repository's ``web/`` folder (or ``$COMPRESSTUNE_WEB_DIR``); ``npm ci`` runs there when its
``node_modules`` is missing or stale. ``window.classifyAll(texts)`` on the page classifies a list of
texts one by one ({label, score, ms} each), for tests and scripts. Imports only the standard library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import UserError
from ..manifest import replace_dir
from ..names import inside, is_inside
from .layout import (
    CONFIG_FILE,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    bundle_file,
    load_config,
    read_config_file,
    section_of,
)

TOOLCHAIN_ENV = "COMPRESSTUNE_WEB_DIR"
PAGE_FORMAT = "compresstune-web"
PAGE_FILE = "page.json"
MODEL_DIR = "model"
TRANSFORMERS_PKG = "@huggingface/transformers"
VENDOR = {  # page file -> its source under node_modules/
    "transformers.min.js": f"{TRANSFORMERS_PKG}/dist/transformers.min.js",
    "ort-wasm-simd-threaded.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
}
DTYPES = {"onnx/model.onnx": "fp32", "onnx/model_quantized.onnx": "q8", "onnx/model_fp16.onnx": "fp16"}
NPM_CI = ["ci", "--ignore-scripts", "--no-audit", "--no-fund"]
SETUP_HINT = (
    "run `bash scripts/setup-web.sh` in the repository (or `cd {dir} && ONNXRUNTIME_NODE_INSTALL=skip npm ci "
    "--ignore-scripts`)"
)


def toolchain_dir(path=None) -> Path:
    """The pinned npm folder: ``path``, else ``$COMPRESSTUNE_WEB_DIR``, else the repository's ``web/``."""
    d = Path(path or os.environ.get(TOOLCHAIN_ENV) or Path(__file__).resolve().parents[2] / "web")
    if not (d / "package.json").is_file() or not (d / "package-lock.json").is_file():
        raise UserError(
            f"the pinned transformers.js toolchain was not found: {d} has no package.json and package-lock.json. "
            "It is the web/ folder of a compresstune source checkout; point --toolchain (or $COMPRESSTUNE_WEB_DIR) "
            "at a copy of that folder."
        )
    return d


def _package(path: Path) -> dict:
    """A package.json as a dict; a damaged one is a message naming it."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path}: not a readable package.json ({e.__class__.__name__}); restore it from git.") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: not a package.json (a JSON object); restore it from git.")
    return d


def _installed(web: Path) -> bool:
    """node_modules holds exactly the pinned transformers.js (a stale install counts as missing)."""
    pinned = _package(web / "package.json").get("dependencies")
    pinned = pinned if isinstance(pinned, dict) else {}
    got = web / "node_modules" / TRANSFORMERS_PKG / "package.json"
    if not got.is_file() or not all((web / "node_modules" / src).is_file() for src in VENDOR.values()):
        return False
    return _package(got).get("version") == pinned.get(TRANSFORMERS_PKG)


def ensure_toolchain(web=None, install: bool = True, log=None) -> Path:
    """The pinned toolchain folder with its ``node_modules`` installed (``npm ci`` when missing or stale and
    ``install``; ``ONNXRUNTIME_NODE_INSTALL=skip`` and no install scripts, so no CUDA binaries are fetched)."""
    web = toolchain_dir(web)
    if _installed(web):
        return web
    hint = SETUP_HINT.format(dir=web)
    if not install:
        raise UserError(f"{web}/node_modules is missing or not the pinned versions (package-lock.json): {hint}.")
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"{web}/node_modules is missing and npm is not installed, so the pinned transformers.js cannot be "
            "installed. Install Node.js 18 or newer with npm (Debian/Ubuntu: `apt-get install -y nodejs npm`), "
            f"then {hint}."
        )
    if log:
        log(f"installing the pinned transformers.js toolchain: npm {' '.join(NPM_CI)} in {web}")
    env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
    try:
        proc = subprocess.run(
            [npm, *NPM_CI], cwd=web, env=env, capture_output=True, text=True, timeout=1800, check=False
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"`npm ci` in {web} did not finish in 30 minutes; check the network, then {hint}.") from None
    if proc.returncode != 0 or not _installed(web):
        tail = " ".join((proc.stderr or proc.stdout).split())[-600:]
        raise UserError(
            f"`npm ci` in {web} failed (exit {proc.returncode}): {tail} -- it needs the npm registry (or a mirror "
            f"set in ~/.npmrc) and Node.js 18 or newer; fix that, then {hint}."
        )
    return web


def page_model(bundle_dir) -> tuple[dict, Path, str]:
    """(compresstune config, model file, transformers.js dtype) of a bundle the page can run."""
    bundle = Path(bundle_dir)
    raw = read_config_file(bundle)
    cfg = section_of(raw, bundle / CONFIG_FILE)
    if cfg is raw or "model_type" not in raw:
        raise UserError(
            f"{bundle / CONFIG_FILE}: a format-1 bundle (model.onnx beside a compresstune-only config.json); "
            "transformers.js needs the Hugging Face layout (format 2: a transformers config.json, onnx/model*.onnx). "
            "Write the bundle again with this compresstune: `compresstune pipeline run FILE --from ship`."
        )
    load_config(bundle)  # every check compresstune predict makes (labels, lengths, id2label, ...)
    rel = (cfg.get("files") or {}).get("model", "")
    if rel not in DTYPES:
        raise UserError(
            f"{bundle / CONFIG_FILE}: files.model is {rel!r}; transformers.js loads only "
            f"{', '.join(DTYPES)}. Write the bundle again with this compresstune."
        )
    if cfg.get("problem_type") != "single_label_classification" or len(cfg.get("text_fields") or []) != 1:
        raise UserError(
            f"{bundle / CONFIG_FILE}: the web page runs single-text classifiers; this bundle is "
            f"{cfg.get('problem_type')} on {cfg.get('text_fields')}. Use `compresstune predict` for it."
        )
    model = bundle_file(bundle, cfg, "model", rel)
    names = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE)
    files = [inside(bundle, n, f"bundle {bundle}") for n in names]  # a link out of the bundle is refused
    for need in (model, *files[:2]):
        if not need.is_file():
            raise UserError(f"bundle {bundle}: {need.name} is missing; write the bundle again.")
    if Path(str(model) + ".data").exists():
        raise UserError(f"{model}: its weights are in an external .data file, which the page does not load.")
    return cfg, model, DTYPES[rel]


def _place(src: Path, dst: Path) -> None:
    """A copy, never a link: bundle files are rewritten in place (rewrite_config), which would change the page."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


PAGE_ENTRIES = {"index.html", "app.js", PAGE_FILE, "vendor", MODEL_DIR}  # what a page folder holds


def _is_page(folder: Path) -> bool:
    """A folder this command wrote: its page.json says so and it holds nothing else (nothing of the user's)."""
    try:
        page = json.loads((folder / PAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    names = {p.name for p in folder.iterdir()}
    return isinstance(page, dict) and page.get("format") == PAGE_FORMAT and names <= PAGE_ENTRIES


def _prepare_out(out: Path, bundle: Path) -> Path:
    """The temporary folder the page is written into, beside ``out``; nothing that is not a page is replaced."""
    if out.is_symlink():
        raise UserError(f"page folder {out} is a link; pass the real folder as --out.")
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"page folder {out} is a file; pass another --out.")
    if is_inside(bundle, out) or is_inside(out, bundle):
        raise UserError(f"page folder {out} and the bundle {bundle} lie inside one another; pass a separate --out.")
    if out.is_dir() and any(out.iterdir()) and not _is_page(out):
        raise UserError(
            f"page folder {out} is not empty and not a page this command wrote (a {PAGE_FILE} of format "
            f"{PAGE_FORMAT} and nothing else); refusing to replace it. Pass a new or empty --out."
        )
    for side in (out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")):
        if side.exists() and not (
            side.is_dir() and not side.is_symlink() and (not any(side.iterdir()) or _is_page(side))
        ):
            raise UserError(f"{side} is in the way (it is not a page left over by this command); move it away.")
        shutil.rmtree(side, ignore_errors=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True)
    return tmp


def _version(web: Path, pkg: str) -> str | None:
    return json.loads((web / "node_modules" / pkg / "package.json").read_text(encoding="utf-8")).get("version")


def write_page(bundle_dir, out_dir=None, *, toolchain=None, install: bool = True, log=None) -> dict:
    """Write the static page for ``bundle_dir`` into ``out_dir`` (default: ``<bundle>-web`` beside it; a previous
    page there is replaced). Returns ``{"dir", "dtype", "model", "files" {name: bytes}, "total_bytes", "versions"}``."""
    bundle = Path(bundle_dir)
    cfg, model, dtype = page_model(bundle)
    web = ensure_toolchain(toolchain, install=install, log=log)
    out = Path(out_dir) if out_dir else bundle.resolve().with_name(bundle.resolve().name + "-web")
    tmp = _prepare_out(out, bundle.resolve())
    out = out.resolve()
    try:
        for name, src in VENDOR.items():
            _place(web / "node_modules" / src, tmp / "vendor" / name)
        for name in (CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE):
            src = inside(bundle, name, f"bundle {bundle}")  # a link out of the bundle is refused, never copied
            if src.is_file():
                _place(src, tmp / MODEL_DIR / name)
        _place(model, tmp / MODEL_DIR / cfg["files"]["model"])
        versions = {
            "transformers.js": _version(web, TRANSFORMERS_PKG),
            "onnxruntime-web": _version(web, "onnxruntime-web"),
        }
        page = {
            "format": PAGE_FORMAT,
            "format_version": 1,
            "model": MODEL_DIR,
            "dtype": dtype,
            "task": cfg.get("task"),
            "variant": cfg.get("variant"),
            "labels": cfg.get("labels"),
            "max_length": cfg.get("max_length"),
            "bundle": bundle.resolve().name,  # the folder name only: a published page shows no local paths
            "versions": versions,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / PAGE_FILE).write_text(json.dumps(page, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        title = f"{cfg.get('task') or 'classifier'} ({cfg.get('variant') or dtype})"
        (tmp / "index.html").write_text(INDEX_HTML.replace("{title}", _html(title)), encoding="utf-8")
        (tmp / "app.js").write_text(APP_JS, encoding="utf-8")
        replace_dir(tmp, out)  # the previous page set aside first, deleted only once the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return {
        "dir": str(out),
        "dtype": dtype,
        "model": f"{MODEL_DIR}/{cfg['files']['model']}",
        "files": files,
        "total_bytes": sum(files.values()),
        "versions": versions,
    }


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>
  body { font: 16px system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
  textarea { width: 100%; height: 6rem; font: inherit; box-sizing: border-box; }
  button { font: inherit; padding: .3rem 1.2rem; margin: .5rem 0; }
  #result { font-size: 1.3rem; } #status { color: #666; } .err { color: #b00; }
</style>
</head>
<body>
<h1>{title}</h1>
<p id="status">loading the model (served over http: <code>python -m http.server -d THIS_FOLDER</code>) ...</p>
<textarea id="text" placeholder="type a sentence">a gripping, funny and beautifully acted film</textarea>
<button id="go" disabled>Classify</button>
<p id="result">label <b id="label">-</b> &middot; score <b id="score">-</b> &middot; <b id="ms">-</b> ms</p>
<script type="module" src="app.js"></script>
</body>
</html>
"""

APP_JS = """// compresstune web page: the bundle in model/ run by transformers.js on onnxruntime-web (WebAssembly, CPU).
import { env, pipeline } from './vendor/transformers.min.js';

const $ = (id) => document.getElementById(id);
const here = new URL('.', location.href);
try {
  const page = await (await fetch('page.json')).json();
  env.allowRemoteModels = false;  // offline: the model, the tokenizer and the wasm all come from this folder
  env.allowLocalModels = true;
  env.useBrowserCache = false;
  env.localModelPath = here.pathname;
  env.backends.onnx.wasm.wasmPaths = {
    mjs: new URL('vendor/ort-wasm-simd-threaded.mjs', here).href,
    wasm: new URL('vendor/ort-wasm-simd-threaded.wasm', here).href,
  };
  const t0 = performance.now();
  const clf = await pipeline('text-classification', page.model, { dtype: page.dtype, device: 'wasm' });
  const classify = async (text) => {
    const t = performance.now();
    const [top] = await clf(text);
    return { label: top.label, score: top.score, ms: performance.now() - t };
  };
  window.classifyAll = async (texts) => {
    const out = [];
    for (const text of texts) out.push(await classify(text));
    return out;
  };
  $('go').onclick = async () => {
    const r = await classify($('text').value);
    $('label').textContent = r.label;
    $('score').textContent = r.score.toFixed(4);
    $('ms').textContent = r.ms.toFixed(1);
  };
  $('go').disabled = false;
  const threads = env.backends.onnx.wasm.numThreads;
  const ms = Math.round(performance.now() - t0);
  const v = page.versions['transformers.js'];
  $('status').textContent = `${page.task} ${page.variant} (${page.dtype}), loaded in ${ms} ms; ` +
    `transformers.js ${v}, WebAssembly CPU, ${threads ?? 1} thread(s)`;
  window.pageReady = { dtype: page.dtype, threads: threads ?? 1 };
} catch (e) {
  $('status').textContent = `error: ${e.message ?? e}`;
  $('status').className = 'err';
  window.pageError = String(e.stack ?? e);
}
"""
