"""Data-parallel training over several processes (GPUs or CPU processes, one or more machines) with
Hugging Face ``accelerate``.

A run is started by ``accelerate launch ... -m compresstune.cli pipeline run FILE`` (or by
``pipeline run --num-processes N``, which relaunches itself that way: :func:`relaunch`). Without a
launcher (``WORLD_SIZE`` unset or 1) nothing here is used and accelerate is not even imported: the
single-process path is the plain :class:`~compresstune.train.loop.Trainer`.

With N processes, :class:`DistributedTrainer` trains one model in DDP (``Accelerator.prepare``):

* **batch size**: ``batch_size`` stays the *global* batch. Every step takes the same length-grouped
  batch as a single process would (the order is a pure function of seed, epoch and step), and rank r
  takes the examples ``batch[r::N]``. Each rank's mean loss is weighted by its share of the batch, so
  the averaged gradient is the gradient of the batch mean: the same steps, schedule and learning
  rate as one process, the math differing only in reduction order (and in dropout masks, drawn per
  rank);
* the dev set is split the same way and the logits gathered, so every rank sees the same metric and
  keeps the same "best" step;
* only the main process writes (checkpoints, best weights, history); a checkpoint holds every rank's
  RNG states, and all ranks pass a barrier once it is on disk, so a kill of the whole job resumes
  exactly (``rng_ranks``);
* the loss, NaN/inf checks and gradient norm are computed from all-reduced values, so every rank
  stops at the same step with the same error.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from ..data.metrics import compute_metrics
from ..errors import UserError
from .checkpoint import rng_state, seed_everything, set_rng_state
from .evaluate import logits_to_preds, predict
from .loop import Trainer

# launchers' world-size variables: torchrun / accelerate launch, then MPI flavours (as accelerate reads them)
_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
# a non-main process may wait this long at a barrier while the main one runs other stages
TIMEOUT_ENV = "COMPRESSTUNE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3 * 3600


def _env_int(names: tuple[str, ...], default: int) -> int:
    for k in names:
        if os.environ.get(k, "").strip():
            return int(os.environ[k])
    return default


def launched_world_size() -> int:
    """How many processes the launcher started (1 when run directly)."""
    return _env_int(_WORLD_ENV, 1)


def is_main_process() -> bool:
    """True in a single-process run and in the main process (rank 0) of a multi-process one."""
    return _STATE.is_main if _STATE is not None else _env_int(_RANK_ENV, 0) == 0


def _silent(_msg: str) -> None:
    pass


class Processes:
    """The processes of one run as the pipeline sees them; with one process every call is trivial."""

    def __init__(self, accelerator=None):
        self.acc = accelerator
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.is_main = self.rank == 0
        self.backend = accelerator.state.backend if accelerator is not None else None

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def broadcast(self, obj):
        """The main process's ``obj``, on every process."""
        if self.acc is None:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    def gather(self, obj) -> list:
        """Every process's ``obj`` in rank order, on every process."""
        if self.acc is None:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])


_STATE: Processes | None = None


def setup_processes(device: str = "cpu") -> Processes:
    """This process's :class:`Processes`, set up once (the first call's device decides the backend:
    gloo for a CPU device, NCCL for CUDA; ``device`` is the pipeline's ``device`` setting)."""
    global _STATE
    if _STATE is None:
        if launched_world_size() <= 1:
            _STATE = Processes()
        else:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

            timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
            # find_unused_parameters: a phase hook may freeze parameters mid-run (priming); their
            # gradients then stay None on every rank, as in one process
            handlers = [
                InitProcessGroupKwargs(timeout=timeout),
                DistributedDataParallelKwargs(find_unused_parameters=True),
            ]
            _STATE = Processes(Accelerator(cpu=uses_cpu(device), kwargs_handlers=handlers))
    return _STATE


def shutdown_processes() -> None:
    """End a multi-process run cleanly: every rank meets at a barrier, then the process group is destroyed
    (``Accelerator.end_training``). Not enough on its own for a clean exit: see :func:`exit_finished_rank`.
    Trivial in a single-process run."""
    global _STATE
    if _STATE is None or _STATE.acc is None:
        return
    _STATE.barrier()
    _STATE.acc.end_training()
    _STATE = None


def exit_finished_rank() -> NoReturn:
    """Leave a rank of a multi-process run whose work is done, without the interpreter's teardown.

    DDP's gradient hooks stay on the parameters of the models a run keeps (merged, exported), so gloo's
    process group can outlive :func:`shutdown_processes`; its threads, destroyed with the interpreter,
    aborted a rank that had finished in two CI runs of the suite ("terminate called without an active
    exception", SIGABRT, and the launcher fails the whole job). Every file is written and closed by now:
    flush what is printed and leave with status 0."""
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


def uses_cpu(device: str) -> bool:
    """Whether the pipeline's ``device`` setting (cpu, cuda, cuda:N, auto) trains on the CPU."""
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def single_process_note() -> str | None:
    """A warning when ``accelerate launch --cpu --num_processes N`` started only this one process
    (accelerate starts several CPU processes only through mpirun)."""
    if launched_world_size() > 1 or os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true":
        return None
    if not os.environ.get("MASTER_ADDR"):
        return None
    return (
        "note: `accelerate launch --cpu` started a single process (accelerate starts several CPU processes only "
        "through mpirun); use `pipeline run --num-processes N`, or `accelerate launch --multi_gpu --num_processes N` "
        "with the pipeline's device: cpu"
    )


class DistributedTrainer(Trainer):
    """A :class:`Trainer` that is one of several data-parallel processes (see the module docstring)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.procs = setup_processes(self.device)
        self.acc = self.procs.acc
        self.is_main = self.procs.is_main
        if not self.is_main:
            self.log, self.progress = _silent, False
        if self.device.startswith("cuda"):  # this rank's GPU (cuda:LOCAL_RANK), whatever index the setting named
            self.device = str(self.acc.device)

    # ---- setup: after the checkpoint is read, wrap the model in DDP
    def _wrap(self) -> None:
        if self.resumed is None:  # a fresh start: each rank draws its own dropout masks
            seed_everything(self.opts.seed + self.procs.rank)
        trains = [p.requires_grad for p in self.params]
        for p in self.params:  # DDP syncs only what requires grad when it wraps: every parameter that ever trains
            p.requires_grad_(True)
        self.fwd, self.opt = self.acc.prepare(self.model, self.opt)
        for p, t in zip(self.params, trains):
            p.requires_grad_(t)
        self.procs.barrier()  # every rank has read the checkpoint before the main one writes the next

    def _restore_rng(self, ck: dict) -> None:
        ranks, n, r = ck.get("rng_ranks"), self.procs.world_size, self.procs.rank
        if ranks is not None and len(ranks) == n:
            set_rng_state(ranks[r])
            return
        written_by = len(ranks) if ranks is not None else 1
        self.log(
            f"the checkpoint was written by {written_by} process(es), this run has {n}: the data order is the same, "
            "the dropout randomness differs from an unbroken run"
        )
        set_rng_state(ck["rng"])
        if r:
            seed_everything(self.opts.seed + 1_000_003 * r + self.step)

    # ---- one step: this rank's share of the global batch
    def _shard(self, idx: list[int]) -> tuple[list[int], float | None]:
        n, r = self.procs.world_size, self.procs.rank
        mine = idx[r::n]
        if not mine:  # a batch smaller than the world: this rank still runs (DDP needs every rank), weight 0
            return idx[:1], 0.0
        return mine, n * len(mine) / len(idx)

    def _batch_loss(self, loss: torch.Tensor, weight: float | None) -> torch.Tensor:
        """The global batch's mean loss (sum over ranks of share x mean), the same on every rank."""
        loss = loss.detach().float()
        part = loss * (weight / self.procs.world_size) if weight else torch.zeros_like(loss)
        return self.acc.reduce(part, reduction="sum")

    def _backward(self, loss: torch.Tensor, weight: float | None) -> None:
        # DDP averages over ranks: mean over r of (N n_r / n) grad L_r = grad of the global batch mean
        self.acc.backward(loss * weight)

    # ---- evaluation: each rank predicts its share of the dev set, everyone gets every logit
    def _dev_metrics(self) -> dict:
        n, r = self.procs.world_size, self.procs.rank
        mine = list(range(r, len(self.dev_enc), n))
        logits = predict(
            self.model, [self.dev_enc[i] for i in mine], self.pad_id, self.opts.eval_batch_size, self.device
        )
        parts = [(i, lg) for i, lg in self.procs.gather((mine, logits)) if len(i)]
        full = np.zeros((len(self.dev_enc), parts[0][1].shape[1]), dtype=parts[0][1].dtype)
        for i, lg in parts:
            full[np.array(i, dtype=int)] = lg
        return compute_metrics(self.task, logits_to_preds(self.task, full), self.task.dev.labels)

    # ---- writes: the main process only; a checkpoint carries every rank's RNG states
    def _save(self, obj, path) -> None:
        if self.is_main:
            super()._save(obj, path)

    def _checkpoint_extra(self) -> dict:
        return {"rng_ranks": self.procs.gather(rng_state()), "world_size": self.procs.world_size}

    def _save_checkpoint(self) -> None:
        super()._save_checkpoint()
        self.procs.barrier()  # on disk before any rank goes on (or is killed: a whole-job kill resumes from it)

    def _batching(self) -> dict:
        n, b = self.procs.world_size, self.opts.batch_size
        return {
            "processes": n,
            "backend": self.procs.backend,
            "global_batch_size": b,
            "per_process_batch_size": math.ceil(b / n),
            "split": "each step's batch is split across the processes (rank r takes batch[r::N])",
        }

    def _finish(self):
        res = super()._finish()
        self.fwd = self.model
        self.acc.free_memory()  # drop accelerate's references to this run's DDP wrapper and optimizer
        return res


def trainer_class() -> type[Trainer]:
    """The trainer for this process: :class:`Trainer`, or :class:`DistributedTrainer` under a launcher."""
    return DistributedTrainer if launched_world_size() > 1 else Trainer


# ------------------------------------------------------------------ launching
def launch_command(num_processes: int, cli_args: list[str]) -> list[str]:
    """``accelerate launch`` of ``compresstune.cli CLI_ARGS`` with ``num_processes`` processes on this machine.

    accelerate's ``--multi_gpu`` launcher (torchrun) starts the processes on CPU too (its ``--cpu``
    launcher starts one process unless mpirun is used); each process then takes gloo when the
    pipeline trains on the CPU and NCCL on GPUs (:func:`setup_processes`)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        "0",  # a free port: two runs on one machine do not collide
        "--mixed_precision",
        "no",  # bf16 autocast is the pipeline's own setting
        "--dynamo_backend",
        "no",
        "-m",
        "compresstune.cli",
        *cli_args,
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the launcher gets SIGTERM when this process dies (even by SIGKILL), and stops its workers."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def relaunch(num_processes: int, cpu: bool, cli_args: list[str]) -> int:
    """Run ``compresstune CLI_ARGS`` as ``num_processes`` processes under accelerate; returns its exit code."""
    if not cpu and torch.cuda.device_count() < num_processes:
        raise UserError(
            f"--num-processes {num_processes}: this machine has {torch.cuda.device_count()} GPU(s) and the pipeline "
            "trains on cuda; use at most that many processes, or device: cpu (gloo)."
        )
    env = dict(os.environ)
    if cpu:  # share the cores: torchrun would give each process one thread
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    linux = sys.platform.startswith("linux")
    with tempfile.TemporaryDirectory(prefix="ct_exit_") as td:
        record = Path(td) / "exit_code"
        env["COMPRESSTUNE_EXIT_FILE"] = str(record)
        proc = subprocess.Popen(
            launch_command(num_processes, cli_args),
            env=env,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=_die_with_parent if linux else None,
        )
        _relay_stderr(proc, record)
        rc = proc.wait()
        return int(record.read_text()) if record.is_file() and record.read_text().strip().isdigit() else rc


def _relay_stderr(proc, record: Path) -> None:
    """The processes' stderr as it comes, less the launcher's own failure report (a traceback and its log lines)
    once a process has ended with compresstune's message: a failing run reads the same with one process or N."""
    hiding = False
    for line in proc.stderr:
        if not hiding and record.is_file() and (line.startswith("Traceback") or "torch.distributed" in line):
            hiding = True
        if not hiding:
            sys.stderr.write(line)
            sys.stderr.flush()
