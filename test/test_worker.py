"""The worker program as a real process: reports, SIGTERM, exit statuses, a vanished supervisor."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livereduce.config import ConfigError
from livereduce.protocol import Progress, ReportReader, Resume, WorkerExit, WorkerState
from livereduce.supervisor.worker_process import describe_exit
from livereduce.worker.main import read_config


class Worker:
    """``python -m livereduce.worker`` with a report pipe; always killed in teardown."""

    def __init__(self, tmp_path: Path, raw: dict | str) -> None:
        self.read_fd, write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.reader = ReportReader()
        self.reports: list[Progress] = []
        self.stderr_path = tmp_path / "worker.log"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "livereduce.worker", "--report-fd", str(write_fd)],
                stdin=subprocess.PIPE,
                stderr=stderr,
                pass_fds=(write_fd,),
            )
        os.close(write_fd)
        message = (
            raw
            if isinstance(raw, str)
            else json.dumps({"path": str(tmp_path / "livereduce.conf"), "raw": raw})
        )
        self.process.stdin.write(message.encode())
        self.process.stdin.close()

    def poll_reports(self) -> None:
        try:
            while data := os.read(self.read_fd, 65536):
                self.reports.extend(self.reader.feed(data))
        except BlockingIOError:
            pass

    def wait_for(self, predicate, timeout_s: float = 20.0) -> Progress:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll_reports()
            for report in self.reports:
                if predicate(report):
                    return report
            if self.process.poll() is not None:
                self.poll_reports()
                break
            time.sleep(0.05)
        raise AssertionError(f"no matching report; last: {self.reports[-1:]}; log:\n{self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        os.close(self.read_fd)


@pytest.fixture
def start_worker(tmp_path):
    workers: list[Worker] = []

    def start(raw: dict | str) -> Worker:
        worker = Worker(tmp_path, raw)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()


def fake_config(tmp_path: Path, **extra) -> dict:
    (tmp_path / "reduce_FAKE_live_proc.py").write_text(
        "workspaces['n'] = workspaces.get('n', 0) + 1\n"
        "if workspaces['n'] == 2:\n"
        "    raise RuntimeError('second chunk is bad')\n"
        "import scipp as sc\n"
        "edges = sc.linspace('event_time_offset', 0.0, 17000.0, 11, unit='us')\n"
        "output = input.bins.concat().hist(event_time_offset=edges)\n"
    )
    return {
        "instrument": "FAKE",
        "listener": "fake",
        "engine": "embedded",
        "script_dir": ".",
        "output_dir": "out",
        "update_every": 0.2,
        "preserve_events": False,
        "listener_options": {"event_rate": 100_000, "pixel_count": 64},
        **extra,
    }


def test_runs_reports_and_stops_on_sigterm(tmp_path, start_worker):
    worker = start_worker(fake_config(tmp_path))
    report = worker.wait_for(lambda r: r.chunks >= 3)
    assert report.state is WorkerState.RUNNING
    assert report.run_number == 1
    assert report.errors == 1
    assert "reduce_FAKE_live_proc.py:3: RuntimeError: second chunk is bad" in report.last_error
    assert report.pid == worker.process.pid
    worker.process.send_signal(signal.SIGHUP)  # the supervisor's signal: ignored here
    chunks = report.chunks
    worker.wait_for(lambda r: r.chunks >= chunks + 2)
    assert worker.process.poll() is None
    began = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(10) == WorkerExit.STOPPED
    assert time.monotonic() - began < 5
    assert (tmp_path / "out" / "result.h5").is_file()
    log = worker.log()
    assert "engine_chosen: embedded" in log
    assert "chunk_lost" in log
    assert 'reduce_FAKE_live_proc.py", line 3' in log


def test_stop_transition_exits_after_the_run(tmp_path, start_worker):
    raw = fake_config(tmp_path, run_transition="Stop")
    raw["listener_options"]["run_length_sec"] = 0.5
    worker = start_worker(raw)
    assert worker.process.wait(20) == WorkerExit.STOPPED
    worker.poll_reports()
    assert worker.reports[-1].state is WorkerState.RUN_ENDED


def test_supervisor_gone_means_stop(tmp_path, start_worker):
    worker = start_worker(fake_config(tmp_path))
    worker.wait_for(lambda r: r.chunks >= 1)
    os.close(worker.read_fd)
    worker.read_fd = os.open(os.devnull, os.O_RDONLY)  # keep close() simple
    assert worker.process.wait(10) == WorkerExit.STOPPED


@pytest.mark.parametrize(
    ("raw", "status", "message"),
    [
        ("not json", WorkerExit.BOOT_FAILURE, "not a configuration message"),
        (
            {"instrument": "FAKE", "listener": "fake", "update_every": -1},
            WorkerExit.BOOT_FAILURE,
            "update_every",
        ),
        (
            {
                "instrument": "FAKE",
                "listener": "nexus",
                "address": "nowhere.nxs.h5",
                "engine": "embedded",
            },
            WorkerExit.BOOT_FAILURE,
            "nowhere.nxs.h5 does not exist",
        ),
        (
            {
                "instrument": "FAKE",
                "listener": "nexus",
                "address": "bad.nxs.h5",
                "engine": "embedded",
            },
            WorkerExit.ENGINE_FAILURE,
            "cannot read NeXus event file",
        ),
    ],
)
def test_exit_statuses(tmp_path, start_worker, raw, status, message):
    (tmp_path / "bad.nxs.h5").write_bytes(b"not HDF5")
    worker = start_worker(raw)
    assert worker.process.wait(20) == status
    assert message in worker.log()


def test_exit_descriptions_name_signals_and_statuses():
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"
    assert describe_exit(-(signal.SIGRTMIN + 1)) == f"signal {signal.SIGRTMIN + 1}"
    assert describe_exit(4) == "exit status 4 (ENGINE_FAILURE)"
    assert describe_exit(77) == "exit status 77"


def test_keyboard_interrupt_and_sys_exit_in_a_script_lose_one_chunk_each(tmp_path, start_worker):
    raw = fake_config(tmp_path)
    (tmp_path / "reduce_FAKE_live_proc.py").write_text(
        "import sys\n"
        "workspaces['n'] = workspaces.get('n', 0) + 1\n"
        "if workspaces['n'] == 2:\n"
        "    raise KeyboardInterrupt\n"
        "if workspaces['n'] == 3:\n"
        "    sys.exit(3)\n"
        "output = input\n"
    )
    worker = start_worker(raw)
    report = worker.wait_for(lambda r: r.chunks >= 3)
    assert worker.process.poll() is None
    assert report.errors == 2
    assert report.last_error.endswith("reduce_FAKE_live_proc.py:6: SystemExit: 3")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(10) == WorkerExit.STOPPED
    assert "reduce_FAKE_live_proc.py:4: KeyboardInterrupt" in worker.log()


def test_the_resume_in_the_configuration_message_is_read():
    raw = {"instrument": "FAKE", "listener": "fake", "engine": "embedded"}
    message = {"path": None, "raw": raw, "resume": {"run_number": 7, "start_ns": 5 * 10**9}}
    _config, resume = read_config(io.StringIO(json.dumps(message)))
    assert resume == Resume(run_number=7, start_ns=5 * 10**9)
    _config, resume = read_config(io.StringIO(json.dumps({"path": None, "raw": raw})))
    assert resume is None
    bad = {"path": None, "raw": raw, "resume": {"run_number": "x"}}
    with pytest.raises(ConfigError, match="resume is not a run and a start time"):
        read_config(io.StringIO(json.dumps(bad)))
