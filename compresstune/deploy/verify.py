"""A bundle that checks itself on the machine it is on (``compresstune verify BUNDLE``).

The build machine is rarely the device: int8 kernels differ between CPUs (VNNI or not), between
ONNX Runtime builds and between execution providers. So the ship stage stores, in the bundle's
``verify.json``, a few hundred dev inputs with the labels and logits the bundle gave on the
machine that built it, and the machine's profile. ``verify`` runs the same inputs through the
same :class:`Predictor` batching here and compares: label agreement (the share of inputs whose
label is the build machine's; for regression, values within ``value_atol``) and the largest logit
difference. Nothing here imports torch or transformers."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UserError
from ..machine import describe, gpu_words, has_vnni, profile
from ..names import is_inside
from .predictor import Predictor

VERIFY_FILE = "verify.json"
FORMAT = "compresstune-verify"
DEFAULT_EXAMPLES = 300
DEFAULT_MIN_AGREEMENT = 0.99
# the median over the inputs of each input's largest logit difference. The same int8 file on a CPU whose kernels
# compute it exactly gives 0 there (a few inputs differ where a float rounding moves a dynamic quantisation step);
# 8-bit weights on x86 without VNNI move every input (median 0.06 on SST-2: docs/RESULTS.md, issue 17)
DEFAULT_MAX_MEDIAN_DIFF = 0.01


@dataclass(frozen=True)
class Tolerance:
    """When a bundle passes here: ``min_agreement`` of its labels equal the build machine's, and the typical
    input's logits (the median of each input's largest difference) within ``max_median_diff`` of them."""

    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_median_diff: float = DEFAULT_MAX_MEDIAN_DIFF

    def check(self) -> None:
        if not 0 <= self.min_agreement <= 1:
            raise UserError(f"--min-agreement must lie in [0, 1], not {self.min_agreement}.")
        if not (math.isfinite(self.max_median_diff) and self.max_median_diff >= 0):
            raise UserError(f"--max-median-diff must be a number >= 0, not {self.max_median_diff}.")


def _finite(v) -> bool:
    """A finite float; an integer too large for a float (10**400) is not a logit."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


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
        **({"gpu": gpu_words(p["gpu"])} if provider != "cpu" and p.get("gpu") else {}),
    }


def _cut(x):
    """A text (or each text of a pair) cut to ``MAX_INPUT_CHARS``."""
    return x[:MAX_INPUT_CHARS] if isinstance(x, str) else type(x)(t[:MAX_INPUT_CHARS] for t in x)


def _as_inputs(texts: list) -> list:
    return [t if isinstance(t, str) else tuple(t) for t in texts]


def write_verification_set(
    bundle_dir, texts: list, n: int = DEFAULT_EXAMPLES, batch_size: int = 32, seed: int = 0, provider: str = "cpu"
) -> dict:
    """Store ``n`` of ``texts`` (strings or (a, b) pairs; a seeded random sample) with this machine's labels and
    logits in ``bundle_dir/verify.json``; returns its summary."""
    bundle = Path(bundle_dir)
    pick = sorted(random.Random(seed).sample(range(len(texts)), min(n, len(texts))))
    inputs = [_cut(texts[i]) for i in pick]
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


FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_FILE_BYTES = 64 << 20  # a verification set of a few hundred inputs is well under 1 MB
MAX_EXAMPLES = 10_000
# a text past this many characters is past every max_length (4096 tokens) anyway: stored cut there, so that a
# check on a device takes seconds (a 40 MB input took 1 min 44 s)
MAX_INPUT_CHARS = 50_000
MAX_TOTAL_CHARS = 16_000_000


def _load(bundle: Path) -> dict:
    path = bundle / VERIFY_FILE
    if path.is_symlink() or (path.exists() and not is_inside(path, bundle)):
        raise UserError(
            f"bundle {bundle}: {VERIFY_FILE} is a symbolic link; the verification set must be a plain file in the "
            "bundle (copy the file there, or rebuild the bundle)."
        )
    if path.exists() and not path.is_file():
        raise UserError(f"bundle {bundle}: {VERIFY_FILE} is not a file (a folder or a device); rebuild the bundle.")
    if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes is not a verification set (at most 64 MiB).")
    if not path.is_file():
        raise UserError(
            f"bundle {bundle}: no {VERIFY_FILE}; bundles written before compresstune stored a verification set have "
            "none. Rebuild the bundle (rerun the pipeline's ship stage: `compresstune pipeline run FILE --from "
            "ship`) or compare `compresstune predict` outputs by hand."
        )
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f"{path}: not readable JSON ({e.__class__.__name__}); rebuild the bundle.") from None
    ok = (
        isinstance(rec, dict)
        and rec.get("format") == FORMAT
        and isinstance(rec.get("inputs"), list)
        and isinstance(rec.get("logits"), list)
    )
    if not ok:
        raise UserError(f"{path}: not a compresstune verification set (format {FORMAT!r}); rebuild the bundle.")
    if len(rec["inputs"]) > MAX_EXAMPLES:  # a check on a device must take seconds, not the hours this would
        raise UserError(
            f"{path}: {len(rec['inputs']):,} inputs is not a verification set (at most {MAX_EXAMPLES:,}; bundles "
            f"store {DEFAULT_EXAMPLES}); rebuild the bundle."
        )
    if not len(rec["inputs"]) == len(rec["logits"]) > 0:
        raise UserError(
            f"{path}: {len(rec['inputs'])} inputs but {len(rec['logits'])} rows of logits (both must be the same, "
            "and more than none); the file was changed after the bundle was written: rebuild the bundle."
        )
    return rec


def _record_problems(rec: dict, pred: Predictor) -> list[str]:
    """Whether a verification set fits the bundle it sits in: input fields, output widths, finite logits, labels."""
    n_in, n_fields = len(rec["inputs"]), len(pred.text_fields)
    width = 1 if pred.problem_type == "regression" else len(pred.labels)
    out = []
    if type(rec.get("format_version")) is not int or rec["format_version"] != 1:
        out.append(f"format_version {rec.get('format_version')!r} is not 1")
    if rec.get("problem_type") != pred.problem_type:
        out.append(f"problem_type {rec.get('problem_type')!r} is not the bundle's {pred.problem_type!r}")
    bs = rec.get("batch_size", 32)
    if not isinstance(bs, int) or isinstance(bs, bool) or not 1 <= bs <= 65536:
        out.append(f"batch_size {bs!r:.40} is not an integer from 1 to 65536")
    made = rec.get("made_on")
    if not isinstance(made, dict):
        out.append("made_on (the build machine's record) is missing or not a record")
    elif made.get("provider") not in ("cpu", "cuda") or not all(
        isinstance(made.get(k), str) for k in ("isa", "machine")
    ):
        out.append("made_on does not say the build machine (its provider cpu or cuda, its isa and machine)")

    def fits(x) -> bool:
        if n_fields == 1:
            return isinstance(x, str) and bool(x.strip())
        return isinstance(x, list) and len(x) == n_fields and all(isinstance(t, str) and t.strip() for t in x)

    bad = [i for i, x in enumerate(rec["inputs"]) if not fits(x)]
    if bad:
        out.append(f"inputs {bad[:5]} are not {n_fields} non-empty text(s) each")
    else:
        sizes = [len(x) if isinstance(x, str) else max(map(len, x)) for x in rec["inputs"]]
        long = [i for i, n in enumerate(sizes) if n > MAX_INPUT_CHARS]
        if long or sum(sizes) > MAX_TOTAL_CHARS:
            out.append(
                f"inputs {long[:5]} are longer than {MAX_INPUT_CHARS:,} characters (bundles store texts cut there)"
                if long
                else f"its texts hold {sum(sizes):,} characters (at most {MAX_TOTAL_CHARS:,})"
            )

    def row_ok(r) -> bool:
        nums = isinstance(r, list) and len(r) == width
        return nums and all(isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) for v in r)

    bad = [i for i, r in enumerate(rec["logits"]) if not row_ok(r)]
    if bad:
        out.append(f"logits rows {bad[:5]} are not {width} finite numbers each")
    else:  # beyond float32's range no ONNX model output can lie (and differences of such values overflow)
        big = [i for i, r in enumerate(rec["logits"]) if any(abs(v) > FLOAT32_MAX for v in r)]
        if big:
            out.append(f"logits rows {big[:5]} hold values beyond float32's range (|x| > {FLOAT32_MAX:.3g})")
    if pred.problem_type != "regression":
        labels = rec.get("labels")
        ok = isinstance(labels, list) and len(labels) == n_in
        if not ok or not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < width for k in labels):
            out.append(f"labels are not {n_in} class ids from 0 to {width - 1}")
        elif not bad:  # the stored labels are the stored logits' argmax: one cannot be edited without the other
            off = [i for i, (k, r) in enumerate(zip(labels, rec["logits"])) if max(r) > r[k]]
            if off:
                out.append(f"labels {off[:5]} are not the argmax of their stored logits")
    return out


def verify_bundle(
    bundle_dir,
    tol: Tolerance = Tolerance(),
    provider: str = "cpu",
    threads: int | None = None,
    value_atol: float = 0.05,
) -> dict:
    """Run the bundle's verification set here; returns agreement, the median and largest logit difference, both
    machines and ``passed`` (within ``tol``)."""
    tol.check()
    bundle = Path(bundle_dir)
    pred = Predictor(bundle, provider=provider, threads=threads)  # the bundle itself is checked first
    rec = _load(bundle)
    problems = _record_problems(rec, pred)
    if problems:
        raise UserError(
            f"{bundle / VERIFY_FILE}: it does not fit this bundle ({'; '.join(problems)}); it was changed after the "
            "bundle was written, or belongs to another bundle. Rebuild the bundle (`--from ship`)."
        )
    got = pred.logits(_as_inputs(rec["inputs"]), batch_size=int(rec.get("batch_size") or 32), warn=False)
    want = np.asarray(rec["logits"], dtype=np.float64)
    if got.shape != want.shape:
        raise CheckFailed(
            f"bundle {bundle}: the model gives {got.shape[1]} outputs per input, the verification set recorded "
            f"{want.shape[1]}; the bundle's files do not belong together: rebuild it."
        )
    finite = bool(np.isfinite(got).all())
    diff = np.abs(got.astype(np.float64) - want)
    if pred.problem_type == "regression":
        agree = diff[:, 0] <= value_atol
    else:
        agree = got.argmax(1) == np.asarray(rec["labels"])
    agreement = float(agree.mean())
    median = float(np.median(diff.max(1))) if finite else None
    return {
        "bundle": str(bundle),
        "examples": len(rec["inputs"]),
        "agreement": agreement,
        "disagreements": int((~agree).sum()),
        "max_abs_logit_diff": float(diff.max()) if finite else None,
        "median_abs_logit_diff": median,
        "min_agreement": tol.min_agreement,
        "max_median_diff": tol.max_median_diff,
        "passed": finite and agreement >= tol.min_agreement and median <= tol.max_median_diff,
        "here": machine_record(provider),
        "made_on": rec.get("made_on"),
        "variant": pred.config.get("variant"),
        "int8_reduce_range": (pred.config.get("built_on") or {}).get("int8_reduce_range"),
    }


def verify_main(bundle, tol: Tolerance, provider: str, threads, as_json: bool, echo=print) -> int:
    """``compresstune verify``: prints the result; 0 when it passed, 3 outside ``tol``."""
    res = verify_bundle(bundle, tol, provider, threads)
    if as_json:
        echo(json.dumps(res, indent=2))
    else:
        made = res["made_on"] if isinstance(res["made_on"], dict) else {}
        made = {k: _shown(made.get(k)) for k in ("machine", "onnxruntime", "provider", "gpu")}  # from a file: printable
        here = res["here"]
        echo(f"bundle {res['bundle']}: {res['examples']} verification inputs")
        for what, m in (("built on:  ", made), ("checked on:", here)):
            gpu = f" ({m['gpu']})" if m.get("gpu") not in (None, "None") else ""
            echo(f"  {what} {m['machine']}, onnxruntime {m['onnxruntime']}, {m['provider']} provider{gpu}")
        if made["provider"] != here["provider"]:
            echo(
                f"  note: the set was made on the {made['provider']} provider and is checked here on "
                f"{here['provider']}; to check the bundle as it will run, use --provider {made['provider']} on such a "
                "machine"
            )
        echo(
            f"  label agreement {res['agreement']:.2%} ({res['disagreements']} differ; "
            f"threshold {100 * tol.min_agreement:g}%)"
        )
        if res["max_abs_logit_diff"] is None:
            echo("  logits: not finite (NaN/inf)")
        else:
            echo(
                f"  logit difference: median {res['median_abs_logit_diff']:.2e} (threshold {tol.max_median_diff:g}), "
                f"largest {res['max_abs_logit_diff']:.2e}"
            )
        echo("  PASSED: this machine gives the build machine's results." if res["passed"] else _failed(res, tol))
    return 0 if res["passed"] else 3


def _shown(value, limit: int = 200) -> str:
    """A value read from a bundle's file, as one printable line: control characters (newlines, terminal escapes)
    written as escapes, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _failed(res: dict, tol: Tolerance) -> str:
    fix = "do not deploy this bundle here as it is: " + _advice(res)
    if res["max_abs_logit_diff"] is not None and res["median_abs_logit_diff"] > tol.max_median_diff:
        return (
            "  FAILED: this machine computes the model differently from the build machine (the typical input's "
            f"logits moved by {res['median_abs_logit_diff']:.2g}, not only inputs near a tie); " + fix
        )
    return "  FAILED: this machine's results differ from the build machine's; " + fix


def _advice(res: dict) -> str:
    """What to do, from what differs between the two machines (the provider, int8 without VNNI, or the rest)."""
    made = res["made_on"] if isinstance(res["made_on"], dict) else {}
    here = res["here"]
    if made.get("provider") != here["provider"]:
        return (
            f"it was verified on the {_shown(made.get('provider'))} provider and runs here on {here['provider']}; "
            f"check it on the provider it will run on, or rebuild it for {here['provider']}."
        )
    vnni = has_vnni("x86_64", set(here.get("features") or []))
    int8 = str(res.get("variant") or "").startswith("int8")
    if int8 and res.get("int8_reduce_range") is False and str(here.get("isa")).startswith("x86") and not vnni:
        return (
            "its int8 weights use 8 bits, whose sums can saturate on an x86 CPU without VNNI like this one; rebuild "
            "it with export.reduce_range=true (the default since 2026-12-06), or ship the fp32 / optimized variant."
        )
    if all(made.get(k) == here.get(k) for k in ("isa", "onnxruntime", "provider")):
        return (
            f"this machine is of the build machine's class ({here.get('isa')}, onnxruntime {here.get('onnxruntime')}, "
            f"{here['provider']} provider), so the bundle's model or its verify.json was likely changed after the "
            "bundle was written (or this CPU differs in a way its class does not show): rebuild the bundle and "
            "check it again."
        )
    return (
        f"this machine ({here.get('isa')}, onnxruntime {here.get('onnxruntime')}) computes its "
        f"{_shown(res.get('variant'))} model differently from the build machine ({_shown(made.get('isa'))}, "
        f"onnxruntime {_shown(made.get('onnxruntime'))}); ship the fp32 / optimized variant, or build it on a "
        "machine of this class and verify it there."
    )
