"""Latency and size of a candidate, measured, never guessed, and never measured twice.

A candidate's latency depends only on its shapes and export variant, so its architecture is built
cheaply: the pretrained model cut to its depth (the layers a distill stage would keep) and pruned
to its widths by weight magnitude, with no recovery; exported, turned into its variant, and timed
back to back with the uncompressed model's PyTorch eager (interleaved rounds, rotating order). The
table is keyed by the shapes and variant settings, so candidates with equal shapes share an entry
and a second search on the same machine reuses it. With a ``latency_table`` (a ``compresstune
bench onnx`` JSON from the target device) the latency comes from there instead."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ..compress.distill import every_other, keep_layers_student
from ..compress.prune import PruneSpec, count_params, prune_model
from ..errors import UserError
from ..export.onnx import export_onnx, make_session
from ..feeds import TOKEN_INPUTS, session_feed, token_feed
from ..manifest import write_json_atomic
from ..measure.compare import interleaved, ort_timed_runner, speedup
from ..measure.latency import machine_info
from ..models.arch import arch_for, encoder_layers
from ..models.artifacts import layer_shapes
from ..models.inputs import model_inputs
from ..pipeline.fingerprint import fingerprint
from ..pipeline.identity import file_sha256
from .candidates import Candidate
from .spec import Budget

TABLE_VERSION = 2  # 2: variants built by the export's registry (fp16 from the fused graph)


def build_architecture(reference: torch.nn.Module, cand: Candidate) -> torch.nn.Module:
    """``reference`` at the candidate's depth and widths (untrained: for timing and size only)."""
    m = copy.deepcopy(reference).eval()
    n = len(encoder_layers(m))
    if cand.layers < n:
        m = keep_layers_student(m, every_other(n, cand.layers))
    if cand.prunes:
        prune_model(m, PruneSpec(cand.head_ratio, cand.ffn_ratio, "uniform", "magnitude", cand.hidden_ratio))
    return m.eval()


def reference_id(reference: torch.nn.Module) -> dict:
    """The uncompressed model a fraction of eager is taken against."""
    return {
        "name": str(getattr(reference.config, "_name_or_path", "")),
        "model_type": reference.config.model_type,
        "layers": layer_shapes(reference),
        "positions": getattr(reference.config, "max_position_embeddings", None),
    }


def shape_key(model: torch.nn.Module, cand: Candidate, export_cfg) -> str:
    """What the candidate's file is: layer shapes, hidden size, vocabulary, variant and its settings (the name
    of the file `--export-candidates` writes, and of its row in a target's table)."""
    spec = arch_for(model)
    return fingerprint(
        {
            "v": TABLE_VERSION,
            "layers": layer_shapes(model),
            "hidden": getattr(model.config, spec.config_hidden),
            "vocab": model.config.vocab_size,
            "variant": cand.variant,
            "per_channel": export_cfg.per_channel,
            "quantize_embeddings": export_cfg.quantize_embeddings,
            "opset": export_cfg.opset,
        }
    )


def timing_key(
    file_key: str, budget: Budget, reference: dict, from_table: bool = True, iters: int | None = None
) -> str:
    """A measurement of that file: where it was timed (here, against ``reference``, or a target's table by its
    content), at which shape, provider and thread count, and (timed here) with how many calls. ``from_table``:
    False when the search writes the candidate files for the target instead of reading its table."""
    source = "here"
    if budget.latency_table and from_table:
        source = "table:" + hashlib.sha256(Path(budget.latency_table).read_bytes()).hexdigest()[:16]
    where = {"source": source, "shape": list(budget.shape), "provider": budget.provider, "threads": budget.threads}
    if source == "here" and iters is not None:
        where["iters"] = iters  # search.timing_iters: a timing of 10 calls is not one of 60
    return fingerprint({"file": file_key, "reference": reference if source == "here" else None, **where})


def build_variant(fp32: Path, dst: Path, variant: str, model: torch.nn.Module, export_cfg) -> Path:
    """The variant file, built by the export's own variant registry (export/variants.py) in ``dst``'s folder;
    int8 without the accuracy fallback (it keeps float only what a trained model needs, and the winner is timed
    again)."""
    from ..export.variants import VariantBuilder

    if variant == "fp32":
        return fp32
    spec = arch_for(model)
    heads = [s["heads"] for s in layer_shapes(model)]
    builder = VariantBuilder(
        fp32,
        dst.parent,
        heads[0] if len(set(heads)) == 1 else heads,
        getattr(model.config, spec.config_hidden),
        model.config.model_type,
        export_cfg,
        lambda: [],
        lambda p: 0.0,
        0.0,
        log=lambda *_: None,
    )
    builder.build(variant)
    return builder.built[variant]


class LatencyTable:
    """``latency.json`` in the search folder: shape key -> measurement."""

    def __init__(
        self,
        path: Path,
        budget: Budget,
        iters: int,
        log=print,
        keep_dir: Path | None = None,
        reference: torch.nn.Module | None = None,
    ):
        self.path, self.budget, self.iters, self.log, self.keep_dir = path, budget, iters, log, keep_dir
        self.data = json.loads(path.read_text()) if path.is_file() else {"entries": {}}
        self._drop_other_machines()
        # --export-candidates writes the files a target's table is made from: that table may not exist yet
        use_table = budget.latency_table and keep_dir is None
        self.external = _load_external(budget.latency_table, budget) if use_table else None
        self.reference = reference  # the uncompressed model, PyTorch eager

    def _drop_other_machines(self) -> None:
        """Timings made here are only valid here: a search folder resumed on another machine (shared storage)
        times its candidates again instead of trusting the first machine's numbers."""
        here, there = machine_info(), self.data.get("machine")
        if there is None or there == here:
            return
        entries = self.data["entries"]
        stale = [k for k, v in entries.items() if str(v.get("source", "")).startswith("this machine")]
        for k in stale:
            del entries[k]
        if stale:
            self.log(
                f"[search] {self.path}: {len(stale)} latencies were timed on another machine "
                f"({there.get('cpu')}, {there.get('logical_cores')} cores); timing them again here"
            )

    def adopt(self, other: Path) -> int:
        """Entries of another search's table measured on this machine (same CPU and cores); returns how many."""
        if self.external is not None or not other.is_file() or other.resolve() == self.path.resolve():
            return 0
        data = json.loads(other.read_text())
        if data.get("machine") != machine_info():
            return 0
        new = {
            k: {**v, "from": str(other)} for k, v in data.get("entries", {}).items() if k not in self.data["entries"]
        }
        self.data["entries"].update(new)
        return len(new)

    def measure(self, cand: Candidate, export_cfg) -> dict:
        model = build_architecture(self.reference, cand)
        file_key = shape_key(model, cand, export_cfg)
        key = timing_key(file_key, self.budget, reference_id(self.reference), self.external is not None, self.iters)
        if key in self.data["entries"] and not self.keep_dir:
            return {**self.data["entries"][key], "key": key, "cached": True}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, Path(tmp) / "model.onnx", export_cfg.opset)
            path = build_variant(fp32, Path(tmp) / f"model.{cand.variant}.onnx", cand.variant, model, export_cfg)
            entry = {
                "size_mb": round(path.stat().st_size / 2**20, 3),
                "params": count_params(model)["total"],
                "layer_shapes": layer_shapes(model),
                "variant": cand.variant,
                "file_key": file_key,
            }
            if self.keep_dir is not None:
                self.keep_dir.mkdir(parents=True, exist_ok=True)
                kept = self.keep_dir / f"{file_key}.onnx"
                os.replace(path, kept)
                path = kept
            entry.update(self._time(path, model.config.vocab_size, f"{file_key}.onnx"))
        entry["build_and_time_s"] = round(time.perf_counter() - t0, 2)
        self.data["entries"][key] = entry
        if self.external is None:
            self.data["machine"] = machine_info()  # where the local entries were timed
        write_json_atomic(self.path, self.data)
        return {**entry, "key": key, "cached": False}

    def _time(self, path: Path, vocab: int, name: str, scale: int = 1) -> dict:
        """``path`` timed back to back with the uncompressed model (``scale`` x the iterations and rounds)."""
        b, s = self.budget.shape
        reference = self.reference
        if self.external is not None:
            row = self.external.get((name, b, s))
            if row is None:
                return {"p50_ms": None, "source": f"{self.budget.latency_table}: no row for {name} at {b}x{s}"}
            return {"p50_ms": row["p50_ms"], "source": self.budget.latency_table}
        threads = torch.get_num_threads()
        torch.set_num_threads(self.budget.threads)
        try:
            sess = make_session(path, self.budget.provider, self.budget.threads)
            feed = session_feed(sess, b, s, vocab, pad_tail=False)  # ids the candidate's vocabulary has
            dev = "cuda" if self.budget.provider == "cuda" else "cpu"
            reference.to(dev)
            names = [n for n in TOKEN_INPUTS if n in set(model_inputs(reference))]
            tin = {k: torch.from_numpy(v) for k, v in token_feed(names, b, s, vocab, pad_tail=False).items()}
            tin = {k: v.to(dev) for k, v in tin.items()}
            sync = torch.cuda.synchronize if dev == "cuda" else None

            def eager():
                with torch.inference_mode():
                    reference(**tin)

            stats = interleaved(
                {"candidate": (ort_timed_runner(sess, feed, self.budget.provider), None), "eager": (eager, sync)},
                warmup=3,
                iters=self.iters * scale,
                rounds=4 * scale,
            )
        finally:
            torch.set_num_threads(threads)
            reference.to("cpu")  # candidates are built from it on the CPU
        ratio = speedup(stats, "candidate", "eager")
        return {
            "p50_ms": round(stats["candidate"]["p50_ms"], 4),
            "eager_p50_ms": round(stats["eager"]["p50_ms"], 4),
            "speedup_vs_eager": round(ratio, 4),
            "fraction_of_eager": round(1.0 / ratio, 4),
            "runs": stats["candidate"]["runs"],
            "source": "this machine, back to back with the uncompressed model's PyTorch eager",
        }


def _load_external(path: str, budget: Budget) -> dict:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        rows = data["rows"]
        table = {(Path(r["file"]).name, int(r["batch"]), int(r["seq"])): r for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"search.budget.latency_table: {p} is not a `compresstune bench onnx --out FILE` result "
            f"({exc.__class__.__name__}: {exc}); time the files `search --export-candidates DIR` wrote with "
            "`compresstune bench onnx DIR/*.onnx --shapes BxS --out FILE` on the target and give FILE."
        ) from None
    timed = {"provider": data.get("provider"), "threads": data.get("threads")}
    wanted = {"provider": budget.provider, "threads": budget.threads}
    if differ := [k for k in wanted if timed[k] is not None and timed[k] != wanted[k]]:
        raise UserError(
            f"search.budget.latency_table: {p} was timed with "
            + ", ".join(f"{k} {timed[k]}" for k in differ)
            + " but the budget is for "
            + ", ".join(f"{k} {wanted[k]}" for k in differ)
            + f"; set {' and '.join(f'search.budget.{k}={timed[k]}' for k in differ)}, or time the files again "
            "on the target with `compresstune bench onnx ... " + " ".join(f"--{k} {wanted[k]}" for k in differ) + "`."
        )
    return table


def within_budget(entry: dict, budget: Budget, margin: float = 0.0) -> tuple[bool, str]:
    """(meets every budget, why not); every budget tightened by ``margin`` (a share)."""
    why = []
    scale = 1.0 - margin
    tight = f" (the budget less the {margin:.0%} margin)" if margin else ""
    if budget.size_mb is not None and entry["size_mb"] > budget.size_mb * scale:
        why.append(f"size {entry['size_mb']:.2f} MB > {budget.size_mb * scale:.3g} MB{tight}")
    if budget.latency_ms is not None:
        if entry.get("p50_ms") is None:
            why.append("no latency measured")
        elif entry["p50_ms"] > budget.latency_ms * scale:
            why.append(f"p50 {entry['p50_ms']:.2f} ms > {budget.latency_ms * scale:.3g} ms{tight}")
    if budget.latency_fraction is not None and entry.get("fraction_of_eager", 1e9) > budget.latency_fraction * scale:
        frac = entry.get("fraction_of_eager", float("nan"))
        why.append(f"{frac:.3f} of eager > {budget.latency_fraction * scale:.3g}{tight}")
    return (not why, "; ".join(why))


def bundle_vocab_size(model_file: Path, reference: torch.nn.Module) -> int:
    """How many token ids the shipped model takes: its embedding table's rows (smaller than the reference's when
    the report trimmed the vocabulary; deploy/edge.py ``vocab_of``), else the reference's."""
    from ..deploy.edge import vocab_of

    return vocab_of(model_file) or reference.config.vocab_size


def check_key(path: Path, budget: Budget) -> str | None:
    """What a bundle check depends on: the file's bytes, the budget and this machine (None: no file)."""
    if not path.is_file():
        return None
    return fingerprint({"file": file_sha256(path), "budget": budget.model_dump(), "machine": machine_info()})


def retime_bundle(path: Path, table: LatencyTable) -> dict:
    """The shipped file timed again on its own, back to back with the uncompressed model, and its size."""
    if not path.is_file():
        return {"meets_budget": False, "over_budget": f"{path} is missing", "retimed": False}
    t0 = time.perf_counter()
    entry = {"file": str(path), "size_mb": round(path.stat().st_size / 2**20, 3)}
    if table.external is not None:
        entry.update(
            p50_ms=None,
            retimed=False,
            note="latency not re-timed here: it came from the target's table; time this file there",
        )
        budget = table.budget.model_copy(update={"latency_ms": None})
    else:
        # the deciding measurement: 4x the calls in 16 interleaved rounds (the speed-up is the median over rounds),
        # so one noisy stretch of the machine moves it less than a candidate's screening timing
        entry.update(table._time(path, bundle_vocab_size(path, table.reference), path.name, scale=4), retimed=True)
        budget = table.budget
    ok, why = within_budget(entry, budget)
    return {**entry, "meets_budget": ok, "over_budget": why, "time_s": round(time.perf_counter() - t0, 2)}
