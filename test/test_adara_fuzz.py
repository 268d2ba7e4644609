"""Fuzzing the stream parser: mutated and truncated ADARA streams raise only the parser's own
errors (AdaraProtocolError subclasses), never another exception, never hang, and never buffer
more than the bytes they were given.

Hypothesis draws seeds; each seed drives a fast loop of random mutations (byte flips,
interesting words over length and count fields, truncation, insertion, deletion, duplication)
and random splits, so the tests below parse well over 100,000 streams in a few seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livereduce.adara import packets as pk
from livereduce.adara.errors import AdaraProtocolError
from livereduce.adara.parser import StreamParser
from test_adara_packets import SAMPLES, T_NS


def _realistic_packets() -> list[bytes]:
    rng = np.random.default_rng(7)
    banks = tuple(
        pk.BankSection.from_arrays(b, rng.integers(0, 166_666, 12), rng.integers(0, 2**16, 12))
        for b in (1, 2, pk.UNMAPPED_BANK_ID)
    )
    banked = pk.BankedEvent(
        timestamp_ns=T_NS,
        pulse_charge_10pc=100,
        sources=(pk.SourceSection(source_id=1, banks=banks), pk.SourceSection(source_id=2)),
    )
    monitor = pk.BeamMonitorEvent(
        timestamp_ns=T_NS, monitors=(pk.MonitorSection.from_arrays(1, [1, 2, 3]),)
    )
    return [pk.encode(banked), pk.encode(monitor)]


CORPUS = [pk.encode(p) for p in SAMPLES] + _realistic_packets()
INTERESTING_WORDS = [
    0,
    1,
    3,
    4,
    7,
    8,
    16,
    0xFF,
    0xFFFF,
    0x3FFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFC,
    0xFFFFFFFF,
    32 * 1024 * 1024,
    32 * 1024 * 1024 + 4,
    0x400001,
    0x400101,
    0x800300,
]
INTERESTING = [w.to_bytes(4, "little") for w in INTERESTING_WORDS]


def _mutate(rng: random.Random, data: bytearray) -> None:
    """Apply one random mutation in place."""
    op = rng.randrange(7)
    n = len(data)
    if op == 0 and n:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(n)] = rng.randrange(256)
    elif op in (1, 2) and n >= 4:  # aligned word: hits length, count and type fields
        at = rng.randrange(n // 4) * 4
        data[at : at + 4] = rng.choice(INTERESTING)
    elif op == 3:
        del data[rng.randint(0, n) :]
    elif op == 4:
        at = rng.randint(0, n)
        data[at:at] = rng.randbytes(rng.randint(1, 24))
    elif op == 5 and n:
        at = rng.randrange(n)
        del data[at : at + rng.randint(1, 32)]
    elif n:
        at = rng.randrange(n)
        piece = data[at : at + rng.randint(1, 64)]
        where = rng.randint(0, n)
        data[where:where] = piece


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    if rng.random() < 0.5 or len(data) < 2:
        return [data]
    cuts = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 4)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def parse_hostile(data: bytes, pieces: list[bytes]) -> int:
    """Parse ``pieces`` (which join to ``data``) the way a client does: on a protocol error go
    on while the framing is intact, stop when the parser is broken. Returns packets decoded.
    Any exception other than AdaraProtocolError propagates and fails the test."""
    parser = StreamParser()
    decoded = 0
    for piece in pieces:
        packets = parser.feed(piece)
        # each packet can raise at most once, so this loop is bounded by the packet count
        for _ in range(len(data) // 16 + 2):
            try:
                decoded += sum(1 for _ in packets)
                break
            except AdaraProtocolError:
                try:
                    packets = parser.feed(b"")
                except AdaraProtocolError:
                    return decoded
        assert parser.buffered <= len(data)
    with contextlib.suppress(AdaraProtocolError):
        parser.close()
    return decoded


def _run(seed: int, streams: int, *, truncate_only: bool) -> int:
    rng = random.Random(seed)
    for _ in range(streams):
        chosen = rng.sample(CORPUS, rng.randint(1, 5))
        data = bytearray(b"".join(chosen))
        if truncate_only:
            del data[rng.randrange(len(data)) :]
        else:
            for _ in range(rng.randint(1, 3)):
                _mutate(rng, data)
        stream = bytes(data)
        parse_hostile(stream, _pieces(rng, stream))
    return streams


EXAMPLES = 100
STREAMS_PER_EXAMPLE = 400
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.slow
@pytest.mark.parametrize("half", [1, 2])  # two halves, so that pytest -n 2 shares the work
def test_fuzz_mutated_streams(half):
    parsed = 0

    @FUZZ_SETTINGS
    @given(seed=st.integers(0, 2**64 - 1))
    def run(seed):
        nonlocal parsed
        parsed += _run(seed, STREAMS_PER_EXAMPLE, truncate_only=False)

    run()
    assert parsed >= 40_000


def test_fuzz_truncated_streams():
    parsed = 0

    @FUZZ_SETTINGS
    @given(seed=st.integers(0, 2**64 - 1))
    def run(seed):
        nonlocal parsed
        parsed += _run(seed, STREAMS_PER_EXAMPLE // 2, truncate_only=True)

    run()
    assert parsed >= 20_000


@settings(max_examples=300, deadline=None, database=None)
@given(
    indices=st.lists(st.integers(0, len(CORPUS) - 1), min_size=1, max_size=4),
    at=st.integers(0, 10_000),
    junk=st.binary(max_size=40),
    cut=st.integers(0, 10_000),
)
def test_fuzz_shrinkable_insert_and_cut(indices, at, junk, cut):
    """Hypothesis-chosen mutations, so a failure shrinks to a minimal stream."""
    data = b"".join(CORPUS[i] for i in indices)
    at %= len(data) + 1
    data = (data[:at] + junk + data[at:])[: cut % (len(data) + len(junk) + 1)]
    parse_hostile(data, [data])
    parse_hostile(data, [data[i : i + 1] for i in range(len(data))])


def test_fuzz_memory_stays_bounded():
    """Under tracemalloc: no mutated stream (some declare 4 GB payloads or 2**32 banks) makes
    the parser allocate more than a small multiple of the bytes it was given."""
    rng = random.Random(20261129)
    tracemalloc.start()
    try:
        worst = 0
        for _ in range(2000):
            data = bytearray(b"".join(rng.sample(CORPUS, rng.randint(1, 5))))
            for _ in range(rng.randint(1, 3)):
                _mutate(rng, data)
            stream = bytes(data)
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            parse_hostile(stream, _pieces(rng, stream))
            _, peak = tracemalloc.get_traced_memory()
            worst = max(worst, peak - before)
    finally:
        tracemalloc.stop()
    assert worst < 1024 * 1024


def test_unmutated_corpus_parses_completely():
    """The fuzz corpus itself is valid, so mutations start from good streams."""
    data = b"".join(CORPUS)
    assert parse_hostile(data, [data]) == len(CORPUS)
