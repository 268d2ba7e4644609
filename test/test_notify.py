"""sd_notify messages, captured on a real local datagram socket."""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from livereduce.supervisor import notify


@pytest.fixture
def receiver(tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield str(path), sock
    sock.close()


def test_no_socket_is_a_no_op():
    assert notify.notify("READY=1", env={}) is False
    assert notify.ready(env={"NOTIFY_SOCKET": ""}) is False


def test_messages_reach_the_socket(receiver):
    path, sock = receiver
    env = {"NOTIFY_SOCKET": path}
    assert notify.ready("waiting for run", env=env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=waiting for run"
    assert notify.status("run 5:\n 3 chunks", env=env)
    assert sock.recv(4096) == b"STATUS=run 5: 3 chunks"  # a newline would start a new key
    assert notify.watchdog(env=env)
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notify.stopping("bye", env=env)
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_reloading_carries_monotonic_usec(receiver):
    path, sock = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading(env={"NOTIFY_SOCKET": path})
    lines = sock.recv(4096).decode().split("\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_abstract_namespace():
    name = f"livereduce-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        assert notify.watchdog(env={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"WATCHDOG=1"


def test_failure_is_logged_at_debug_and_not_raised(tmp_path, caplog):
    caplog.set_level("DEBUG", logger="livereduce.supervisor.notify")
    missing = str(tmp_path / "nobody-listens.sock")
    assert notify.ready(env={"NOTIFY_SOCKET": missing}) is False
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    assert missing in caplog.records[0].getMessage()


def test_watchdog_interval_is_half_of_watchdog_usec():
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert notify.watchdog_interval_s({}) is None
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_interval_s({"WATCHDOG_USEC": "x"}) is None
    own = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert notify.watchdog_interval_s(own) == 1.0
    other = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert notify.watchdog_interval_s(other) is None


def test_a_full_receiver_queue_does_not_block(receiver, monkeypatch):
    monkeypatch.setattr(notify, "SEND_TIMEOUT_S", 0.05)
    path, _ = receiver  # never read, so its queue fills up (net.unix.max_dgram_qlen)
    env = {"NOTIFY_SOCKET": path}
    sent = 0
    while notify.status(f"n {sent}", env=env):
        sent += 1
        assert sent < 100_000, "the queue never filled"
    assert sent >= 1
    started = time.monotonic()
    assert notify.status("one more", env=env) is False
    assert time.monotonic() - started < 20 * notify.SEND_TIMEOUT_S
