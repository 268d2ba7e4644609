"""The one compile check of user scripts, as the supervisor and the worker report it."""

from __future__ import annotations

from pathlib import Path

import pytest

from livereduce.scriptfile import ScriptCompileError, compile_script
from livereduce.supervisor.daemon import syntax_errors


def test_a_syntax_error_names_file_line_and_source(tmp_path):
    path = tmp_path / "reduce_X_live_proc.py"
    path.write_text("x = 1\ny = (2,\n")
    with pytest.raises(ScriptCompileError) as caught:
        compile_script(path.read_bytes(), path)
    error = caught.value
    assert (error.line, error.reason) == (2, "'(' was never closed")
    assert error.message == "SyntaxError: '(' was never closed"
    assert str(error) == f"{path}:2: '(' was never closed: y = (2,"
    assert syntax_errors([path]) == [str(error)]


def test_nul_bytes_are_a_compile_error_without_a_line(tmp_path):
    path = tmp_path / "s.py"
    path.write_bytes(b"x = 1\0\n")
    with pytest.raises(ScriptCompileError) as caught:
        compile_script(path.read_bytes(), path)
    assert caught.value.line is None
    assert str(caught.value).startswith(f"{path}: source code")
    assert syntax_errors([path, Path(tmp_path / "missing.py")]) == [str(caught.value)]


def test_a_good_script_compiles(tmp_path):
    code = compile_script(b"output = input\n", tmp_path / "s.py")
    assert code.co_filename == str(tmp_path / "s.py")
