"""One training loop, shared by every training stage (teacher, fine-tune, priming, distillation).

* dynamic padding (each batch is padded to its own longest example),
* AdamW, linear warm-up then linear decay, gradient clipping, optional bf16 autocast,
* evaluation at each epoch end (and every N steps if asked), best and last weights,
* a resumable checkpoint (model, optimizer, scheduler, RNG states, step, history) written
  atomically every N steps and at each epoch end. Running the same stage again after
  a crash or SIGKILL resumes from it and reaches the same result as an unbroken run,
* a NaN/inf loss stops the stage with :class:`CheckFailed`; the last good checkpoint stays.

What trains is decided by ``requires_grad`` on the model's parameters, set by the
caller; a ``phase_hook(step, epoch_float)`` may change it during training (priming).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .data import Split, TaskData, compute_metrics
from .errors import CheckFailed

# Fault injection for the resume tests: SIGKILL this process right after the given step's
# checkpoint is written. Never set outside tests.
_KILL_ENV = "COMPRESSTUNE_FAULT_KILL_AFTER_STEP"


@dataclass
class TrainSpec:
    epochs: float = 3.0
    max_steps: int | None = None
    lr: float = 2e-5
    batch_size: int = 32
    eval_batch_size: int = 128
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    bf16: bool = False
    eval_every_steps: int | None = None
    checkpoint_every_steps: int = 200
    select: str = "best"
    seed: int = 42
    group_by_length: bool = True


@dataclass
class TrainResult:
    best_metric: float | None
    best_step: int | None
    final_metric: float | None
    steps: int
    epochs: float
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    resumed_from_step: int | None = None
    trainable_params: int = 0
    total_params: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def encode(tokenizer, split: Split, max_length: int) -> list[dict]:
    """Tokenize once, without padding (padding happens per batch)."""
    cols = list(zip(*split.texts)) if split.texts else [[]]
    enc = tokenizer(*[list(c) for c in cols], truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(split))]


def collate(examples: list[dict], pad_id: int, with_token_types: bool = True) -> dict[str, torch.Tensor]:
    n = max(len(e["input_ids"]) for e in examples)
    out = {"input_ids": torch.full((len(examples), n), pad_id, dtype=torch.long),
           "attention_mask": torch.zeros((len(examples), n), dtype=torch.long)}
    if with_token_types and "token_type_ids" in examples[0]:
        out["token_type_ids"] = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        L = len(e["input_ids"])
        out["input_ids"][i, :L] = torch.tensor(e["input_ids"])
        out["attention_mask"][i, :L] = 1
        if "token_type_ids" in out:
            out["token_type_ids"][i, :L] = torch.tensor(e["token_type_ids"])
    return out


def model_inputs(model: nn.Module) -> tuple[str, ...]:
    """The input names this model's forward accepts (DistilBERT has no token_type_ids)."""
    from .models import arch_for

    spec = arch_for(model)
    return ("input_ids", "attention_mask", "token_type_ids") if spec.uses_token_type_ids else ("input_ids", "attention_mask")


@torch.no_grad()
def predict(model: nn.Module, encoded: list[dict], pad_id: int, batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """Raw logits for every example, in order (fp32, eval mode)."""
    was_training = model.training
    model.eval()
    names = model_inputs(model)
    outs = []
    # sort by length so batches pad little; restore the order afterwards
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = collate([encoded[i] for i in idx], pad_id, "token_type_ids" in names)
        batch = {k: v.to(device) for k, v in batch.items() if k in names}
        outs.append(model(**batch).logits.float().cpu())
    model.train(was_training)
    logits = torch.cat(outs).numpy() if outs else np.zeros((0, 1), dtype=np.float32)
    res = np.empty_like(logits)
    res[np.array(order, dtype=int)] = logits
    return res


def logits_to_preds(task: TaskData, logits: np.ndarray) -> np.ndarray:
    return logits[:, 0] if task.is_regression else logits.argmax(-1)


def evaluate(model, task: TaskData, dev_encoded, pad_id, batch_size=128, device="cpu") -> dict:
    logits = predict(model, dev_encoded, pad_id, batch_size, device)
    return compute_metrics(task, logits_to_preds(task, logits), task.dev.labels)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True) -> list[list[int]]:
    """The batches of one epoch, a pure function of (seed, epoch) so a resumed run sees the same order.

    With ``group_by_length``, the shuffled examples are cut into mega-batches of 50
    batches, each sorted by length and split into batches, and the batches shuffled:
    batches hold similar lengths, so dynamic padding wastes little (about 2x faster on
    SST-2 than random batches) while the order stays random."""
    n = len(lengths)
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if not group_by_length:
        return [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    mega = 50 * batch_size
    batches = []
    for c in range(0, n, mega):
        chunk = sorted(perm[c : c + mega], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[i] for i in order]


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


def diverged(what: str, step: int, ckpt_step, ckpt_path, spec) -> str:
    kept = f"the last good checkpoint ({ckpt_path}, step {ckpt_step}) is kept" if ckpt_step is not None else "no checkpoint had been written yet"
    return (f"training diverged: {what} at step {step}; the weights were not updated with it, and {kept}. Running the same "
            f"command again would diverge again at the same step: lower the learning rate (now {spec.lr:g}, e.g. "
            f"finetune.lr={spec.lr / 3:.2g}) or turn off bf16. A changed setting starts the stage over.")


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def train(
    model: nn.Module,
    task: TaskData,
    tokenizer,
    spec: TrainSpec,
    ckpt_dir: str | Path,
    max_length: int = 128,
    device: str = "cpu",
    phase_hook: Callable[[int, float], None] | None = None,
    optimizer_params: list[nn.Parameter] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = True,
    loss_fn: Callable | None = None,
    evaluate_dev: bool = True,
) -> TrainResult:
    """Train ``model`` on ``task.train``; the chosen weights (best or last) are loaded into ``model`` on return.

    ``optimizer_params``: every parameter that trains at any point (default: those with
    ``requires_grad`` now). Parameters frozen at a given step get no gradient, and AdamW
    leaves parameters without a gradient untouched.
    ``loss_fn(model, batch, labels) -> loss`` replaces the task loss (distillation);
    with ``evaluate_dev=False`` no dev metric is computed (the last weights are kept).
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    seed_everything(spec.seed)
    model.to(device)
    pad_id = tokenizer.pad_token_id or 0
    names = model_inputs(model)
    train_enc = encode(tokenizer, task.train, max_length)
    dev_enc = encode(tokenizer, task.dev, max_length)
    labels = torch.tensor(task.train.labels, dtype=torch.float if task.is_regression else torch.long)

    n = len(train_enc)
    steps_per_epoch = math.ceil(n / spec.batch_size)
    total_steps = spec.max_steps or max(1, math.ceil(spec.epochs * steps_per_epoch))
    warmup = int(spec.warmup_ratio * total_steps)

    if phase_hook is not None:
        phase_hook(0, 0.0)
    params = optimizer_params if optimizer_params is not None else [p for p in model.parameters() if p.requires_grad]
    ids = {id(p) for p in params}
    named = [(nm, p) for nm, p in model.named_parameters() if id(p) in ids]
    no_decay = [p for nm, p in named if p.ndim < 2 or "LayerNorm" in nm or "layer_norm" in nm]
    decay = [p for nm, p in named if not (p.ndim < 2 or "LayerNorm" in nm or "layer_norm" in nm)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total_steps, warmup))

    step, history, best, best_step, resumed = 0, [], None, None, None
    last_ckpt_step = None
    elapsed_before = 0.0  # training seconds (evaluation excluded) spent by earlier, interrupted processes
    loss_sum, loss_n = 0.0, 0
    if last_path.is_file():
        ck = torch.load(last_path, map_location="cpu", weights_only=False)  # RNG states must stay CPU tensors
        if ck.get("total_steps") != total_steps or ck.get("n_train") != n:
            log(f"checkpoint {last_path} is from a different schedule; starting over")
        else:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            step, history, best, best_step = ck["step"], ck["history"], ck["best"], ck["best_step"]
            loss_sum, loss_n = ck["loss_sum"], ck["loss_n"]
            elapsed_before = ck.get("train_elapsed_s", 0.0)
            _set_rng_state(ck["rng"])
            resumed = last_ckpt_step = step
            log(f"resuming from checkpoint at step {step}/{total_steps}")

    def save_last():
        nonlocal last_ckpt_step
        last_ckpt_step = step
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                      "step": step, "history": history, "best": best, "best_step": best_step, "loss_sum": loss_sum,
                      "loss_n": loss_n, "rng": _rng_state(), "total_steps": total_steps, "n_train": n,
                      "train_elapsed_s": elapsed_before + train_clock}, last_path)

    def do_eval():
        nonlocal best, best_step
        if not evaluate_dev:
            history.append({"step": step, "epoch": round(step / steps_per_epoch, 4), "train_time_s": round(elapsed_before + train_clock, 3),
                            "train_loss": (loss_sum / loss_n) if loss_n else None, "lr": sched.get_last_lr()[0], "dev_main": None})
            log(f"step {step}/{total_steps} epoch {history[-1]['epoch']:.2f} train_loss {history[-1]['train_loss']:.4f}")
            return
        metrics = evaluate(model, task, dev_enc, pad_id, spec.eval_batch_size, device)
        rec = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_time_s": round(elapsed_before + train_clock, 3),
               "train_loss": (loss_sum / loss_n) if loss_n else None,
               "lr": sched.get_last_lr()[0], **{f"dev_{k}": v for k, v in metrics.items()}}
        history.append(rec)
        if best is None or metrics["main"] > best:
            best, best_step = metrics["main"], step
            _atomic_save(model.state_dict(), best_path)  # serialized as it stands: no copy, no memory spike
        log(f"step {step}/{total_steps} epoch {rec['epoch']:.2f} train_loss {rec['train_loss'] if rec['train_loss'] is None else round(rec['train_loss'], 4)} dev_{task.metric} {metrics['main']:.2f}")

    kill_after = int(os.environ.get(_KILL_ENV, "0") or 0)
    model.train()
    train_clock = 0.0  # this process's training time, evaluation and checkpointing excluded
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train", dynamic_ncols=True, mininterval=2.0)
    use_bf16 = spec.bf16
    lengths = [len(e["input_ids"]) for e in train_enc]
    batches, batches_epoch = None, -1
    while step < total_steps:
        epoch = step // steps_per_epoch
        if epoch != batches_epoch:
            batches, batches_epoch = epoch_batches(lengths, spec.batch_size, spec.seed, epoch, spec.group_by_length), epoch
        idx = batches[step - epoch * steps_per_epoch]
        if phase_hook is not None:
            phase_hook(step, step / steps_per_epoch)
        t_step = time.perf_counter()
        batch = collate([train_enc[i] for i in idx], pad_id, "token_type_ids" in names)
        batch = {k: v.to(device) for k, v in batch.items() if k in names}
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16, enabled=use_bf16):
            if loss_fn is not None:
                loss = loss_fn(model, batch, labels[idx].to(device))
            else:
                loss = model(**batch, labels=labels[idx].to(device)).loss
        if not torch.isfinite(loss):
            bar.close()
            raise CheckFailed(diverged(f"the loss is {loss.item()}", step + 1, last_ckpt_step, last_path, spec))
        loss.backward()
        grads = [p for p in params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(grads, spec.max_grad_norm) if spec.max_grad_norm else torch.nn.utils.get_total_norm([p.grad for p in grads])
        if not torch.isfinite(norm):  # a finite loss can still have inf/NaN gradients: never step on them
            bar.close()
            raise CheckFailed(diverged(f"the gradient norm is {norm.item()}", step + 1, last_ckpt_step, last_path, spec))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        train_clock += time.perf_counter() - t_step
        loss_sum += loss.item()
        loss_n += 1
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}", refresh=False)
        end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
        if end_of_epoch or (spec.eval_every_steps and step % spec.eval_every_steps == 0):
            do_eval()
            if end_of_epoch:
                loss_sum, loss_n = 0.0, 0
        if end_of_epoch or step % spec.checkpoint_every_steps == 0:
            save_last()
            if kill_after and step >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    train_time = elapsed_before + train_clock
    final = history[-1]["dev_main"] if history else None
    if spec.select == "best" and evaluate_dev and best_path.is_file():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    total, trainable = count_params(model)
    (ckpt_dir / "history.json").write_text(json.dumps(history, indent=1))
    return TrainResult(best, best_step, final, step, round(step / steps_per_epoch, 4), history, round(train_time, 2), resumed,
                       sum(p.numel() for p in params), total)
