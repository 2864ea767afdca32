"""A bundle that checks itself on the machine it is on (``compresstune verify BUNDLE``).

The build machine is rarely the device: int8 kernels differ between CPUs (VNNI or not), between
ONNX Runtime builds and between execution providers. So the report stage stores, in the bundle's
``verify.json``, a few hundred dev inputs with the labels and logits the bundle gave on the
machine that built it, and the machine's profile. ``verify`` runs the same inputs through the
same :class:`Predictor` batching here and compares: label agreement (the share of inputs whose
label is the build machine's; for regression, values within ``value_atol``) and the largest logit
difference. Nothing here imports torch or transformers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UserError
from ..machine import describe, profile
from .predictor import Predictor

VERIFY_FILE = "verify.json"
FORMAT = "compresstune-verify"
DEFAULT_EXAMPLES = 300
DEFAULT_MIN_AGREEMENT = 0.99


def machine_record(provider: str = "cpu") -> dict:
    """Where a bundle was built or checked: the machine profile in words and the parts that decide int8."""
    p = profile()
    ort = p.get("onnxruntime") or {}
    return {
        "machine": describe(p),
        "cpu": p.get("cpu"),
        "logical_cores": p.get("logical_cores"),
        "isa": p["isa"],
        "features": p["features"],
        "onnxruntime": ort.get("version"),
        "provider": provider,
    }


def _as_inputs(texts: list) -> list:
    return [t if isinstance(t, str) else tuple(t) for t in texts]


def write_verification_set(
    bundle_dir, texts: list, n: int = DEFAULT_EXAMPLES, batch_size: int = 32, seed: int = 0, provider: str = "cpu"
) -> dict:
    """Store ``n`` of ``texts`` (strings or (a, b) pairs; a seeded random sample) with this machine's labels and
    logits in ``bundle_dir/verify.json``; returns its summary."""
    bundle = Path(bundle_dir)
    pick = sorted(random.Random(seed).sample(range(len(texts)), min(n, len(texts))))
    inputs = [texts[i] for i in pick]
    pred = Predictor(bundle, provider=provider)
    logits = pred.logits(_as_inputs(inputs), batch_size=batch_size, warn=False)
    rec = {
        "format": FORMAT,
        "format_version": 1,
        "problem_type": pred.problem_type,
        "batch_size": batch_size,
        "made_on": machine_record(provider),
        "inputs": [x if isinstance(x, str) else list(x) for x in inputs],
        "labels": [] if pred.problem_type == "regression" else [int(k) for k in logits.argmax(1)],
        "logits": [[float(v) for v in row] for row in logits],
    }
    (bundle / VERIFY_FILE).write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"file": VERIFY_FILE, "examples": len(inputs), "batch_size": batch_size, "made_on": rec["made_on"]}


def _load(bundle: Path) -> dict:
    path = bundle / VERIFY_FILE
    if not path.is_file():
        raise UserError(
            f"bundle {bundle}: no {VERIFY_FILE}; bundles written before compresstune stored a verification set have "
            "none. Rebuild the bundle (rerun the pipeline's report stage: `compresstune pipeline run FILE --from "
            "report`) or compare `compresstune predict` outputs by hand."
        )
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({e}); rebuild the bundle.") from None
    ok = (
        isinstance(rec, dict)
        and rec.get("format") == FORMAT
        and isinstance(rec.get("inputs"), list)
        and isinstance(rec.get("logits"), list)
        and len(rec["inputs"]) == len(rec["logits"]) > 0
    )
    if not ok:
        raise UserError(f"{path}: not a compresstune verification set (format {FORMAT!r}); rebuild the bundle.")
    return rec


def verify_bundle(
    bundle_dir,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    provider: str = "cpu",
    threads: int | None = None,
    value_atol: float = 0.05,
) -> dict:
    """Run the bundle's verification set here; returns agreement, the largest logit difference, both machines
    and ``passed`` (agreement >= ``min_agreement``)."""
    if not 0 <= min_agreement <= 1:
        raise UserError(f"--min-agreement must lie in [0, 1], not {min_agreement}.")
    bundle = Path(bundle_dir)
    pred = Predictor(bundle, provider=provider, threads=threads)  # the bundle itself is checked first
    rec = _load(bundle)
    got = pred.logits(_as_inputs(rec["inputs"]), batch_size=int(rec.get("batch_size") or 32), warn=False)
    want = np.asarray(rec["logits"], dtype=np.float64)
    if got.shape != want.shape:
        raise CheckFailed(
            f"bundle {bundle}: the model gives {got.shape[1]} outputs per input, the verification set recorded "
            f"{want.shape[1]}; the bundle's files do not belong together: rebuild it."
        )
    diff = np.abs(got.astype(np.float64) - want)
    if rec.get("problem_type") == "regression":
        agree = diff[:, 0] <= value_atol
    else:
        agree = got.argmax(1) == np.asarray(rec["labels"])
    agreement = float(agree.mean())
    return {
        "bundle": str(bundle),
        "examples": len(rec["inputs"]),
        "agreement": agreement,
        "disagreements": int((~agree).sum()),
        "max_abs_logit_diff": float(diff.max()),
        "min_agreement": min_agreement,
        "passed": agreement >= min_agreement,
        "here": machine_record(provider),
        "made_on": rec.get("made_on"),
    }


def verify_main(bundle, min_agreement: float, provider: str, threads, as_json: bool, echo=print) -> int:
    """``compresstune verify``: prints the result; 0 when it passed, 3 below the threshold."""
    res = verify_bundle(bundle, min_agreement, provider, threads)
    if as_json:
        echo(json.dumps(res, indent=2))
    else:
        made = res["made_on"] or {}
        echo(f"bundle {res['bundle']}: {res['examples']} verification inputs")
        echo(f"  built on:   {made.get('machine')}, onnxruntime {made.get('onnxruntime')}, {made.get('provider')}")
        here = res["here"]
        echo(f"  checked on: {here['machine']}, onnxruntime {here['onnxruntime']}, {here['provider']}")
        echo(
            f"  label agreement {res['agreement']:.2%} ({res['disagreements']} differ; threshold "
            f"{res['min_agreement']:.0%}), largest logit difference {res['max_abs_logit_diff']:.2e}"
        )
        echo(
            "  PASSED: this machine gives the build machine's results."
            if res["passed"]
            else "  FAILED: this machine's results differ from the build machine's; do not deploy this bundle "
            "here as it is (for int8 on a CPU without VNNI, rebuild with export.reduce_range=true, or ship the "
            "fp32 / optimized variant)."
        )
    return 0 if res["passed"] else 3
