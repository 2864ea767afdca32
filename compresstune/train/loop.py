"""One training loop, shared by every training stage (teacher, fine-tune, priming, distillation).

* dynamic padding (each batch is padded to its own longest example),
* AdamW (PyTorch's fused kernel where there is one), linear warm-up then linear decay, gradient clipping,
  optional bf16 autocast,
* evaluation at each epoch end (and every N steps if asked), best and last weights,
* a resumable checkpoint (model, optimizer, scheduler, RNG states, step, history) written
  atomically every N steps and at each epoch end. Running the same stage again after
  a crash or SIGKILL resumes from it and reaches the same result as an unbroken run,
* a NaN/inf loss stops the stage with :class:`CheckFailed`; the last good checkpoint stays.

What trains is decided by ``requires_grad`` on the model's parameters, set by the
caller; a ``phase_hook(step, epoch_float)`` may change it during training (priming).
The loop is a :class:`Trainer` whose steps are named: prepare data, build the optimizer,
resume, train steps, evaluate, checkpoint, finish. Under ``accelerate launch`` (several processes)
``train`` runs distributed.py's ``DistributedTrainer``, which replaces the hooks at the end of the class.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..data.batching import collate, encode, epoch_batches
from ..data.task import TaskData
from ..errors import CheckFailed
from ..machine import resolve_bf16
from ..models.inputs import model_inputs
from . import faults
from .checkpoint import RESUME_KEYS, atomic_save, load_checkpoint, rng_state, seed_everything, set_rng_state
from .evaluate import evaluate
from .optim import adamw
from .options import TrainOptions


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
    batching: dict = field(default_factory=dict)  # processes, global and per-process batch size


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return f


def diverged(what: str, step: int, ckpt_step, ckpt_path, opts: TrainOptions) -> str:
    kept = (
        f"the last good checkpoint ({ckpt_path}, step {ckpt_step}) is kept"
        if ckpt_step is not None
        else "no checkpoint had been written yet"
    )
    return (
        f"training diverged: {what} at step {step}; the weights were not updated with it, and {kept}. Running the "
        f"same command again would diverge again at the same step: lower the learning rate (now {opts.lr:g}, e.g. "
        f"finetune.lr={opts.lr / 3:.2g}) or turn off bf16. A changed setting starts the stage over."
    )


def count_params(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def _is_no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name


class Trainer:
    """The state of one training run; :meth:`run` goes through the named steps."""

    def __init__(
        self,
        model: nn.Module,
        task: TaskData,
        tokenizer,
        opts: TrainOptions,
        ckpt_dir: str | Path,
        max_length: int = 128,
        device: str = "cpu",
        phase_hook: Callable[[int, float], None] | None = None,
        optimizer_params: list[nn.Parameter] | None = None,
        log: Callable[[str], None] = print,
        progress: bool = True,
        loss_fn: Callable | None = None,
        evaluate_dev: bool = True,
    ):
        if opts.seed is None:
            raise ValueError("TrainOptions.seed must be resolved before training (use train_options(seed))")
        self.model, self.task, self.tok, self.opts = model, task, tokenizer, opts
        self.ckpt_dir = Path(ckpt_dir)
        self.last_path, self.best_path = self.ckpt_dir / "last.pt", self.ckpt_dir / "best.pt"
        self.max_length, self.device, self.phase_hook, self.log = max_length, device, phase_hook, log
        self.progress, self.loss_fn, self.evaluate_dev = progress, loss_fn, evaluate_dev
        self.optimizer_params = optimizer_params
        self.step, self.history, self.best, self.best_step, self.resumed = 0, [], None, None, None
        self.last_ckpt_step = None
        self.elapsed_before = 0.0  # training seconds (evaluation excluded) spent by earlier, interrupted processes
        self.train_clock = 0.0  # this process's training time, evaluation and checkpointing excluded
        self.loss_sum, self.loss_n = 0.0, 0
        self.fwd, self.is_main = model, True  # what a step calls; whether this process writes (distributed.py)

    # ------------------------------------------------------------------ steps
    def run(self) -> TrainResult:
        if self.is_main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(self.opts.seed)
        self.model.to(self.device)
        self._prepare_data()
        if self.phase_hook is not None:
            self.phase_hook(0, 0.0)
        self._build_optimizer()
        self._resume()
        self._wrap()
        self._train_steps()
        return self._finish()

    def _prepare_data(self) -> None:
        o = self.opts
        self.pad_id = self.tok.pad_token_id or 0
        self.names = model_inputs(self.model)
        self.train_enc = encode(self.tok, self.task.train, self.max_length)
        self.dev_enc = encode(self.tok, self.task.dev, self.max_length)
        self.labels = torch.tensor(self.task.train.labels, dtype=torch.float if self.task.is_regression else torch.long)
        self.n = len(self.train_enc)
        self.steps_per_epoch = math.ceil(self.n / o.batch_size)
        self.total_steps = o.max_steps or max(1, math.ceil(o.epochs * self.steps_per_epoch))

    def _build_optimizer(self) -> None:
        model, o = self.model, self.opts
        params = self.optimizer_params
        params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        ids = {id(p) for p in params}
        named = [(nm, p) for nm, p in model.named_parameters() if id(p) in ids]
        # in the model's order, whatever order the method listed them in: the gradient norm is a float sum over
        # them, so a list built from a set of names (hash-randomised per process) would change the result
        in_model = {id(p) for _, p in named}
        self.params = [p for _, p in named] + [p for p in params if id(p) not in in_model]
        decay = [p for nm, p in named if not _is_no_decay(nm, p)]
        no_decay = [p for nm, p in named if _is_no_decay(nm, p)]
        self.opt = adamw(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], o.lr
        )
        warmup = int(o.warmup_ratio * self.total_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, linear_schedule(self.total_steps, warmup))

    def _resume(self) -> None:
        if not self.last_path.is_file():
            return
        ck = load_checkpoint(self.last_path, self.log, RESUME_KEYS)
        if ck is None:
            return
        if ck.get("total_steps") != self.total_steps or ck.get("n_train") != self.n:
            self.log(f"checkpoint {self.last_path} is from a different schedule; starting over")
            return
        self.model.load_state_dict(ck["model"])
        # this machine's kernel, set before loading so that torch puts each `step` where that kernel needs it
        for saved, g in zip(ck["optimizer"]["param_groups"], self.opt.param_groups):
            saved["fused"] = g["fused"]
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step, self.history, self.best, self.best_step = ck["step"], ck["history"], ck["best"], ck["best_step"]
        self.loss_sum, self.loss_n = ck["loss_sum"], ck["loss_n"]
        self.elapsed_before = ck.get("train_elapsed_s", 0.0)
        self._restore_rng(ck)
        self.resumed = self.last_ckpt_step = self.step
        self.log(f"resuming from checkpoint at step {self.step}/{self.total_steps}")

    def _train_steps(self) -> None:
        kill_after = faults.kill_after_step()  # fault injection for the resume tests (faults.py)
        self.model.train()
        self.bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            disable=not self.progress,
            desc="train",
            dynamic_ncols=True,
            mininterval=2.0,
        )
        lengths = [len(e["input_ids"]) for e in self.train_enc]
        batches, batches_epoch = None, -1
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            if epoch != batches_epoch:
                batches = epoch_batches(lengths, self.opts.batch_size, self.opts.seed, epoch, self.opts.group_by_length)
                batches_epoch = epoch
            self._one_step(batches[self.step - epoch * self.steps_per_epoch])
            end_of_epoch = self.step % self.steps_per_epoch == 0 or self.step == self.total_steps
            if end_of_epoch or (self.opts.eval_every_steps and self.step % self.opts.eval_every_steps == 0):
                self._evaluate()
                if end_of_epoch:
                    self.loss_sum, self.loss_n = 0.0, 0
            if end_of_epoch or self.step % self.opts.checkpoint_every_steps == 0:
                self._save_checkpoint()
                if kill_after and self.step >= kill_after:
                    faults.kill()
        self.bar.close()

    def _one_step(self, idx: list[int]) -> None:
        """Forward, backward, finite checks, optimizer and scheduler step on the examples ``idx``."""
        if self.phase_hook is not None:
            self.phase_hook(self.step, self.step / self.steps_per_epoch)
        t_step = time.perf_counter()
        dev = self.device
        idx, weight = self._shard(idx)
        batch = collate([self.train_enc[i] for i in idx], self.pad_id, "token_type_ids" in self.names)
        batch = {k: v.to(dev) for k, v in batch.items() if k in self.names}
        with torch.autocast(
            device_type="cuda" if dev.startswith("cuda") else "cpu",
            dtype=torch.bfloat16,
            enabled=resolve_bf16(self.opts.bf16, dev),
        ):
            if self.loss_fn is not None:
                loss = self.loss_fn(self.fwd, batch, self.labels[idx].to(dev))
            else:
                loss = self.fwd(**batch, labels=self.labels[idx].to(dev)).loss
        value = self._batch_loss(loss, weight)
        if not torch.isfinite(value):
            self._diverged(f"the loss is {value.item()}")
        self._backward(loss, weight)
        grads = [p for p in self.params if p.grad is not None]
        if self.opts.max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(grads, self.opts.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
        if not torch.isfinite(norm):  # a finite loss can still have inf/NaN gradients: never step on them
            self._diverged(f"the gradient norm is {norm.item()}")
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        self.train_clock += time.perf_counter() - t_step
        self.loss_sum += value.item()
        self.loss_n += 1
        self.step += 1
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{self.loss_sum / self.loss_n:.4f}", refresh=False)

    def _diverged(self, what: str) -> None:
        self.bar.close()
        raise CheckFailed(diverged(what, self.step + 1, self.last_ckpt_step, self.last_path, self.opts))

    def _evaluate(self) -> None:
        rec = {
            "step": self.step,
            "epoch": round(self.step / self.steps_per_epoch, 4),
            "train_time_s": round(self.elapsed_before + self.train_clock, 3),
            "train_loss": (self.loss_sum / self.loss_n) if self.loss_n else None,
            "lr": self.sched.get_last_lr()[0],
        }
        if not self.evaluate_dev:
            self.history.append({**rec, "dev_main": None})
            self.log(f"step {self.step}/{self.total_steps} epoch {rec['epoch']:.2f} train_loss {rec['train_loss']:.4f}")
            return
        metrics = self._dev_metrics()
        rec.update({f"dev_{k}": v for k, v in metrics.items()})
        self.history.append(rec)
        if self.best is None or metrics["main"] > self.best:
            self.best, self.best_step = metrics["main"], self.step
            self._save(self.model.state_dict(), self.best_path)  # serialized as it stands: no copy, no memory spike
        loss = rec["train_loss"] if rec["train_loss"] is None else round(rec["train_loss"], 4)
        self.log(
            f"step {self.step}/{self.total_steps} epoch {rec['epoch']:.2f} train_loss {loss} "
            f"dev_{self.task.metric} {metrics['main']:.2f}"
        )

    def _save_checkpoint(self) -> None:
        self.last_ckpt_step = self.step
        self._save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "step": self.step,
                "history": self.history,
                "best": self.best,
                "best_step": self.best_step,
                "loss_sum": self.loss_sum,
                "loss_n": self.loss_n,
                "rng": rng_state(),
                "total_steps": self.total_steps,
                "n_train": self.n,
                "train_elapsed_s": self.elapsed_before + self.train_clock,
                **self._checkpoint_extra(),
            },
            self.last_path,
        )

    def _finish(self) -> TrainResult:
        train_time = self.elapsed_before + self.train_clock
        final = self.history[-1]["dev_main"] if self.history else None
        if self.opts.select == "best" and self.evaluate_dev and self.best_path.is_file():
            self.model.load_state_dict(torch.load(self.best_path, map_location=self.device, weights_only=True))
        total, _ = count_params(self.model)
        if self.is_main:
            (self.ckpt_dir / "history.json").write_text(json.dumps(self.history, indent=1))
        return TrainResult(
            self.best,
            self.best_step,
            final,
            self.step,
            round(self.step / self.steps_per_epoch, 4),
            self.history,
            round(train_time, 2),
            self.resumed,
            sum(p.numel() for p in self.params),
            total,
            self._batching(),
        )

    # ------------------------------------------------------------------ what several processes change
    # (distributed.py: DistributedTrainer). One process: train self.model on the whole batch, write every file.
    def _wrap(self) -> None:
        pass

    def _restore_rng(self, ck: dict) -> None:
        set_rng_state(ck["rng"])

    def _shard(self, idx: list[int]) -> tuple[list[int], float | None]:
        return idx, None  # this process's examples of the batch, and their loss weight

    def _batch_loss(self, loss: torch.Tensor, weight: float | None) -> torch.Tensor:
        return loss  # the whole batch's mean loss

    def _backward(self, loss: torch.Tensor, weight: float | None) -> None:
        loss.backward()

    def _dev_metrics(self) -> dict:
        return evaluate(self.model, self.task, self.dev_enc, self.pad_id, self.opts.eval_batch_size, self.device)

    def _save(self, obj, path: Path) -> None:
        atomic_save(obj, path)

    def _checkpoint_extra(self) -> dict:
        return {}

    def _batching(self) -> dict:
        return {
            "processes": 1,
            "global_batch_size": self.opts.batch_size,
            "per_process_batch_size": self.opts.batch_size,
        }


def train(model: nn.Module, task: TaskData, tokenizer, opts: TrainOptions, ckpt_dir: str | Path, **kw) -> TrainResult:
    """Train ``model`` on ``task.train``; the chosen weights (best or last) are loaded into ``model`` on return.

    Keyword options (see :class:`Trainer`): ``max_length``, ``device``, ``phase_hook``,
    ``optimizer_params`` (every parameter that trains at any point; default: those with
    ``requires_grad`` now; parameters frozen at a given step get no gradient, and AdamW
    leaves them untouched), ``log``, ``progress``, ``loss_fn(model, batch, labels) -> loss``
    (replaces the task loss: distillation) and ``evaluate_dev`` (False: no dev metric,
    the last weights are kept).
    """
    from .distributed import trainer_class  # Trainer, or DistributedTrainer under a launcher (it imports this module)

    return trainer_class()(model, task, tokenizer, opts, ckpt_dir, **kw).run()
