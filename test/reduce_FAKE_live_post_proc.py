"""Demo post-processing script (test/fake.conf): the accumulated histograms, presented.

``input`` is the accumulation (the DataGroup the processing script makes, summed over chunks).
The output adds the per-pixel counts as a 64 x 64 image and the total count.
"""

import scipp as sc

PIXELS_PER_SIDE = 64

image = input["pixels"].fold(dim="event_id", sizes={"y": PIXELS_PER_SIDE, "x": PIXELS_PER_SIDE})
output = sc.DataGroup(
    {
        "tof": input["tof"],
        "image": image,
        "total_counts": input["tof"].sum(),
    }
)
logger.info("run %s: %d counts so far", run.number, output["total_counts"].value)  # noqa: F821
