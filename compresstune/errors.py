"""Error types. A :class:`UserError` is a mistake in the user's input (config, data,
model path, flags): the CLI prints its message as one paragraph, with no traceback,
and exits with code 2. Anything else is a bug or a failed run-time check."""

from __future__ import annotations


class CompresstuneError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UserError(CompresstuneError):
    """Bad input: the message names the file/key/line and the fix."""

    exit_code = 2


class ConfigError(UserError):
    """One or more problems in a pipeline config, all reported together."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(
            f"{source}: {n} problem{'s' if n != 1 else ''} in the pipeline config; nothing was run.\n{lines}"
        )


def from_os_error(exc: OSError) -> UserError:
    """A file the user pointed at that cannot be read or written (permissions, a folder where a file belongs,
    a full disk): one message naming it, not a traceback."""
    where = exc.filename if exc.filename is not None else "a file"
    return UserError(
        f"{where}: {exc.strerror or exc} ({exc.__class__.__name__}). Check that it exists, is a file or folder as "
        "expected, and that this user may read (and write) it."
    )


class CheckFailed(CompresstuneError):
    """A run-time numerical check failed (NaN loss, ONNX mismatch, merge mismatch).

    Outputs of earlier stages and the last good checkpoint are kept."""

    exit_code = 3
