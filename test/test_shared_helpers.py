"""The small helpers both processes share (host:port, the doubling backoff) and the listener
contract every listener meets."""

from __future__ import annotations

import pytest

from livereduce.address import parse_host_port
from livereduce.delays import doubling_delay_s
from livereduce.worker.listeners.adara import AdaraListener
from livereduce.worker.listeners.base import Listener
from livereduce.worker.listeners.fake import FakeListener
from livereduce.worker.listeners.kafka import KafkaListener
from livereduce.worker.listeners.nexus import NexusListener


@pytest.mark.parametrize(
    ("address", "parsed"),
    [("bl14b-daq1.sns.gov:31415", ("bl14b-daq1.sns.gov", 31415)), ("::1:80", ("::1", 80))],
)
def test_host_port(address, parsed):
    assert parse_host_port(address) == parsed


@pytest.mark.parametrize("address", ["host", ":31415", "host:", "host:0", "host:65536", "h:x1"])
def test_not_host_port(address):
    with pytest.raises(ValueError, match=f"expected 'host:port' .* got '{address}'"):
        parse_host_port(address)


def test_doubling_delay():
    assert [doubling_delay_s(step, 0.5, 3.0) for step in range(0, 6)] == [
        0.5, 0.5, 1.0, 2.0, 3.0, 3.0
    ]  # fmt: skip


def test_every_listener_meets_the_listener_protocol(tmp_path):
    for listener in (
        AdaraListener("127.0.0.1", 9),
        FakeListener(),
        NexusListener(tmp_path / "absent.nxs.h5"),
        KafkaListener("127.0.0.1:9", run_topic="runs"),
    ):
        assert isinstance(listener, Listener), type(listener).__name__
