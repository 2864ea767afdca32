"""What every command group shares: compresstune's own errors end a command with a message and
an exit code, never a traceback."""

from __future__ import annotations

import sys

import click

from ..errors import CompresstuneError


def _fail(exc: CompresstuneError):
    click.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


class Group(click.Group):
    """Turns compresstune's own errors into a message and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompresstuneError as exc:
            _fail(exc)
