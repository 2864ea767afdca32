"""Every check that can be made before any work: `pipeline validate` runs them, and so does
`pipeline run` before its first stage, so a mistake never surfaces after hours of training.

Beyond the config itself (loader.py, rules.py) this reads the task data (every row: labels outside
the label set, missing columns, ragged lines, bytes that are not UTF-8, empty files), the unlabelled
text files a compress stage reads, the model's config, weights and tokenizer and the widths each
stage sees (model_checks.py), the machine (a CUDA GPU and ONNX Runtime's CUDA provider when cuda is
asked for) and the run folder (writable, its run record readable). Every problem is collected and
reported at once, each naming the file, key or line and the fix; nothing is written."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..data.files import read_utf8
from ..data.load import load_task
from ..data.task import TaskData
from ..errors import ConfigError, UserError
from ..manifest import Manifest
from ..names import name_problem
from .checks import check_task_files
from .loader import Problems, load_config
from .model_checks import check_lengths, check_model, check_stage_shapes, check_unknown_tokens
from .rules import Add, f3_message, model_input
from .sections import PipelineConfig


class PreflightError(ConfigError):
    """Problems found before any work started (config, data, model, machine, run folder)."""

    def __init__(self, source: str, problems: list[str]):
        super().__init__(source, problems)
        n = len(self.problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        self.args = (
            f"{source}: {n} problem{'s' if n != 1 else ''} found before any work started; nothing was run.\n{lines}",
        )


@dataclass
class Checked:
    """What the checks read, handed to the run so nothing is read twice."""

    run_dir: Path | None = None
    task: TaskData | None = None


def run_dir_of(cfg: PipelineConfig, run_name: str | None = None, output_dir: str | None = None) -> Path | None:
    """The run folder `pipeline run` would use (None while the config has no valid name)."""
    name = run_name or cfg.name
    return Path(output_dir or cfg.output_dir) / name if name else None


def check_pipeline(
    file, overrides=(), run_name: str | None = None, output_dir: str | None = None
) -> tuple[PipelineConfig, Checked]:
    """Load ``file`` with ``overrides`` and run every check; raise one :class:`PreflightError` listing
    every problem of the config, the data, the model, the machine and the run folder."""
    if run_name is not None and (problem := name_problem(run_name, "--run-name")):
        raise PreflightError(str(file), [problem])
    checked = Checked()

    def deep(draft: PipelineConfig, problems: Problems, complete: bool) -> None:
        checked.run_dir = run_dir_of(draft, run_name, output_dir)
        checked.task = run_checks(draft, problems.add, complete, checked.run_dir)

    try:
        cfg = load_config(file, list(overrides), deep=deep)
    except ConfigError as exc:
        raise PreflightError(exc.source, exc.problems) from None
    return cfg, checked


def preflight(cfg: PipelineConfig, run_dir: Path | None) -> Checked:
    """The checks of :func:`check_pipeline` for a config already loaded (the Python API's run)."""
    problems = Problems(cfg.lines)
    task = run_checks(cfg, problems.add, True, run_dir)
    if problems.items:
        raise PreflightError(cfg.source, problems.items)
    return Checked(run_dir, task)


def run_checks(cfg: PipelineConfig, add: Add, complete: bool, run_dir: Path | None) -> TaskData | None:
    """Every data, model, machine and run-folder check of ``cfg`` (a draft whose parts may be missing
    where the config had problems; ``complete``: every stage section is valid); returns the task data."""
    shape, tok = check_model(cfg, add)
    task = _check_task_data(cfg, add)
    if shape is not None:
        check_lengths(cfg, shape, add)
    check_unknown_tokens(task, tok, add)
    _check_machine(cfg, add)
    if complete:  # what a stage gets from the stages before it
        _check_text_files(cfg, add)
        if shape is not None:
            check_stage_shapes(cfg, shape, add)
    if run_dir is not None:
        _check_run_folder(run_dir, add, reports=any(c.type == "report" for c in cfg.stages.values()))
    return task


def _check_task_data(cfg: PipelineConfig, add: Add) -> TaskData | None:
    """Read the task data as the stages will (every row is checked); None when it cannot be read."""
    t = cfg.task
    if t is None or check_task_files(t, cfg.base_dir, lambda path: ""):
        return None  # the loader reported the task settings or the missing files
    try:
        data = load_task(t, cfg.seed)
    except UserError as exc:
        add((), str(exc))  # names the data file and its lines
        return None
    if t.name == "custom" and not data.is_regression:
        if data.num_labels < 2:
            add(
                ("task", "label_column"),
                f"task.label_column: {t.train_file} has only one label value {data.label_names}; a classifier "
                "needs at least two (or set task.problem: regression for numeric targets).",
            )
        elif t.metric == "f1" and data.num_labels > 2:
            add(("task", "metric"), f3_message(data.num_labels))
    return data


def _text_file_used(cfg: PipelineConfig, name: str) -> bool:
    """Whether a compress stage reads its ``text_file`` (unlabelled text): task-agnostic distillation or
    healing, or Taylor scores on text."""
    c = cfg.stages[name]
    trained_teacher = model_input(cfg, name) is not None
    agnostic = c.distill_mode == "task_agnostic" if c.method == "distill" else not trained_teacher
    distils = c.method == "distill" or c.heal_epochs > 0
    taylor_text = c.method == "prune" and c.importance == "taylor" and c.calibration == "text"
    return (distils and agnostic) or taylor_text


def _check_text_files(cfg: PipelineConfig, add: Add) -> None:
    for name, c in cfg.stages.items():
        if c.type != "compress" or not c.text_file or not _text_file_used(cfg, name):
            continue
        p = Path(c.text_file).expanduser()
        p = p if p.is_absolute() else cfg.base_dir / p
        key = (name, "text_file")
        if not p.is_file():
            add(
                key,
                f"{name}.text_file: {p} does not exist; give a UTF-8 text file with one example a line "
                "(relative paths are resolved against the pipeline file's folder), or leave text_file out to use "
                "the task's training sentences.",
            )
            continue
        try:
            text = read_utf8(p, f"{name}.text_file")
        except UserError as exc:
            add(key, str(exc))
            continue
        if not text.strip():
            add(key, f"{name}.text_file: {p} has no text; put one example a line in it, or leave text_file out.")


def _check_machine(cfg: PipelineConfig, add: Add) -> None:
    """cuda asked for (device: cuda, benchmark providers) on a machine that cannot give it."""
    import torch

    gpu = torch.cuda.is_available()
    if str(cfg.device).startswith("cuda") and not gpu:
        add(
            ("device",),
            "device: cuda, but no CUDA GPU is visible to this process (torch.cuda.is_available() is "
            "False); use device: auto (the GPU when there is one) or device: cpu.",
        )
    _check_bf16(cfg, add, "cuda" if str(cfg.device).startswith("cuda") or (cfg.device == "auto" and gpu) else "cpu")
    for name, c in cfg.stages.items():
        if c.type != "benchmark" or c.providers == "auto" or "cuda" not in c.providers:
            continue
        if not gpu:
            add(
                (name, "providers"),
                f"{name}.providers: cuda was asked for but no CUDA GPU is visible to this "
                "process; use providers: auto (cuda only when present) or [cpu].",
            )
            continue
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            add(
                (name, "providers"),
                f"{name}.providers: cuda was asked for but this onnxruntime has no "
                f"CUDAExecutionProvider (it has {', '.join(ort.get_available_providers())}); install the gpu extra "
                "(onnxruntime-gpu), or use providers: [cpu].",
            )


def _check_bf16(cfg: PipelineConfig, add: Add, device: str) -> None:
    """``bf16: true`` where the device has no native bf16: a run slower than in fp32 (2.2x on AVX-512, 20-30x on
    AVX2)."""
    from ..machine import ONEDNN_CAP_VARIABLES, bf16_cost, cpu_profile, describe, native_bf16

    for name, c in cfg.stages.items():
        if getattr(c, "bf16", None) is not True or native_bf16(device):
            continue
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                continue  # no GPU at all: the device check says so, not a bf16 one
            where = f"this GPU ({torch.cuda.get_device_name(0)}) has no native bf16 (compute capability 8.0+)"
            cost = "bf16 there is emulated and runs slower than fp32"
        else:
            p = cpu_profile()
            where = f"this CPU ({describe(p)}) has no native bf16"
            cost = bf16_cost(p)
            if p.get("torch_isa_capped_by"):
                (var, value), *_ = p["torch_isa_capped_by"].items()
                unset = " and ".join(v for v in ONEDNN_CAP_VARIABLES if os.environ.get(v))
                where = (
                    f"PyTorch is capped to {p['torch_isa']} by {var}={value}, so on this CPU ({describe(p)}) it "
                    f"runs no native bf16 (unset {unset} for the CPU's own bf16)"
                )
        add(
            (name, "bf16"),
            f"{name}.bf16: true, but {where}; {cost}. Use {name}.bf16=auto (bf16 where the device runs it "
            f"natively, fp32 here) or {name}.bf16=false.",
        )


SUPERSEDED = "superseded"  # where the report sets an earlier run's published results aside


def superseded_problem(run_dir: Path) -> str | None:
    """What is wrong with ``RUN/superseded`` (a link or a file where the report needs a real folder), or None."""
    aside = run_dir / SUPERSEDED
    if aside.is_symlink() or (aside.exists() and not aside.is_dir()):
        return f"{aside} is {'a symbolic link' if aside.is_symlink() else 'not a folder'}"
    return None


def _check_run_folder(run_dir: Path, add: Add, reports: bool = True) -> None:
    """The run folder can be created and written, and its run record (if any) can be read."""
    key = ("output_dir",)
    fix = "choose another place with --output-dir DIR (or output_dir: in the pipeline file) or --run-name NAME"
    if run_dir.is_symlink():
        add(
            key,
            f"output folder: the run folder {run_dir} is a symbolic link (to {os.readlink(run_dir)}); a run writes "
            f"and deletes inside its folder, so it must be a real folder. Remove the link, or {fix}.",
        )
        return
    links = [p.name for p in run_dir.glob("[0-9][0-9]_*") if p.is_symlink() and not p.name.endswith(".old")]
    links = links if run_dir.is_dir() else []  # a link left as a set-aside ".old" folder is removed by the run
    aside = superseded_problem(run_dir) if reports and run_dir.is_dir() else None
    if aside:
        add(
            key,
            f"output folder: {aside}; the report moves an earlier run's published results there, so it must be a "
            "real folder inside the run folder. Move it away (a link's target is not touched).",
        )
    if links:
        add(
            key,
            f"output folder: {', '.join(sorted(links))} in {run_dir} are symbolic links; stage folders are "
            "replaced and deleted by the run, so they must be real folders. Remove the links (their targets are "
            "not touched).",
        )
    if run_dir.exists() and not run_dir.is_dir():
        add(key, f"output folder: {run_dir} exists but is a file, not a run folder; {fix}.")
        return
    probe = run_dir.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        add(key, f"output folder: {probe} is a file, so the run folder {run_dir} cannot be created under it; {fix}.")
        return
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".compresstune-write-check-"):
            pass
    except OSError as exc:
        add(
            key,
            f"output folder: cannot write in {probe} ({exc.strerror or exc}), so the run folder {run_dir} "
            f"cannot be {'written' if probe == run_dir.absolute() else 'created'}; {fix}, or fix its permissions.",
        )
        return
    if (run_dir / Manifest.FILE).is_file():
        try:
            Manifest.load(run_dir)
        except UserError as exc:
            add((), str(exc))
