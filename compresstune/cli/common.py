"""What every command group shares: compresstune's own errors end a command with a message and
an exit code, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import CompresstuneError, from_os_error

EXIT_FILE_ENV = "COMPRESSTUNE_EXIT_FILE"  # set by `--num-processes` for the processes it starts


def _fail(exc: CompresstuneError):
    record = os.environ.get(EXIT_FILE_ENV)
    first = True
    if record:  # one of several processes: the first to fail speaks, and its exit code is the run's
        try:
            with open(record, "x", encoding="utf-8") as f:
                f.write(str(exc.exit_code))
        except FileExistsError:
            first = False
        except OSError:
            pass
    if first:
        click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


class Group(click.Group):
    """Turns compresstune's own errors into a message and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompresstuneError as exc:
            _fail(exc)
        except OSError as exc:  # a path the user gave that cannot be read or written
            _fail(from_os_error(exc))


def bundle_run_options(fn):
    """``--provider`` and ``--threads`` of the commands that run a deploy bundle (predict, verify)."""
    fn = click.option(
        "--threads",
        type=click.IntRange(1, 1024),
        default=None,
        help="ONNX Runtime intra-op threads (default: its own choice).",
    )(fn)
    return click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)(fn)


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    return p


def out_file(ctx, param, value):
    """``--out FILE`` checked before any work (a measurement must not be lost to a path that cannot be written
    at its end): its folder exists and can be written, the path is no folder and no dangling link, and the file
    written beside it (``.md`` or ``.json``) is no folder either. ``~`` is the home folder, as in a shell."""
    if value is None:
        return None
    if not str(value).strip():
        raise click.BadParameter("an empty path; give a file path.", ctx=ctx, param=param)
    p = Path(os.path.expanduser(value))
    folder = p.parent if str(p.parent) else Path(".")
    problem = None
    if p.is_dir() or str(value).endswith(("/", os.sep)):
        problem = "is a folder; give a file path"
    elif p.is_symlink() and not p.exists():
        problem = f"is a symbolic link to {os.readlink(p)}, which does not exist; give another path"
    elif folder.exists() and not folder.is_dir():
        problem = f"cannot be written: {folder} is a file, not a folder"
    elif not folder.is_dir():
        problem = f"cannot be written: its folder {folder} does not exist (create it first, or give another path)"
    elif not os.access(folder, os.W_OK):
        problem = f"cannot be written: its folder {folder} is not writable by this user"
    elif any(
        p.with_suffix(x) != p and (p.with_suffix(x).is_dir() or p.with_suffix(x).is_symlink()) for x in (".md", ".json")
    ):
        problem = "cannot be written with its .md/.json companion beside it: a folder or a link has that name"
    if problem:
        raise click.BadParameter(f"{value} {problem}.", ctx=ctx, param=param)
    return str(p)


def out_dir(ctx, param, value):
    """``--out DIR`` checked before any work: not a file, and it or the nearest folder above it that exists (the
    rest is created) can be written. ``~`` is the home folder, as in a shell."""
    if value is None:
        return None
    if not str(value).strip():
        raise click.BadParameter("an empty path; give a folder path.", ctx=ctx, param=param)
    p = Path(os.path.expanduser(value))
    if p.is_symlink() and not p.exists():
        raise click.BadParameter(
            f"{value} is a symbolic link to {os.readlink(p)}, which does not exist.", ctx=ctx, param=param
        )
    if p.exists() and not p.is_dir():
        raise click.BadParameter(f"{value} is a file, not a folder; give a folder path.", ctx=ctx, param=param)
    base = _existing_ancestor(p)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise click.BadParameter(
            f"{value} cannot be created or written: {base} is not a writable folder; give another path.",
            ctx=ctx,
            param=param,
        )
    return str(p)
