"""The script runner: globals, outputs, failures as values naming the script file and line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import scipp as sc

from livereduce.worker.engine.scripts import RunContext, ScriptRunner

RUN = RunContext(number=7, title="t", instrument="TEST")


def runner(tmp_path: Path, source: str, workspaces: dict | None = None) -> ScriptRunner:
    path = tmp_path / "reduce_TEST_live_proc.py"
    path.write_text(source)
    return ScriptRunner(path, "processing", {} if workspaces is None else workspaces)


def test_output_and_globals(tmp_path):
    shared: dict = {}
    script = runner(
        tmp_path,
        "import scipp as sc\n"
        "workspaces['calls'] = workspaces.get('calls', 0) + 1\n"
        "logger.info('run %d', run.number)\n"
        "output = input * 2 + sc.scalar(float(len(monitors)))\n",
        shared,
    )
    for _ in range(2):
        result = script.run(sc.scalar(3.0), RUN, {"m": sc.scalar(1.0)})
    assert result.failure is None
    assert result.output.value == 7.0
    assert shared["calls"] == 2


def test_exception_gives_file_line_and_traceback(tmp_path):
    result = runner(
        tmp_path, "x = 1\n\ndef f():\n    raise KeyError('pixel')\n\nf()\noutput = input\n"
    ).run(sc.scalar(1.0), RUN, {})
    failure = result.failure
    assert result.output is None
    assert failure.line == 4
    assert failure.message == "KeyError: 'pixel'"
    assert failure.summary() == f"{tmp_path / 'reduce_TEST_live_proc.py'}:4: KeyError: 'pixel'"
    assert failure.traceback.startswith("Traceback (most recent call last):")
    assert "scripts.py" not in failure.traceback  # our own frames are left out
    assert 'reduce_TEST_live_proc.py", line 6, in <module>' in failure.traceback


def test_syntax_error_names_the_line(tmp_path):
    failure = runner(tmp_path, "output = input\nif x\n").run(sc.scalar(1.0), RUN, {}).failure
    assert failure.line == 2
    assert failure.message.startswith("SyntaxError")


@pytest.mark.parametrize(
    ("source", "got"),
    [
        ("output = 3\n", "got a value of type int"),
        ("pass\n", "got nothing (output was not assigned)"),
    ],
)
def test_output_must_be_a_scipp_object(tmp_path, source, got):
    failure = runner(tmp_path, source).run(sc.scalar(1.0), RUN, {}).failure
    assert (
        "must assign a scipp DataArray, Dataset, DataGroup or Variable to 'output'"
        in failure.message
    )
    assert got in failure.message


def test_system_exit_is_a_failure_not_an_exit(tmp_path):
    failure = runner(tmp_path, "import sys\nsys.exit(3)\n").run(sc.scalar(1.0), RUN, {}).failure
    assert failure.message == "SystemExit: 3"
    assert failure.line == 2


def test_the_script_is_read_once_when_the_runner_is_made(tmp_path):
    script = runner(tmp_path, "output = input + input\n")
    script.path.write_text("output = (input")  # a save in progress: the supervisor restarts us
    assert script.run(sc.scalar(1.0), RUN, {}).output.value == 2.0
    script.path.unlink()
    assert script.run(sc.scalar(1.0), RUN, {}).output.value == 2.0


def test_missing_script_is_a_failure(tmp_path):
    script = ScriptRunner(tmp_path / "reduce_TEST_live_proc.py", "processing", {})
    failure = script.run(sc.scalar(1.0), RUN, {}).failure
    assert "cannot read the processing script" in failure.message


def test_logger_is_named_after_the_script(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        runner(tmp_path, "logger.info('hello from the script')\noutput = input\n").run(
            sc.scalar(1.0), RUN, {}
        )
    assert [r.name for r in caplog.records if r.message == "hello from the script"] == [
        "livereduce.script.reduce_TEST_live_proc"
    ]
