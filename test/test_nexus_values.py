"""The one ISO 8601 parser and text decoder of both NeXus readers."""

from __future__ import annotations

import numpy as np
import pytest

from livereduce.nexus_values import (
    EPICS_EPOCH_UNIX_S,
    decode_text,
    detector_banks,
    iso_to_unix_ns,
    times_ns,
)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2017-11-01T10:12:13.123456789-04:00", 1_509_545_533_123_456_789),
        ("2017-11-01T14:12:13.123456789Z", 1_509_545_533_123_456_789),
        ("2017-11-01T14:12:13.123456789", 1_509_545_533_123_456_789),  # naive is UTC
        (" 2017-11-01T19:42:13.5+0530 ", 1_509_545_533_500_000_000),
        ("2017-11-01T14:12:13", 1_509_545_533_000_000_000),
    ],
)
def test_iso_times_to_unix_ns(text, ns):
    assert iso_to_unix_ns(text) == ns


def test_a_text_that_is_no_time_is_a_value_error():
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        iso_to_unix_ns("yesterday.5x")


@pytest.mark.parametrize(
    ("raw", "text"),
    [(b"HYSPEC", "HYSPEC"), (np.bytes_(b"x\xff"), "x\ufffd"), (np.array([b"a", b"b"]), "a"),
     (np.array([], dtype="S1"), ""), (178921, "178921")],
)  # fmt: skip
def test_decode_text(raw, text):
    assert decode_text(raw) == text


class Dataset:
    """The two parts of an h5py Dataset that times_ns reads."""

    def __init__(self, values, name="/entry/bank1_events/event_time_zero", **attrs):
        self.values, self.name, self.attrs = np.asarray(values), name, attrs

    def __getitem__(self, key):
        return self.values[key]


def test_times_truncate_to_ns_as_scippnexus_does_from_each_kind_of_offset():
    offset = "2017-11-01T14:12:13Z"
    base = 1_509_545_533_000_000_000
    assert times_ns(Dataset([0.0, 1.0000000009], offset=offset)).tolist() == [base, base + 10**9]
    assert times_ns(Dataset([2.5], units=b"ms", start=offset.encode())).tolist() == [
        base + 2_500_000
    ]
    epics = Dataset([0.0], offset_seconds=base // 10**9 - EPICS_EPOCH_UNIX_S, offset_nanoseconds=7)
    assert times_ns(epics).tolist() == [base + 7]
    assert times_ns(Dataset([1.0]), default_offset=offset).tolist() == [base + 10**9]
    with pytest.raises(ValueError, match="event_time_zero has no offset"):
        times_ns(Dataset([1.0]))


def test_detector_banks_by_number_without_the_pseudo_banks():
    names = ["bank10_events", "bank2_events", "bank_error_events", "bank_unmapped_events", "x"]
    assert detector_banks(names) == ["bank2_events", "bank10_events"]
