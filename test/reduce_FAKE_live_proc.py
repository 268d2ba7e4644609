"""Demo processing script (test/fake.conf): one chunk of fake events -> two histograms.

``input`` holds the chunk's events binned by pulse (``event_time_zero``), each event with
``event_id`` (pixel) and ``event_time_offset`` (time of flight, µs). The output is a DataGroup
that the engine adds to the accumulation chunk after chunk.
"""

import scipp as sc

PIXELS_PER_SIDE = 64  # fake.conf: pixel_count 4096 = 64 x 64

events = input.bins.concat()
tof_edges = sc.linspace("event_time_offset", 0.0, 16667.0, 201, unit="us")
pixel_edges = sc.arange("event_id", PIXELS_PER_SIDE**2 + 1, unit=None, dtype="int32")

output = sc.DataGroup(
    {
        "tof": events.hist(event_time_offset=tof_edges),
        "pixels": events.hist(event_id=pixel_edges).drop_coords("event_id"),
    }
)
