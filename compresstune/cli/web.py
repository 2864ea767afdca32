"""``compresstune web BUNDLE``: a static web page that runs the bundle in the browser (no torch)."""

from __future__ import annotations

import click

from .common import out_dir


@click.command("web")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    callback=out_dir,
    help="the page folder (default: BUNDLE-web beside the bundle; a previous page there is replaced)",
)
@click.option(
    "--toolchain",
    type=click.Path(file_okay=False),
    help="the pinned npm folder with transformers.js (default: $COMPRESSTUNE_WEB_DIR, else the repository's web/)",
)
@click.option("--no-install", is_flag=True, help="never run `npm ci`: fail when the toolchain is not installed")
def web(bundle, out, toolchain, no_install):
    """Write a static page that classifies text with BUNDLE in the browser: transformers.js on onnxruntime-web
    (WebAssembly, CPU), vendored with the model and tokenizer files so that it works offline. Serve the folder
    over http (for example `python -m http.server -d DIR 8000`) and open it; the page shows the label, the
    score and the latency of each call.

    Needs a format-2 bundle (the Hugging Face layout) of a single-text classifier. The JavaScript comes from the
    pinned npm toolchain (web/package-lock.json); `npm ci` runs there first when it is not installed."""
    from ..deploy.web import write_page

    rep = write_page(bundle, out, toolchain=toolchain, install=not no_install, log=click.echo)
    v = rep["versions"]
    click.echo(
        f"web page: {rep['dir']} ({rep['total_bytes'] / 1e6:.1f} MB; model {rep['model']}, dtype {rep['dtype']}; "
        f"transformers.js {v['transformers.js']}, onnxruntime-web {v['onnxruntime-web']})"
    )
    click.echo(f"  serve it: python -m http.server -d {rep['dir']} 8000   then open http://127.0.0.1:8000/")
