"""The one ISO 8601 parser and text decoder of both NeXus readers."""

from __future__ import annotations

import numpy as np
import pytest

from livereduce.nexus_values import decode_text, iso_to_unix_ns


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
