"""Compiling a user script: the one check the supervisor makes before a restart (a broken save
is reported at once) and the worker makes when it loads the script."""

from __future__ import annotations

import traceback
from pathlib import Path
from types import CodeType


class ScriptCompileError(Exception):
    """The script at ``path`` does not compile. ``line``: where (None when unknown);
    ``reason``: what Python says (e.g. ``'(' was never closed``); ``message``: the same with
    the error's type (``SyntaxError: '(' was never closed``); ``source_line``: the offending
    line, stripped (may be empty); ``detail``: the line and caret as Python prints them.
    ``str()``: ``path:line: reason[: source line]``."""

    def __init__(
        self, path: Path, line: int | None, error: SyntaxError | ValueError, source_line: str
    ) -> None:
        reason = error.msg if isinstance(error, SyntaxError) else str(error)
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}" + (f": {source_line}" if source_line else ""))
        self.path = path
        self.line = line
        self.reason = reason
        self.message = f"{type(error).__name__}: {reason}"
        self.source_line = source_line
        self.detail = "".join(traceback.format_exception_only(type(error), error)).rstrip()


def compile_script(source: bytes, path: Path) -> CodeType:
    """``source`` (the bytes of the script at ``path``) compiled for ``exec``. Raises
    ScriptCompileError on a SyntaxError or a ValueError (e.g. NUL bytes in the file)."""
    try:
        return compile(source, str(path), "exec")
    except SyntaxError as error:
        raise ScriptCompileError(path, error.lineno, error, (error.text or "").strip()) from None
    except ValueError as error:
        raise ScriptCompileError(path, None, error, "") from None
