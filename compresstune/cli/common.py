"""What every command group shares: compresstune's own errors end a command with a message and
an exit code, never a traceback."""

from __future__ import annotations

import os
import sys

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
