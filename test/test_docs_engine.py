"""Every code block of docs/engine.md runs here, on real runs, and the counts it states hold."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import scipp as sc
import scippnexus as snx

from livereduce.config import Config, StartFrom
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners.base import Chunk, RunInfo
from livereduce.worker.listeners.nexus import NexusListener
from test_engine_embedded import ChunkList, make_config

DOC = Path(__file__).resolve().parents[1] / "docs" / "engine.md"
HYS = "HYS_178921.nxs.h5"
HYS_EVENTS = 26_938
CHUNKS = 5


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", doc_text(), flags=re.DOTALL)


def run_file(config: Config, path: Path) -> EmbeddedEngine:
    """The whole file through the engine in CHUNKS chunks, as the nexus listener gives it."""
    engine = EmbeddedEngine(config, NexusListener(path, chunks=CHUNKS))
    engine.listener.start(StartFrom.START_OF_RUN)
    for _ in range(CHUNKS + 1):
        engine.step()
    engine.flush()
    assert engine.progress.errors == 0, engine.progress.last_error
    assert engine.progress.chunks == CHUNKS
    return engine


def test_the_doc_has_the_three_examples_and_states_their_counts():
    text = doc_text()
    assert len(blocks()) == 3
    assert "all 26,938 events of HYS_178921" in text
    assert "would keep 527 of HYS_178921's 26,938 events" in text
    assert "on 11,657 pixels" in text


def test_the_time_of_flight_example_keeps_every_event(tmp_path, shared_data):
    histogram = blocks()[0]
    engine = run_file(make_config(tmp_path, histogram), shared_data / HYS)
    result = sc.io.load_hdf5(tmp_path / "out" / "result.h5")
    assert result.sum().value == HYS_EVENTS
    assert engine.progress.events == HYS_EVENTS


def test_edges_that_stop_at_one_frame_keep_527_events(tmp_path, shared_data):
    one_frame = blocks()[0].replace("100_000.0, 1001", "16667.0, 201")
    assert one_frame != blocks()[0]
    run_file(make_config(tmp_path, one_frame), shared_data / HYS)
    assert sc.io.load_hdf5(tmp_path / "out" / "result.h5").sum().value == 527


def test_the_per_pixel_example_keeps_every_event_on_hyspec(tmp_path, shared_data):
    engine = run_file(make_config(tmp_path, blocks()[1]), shared_data / HYS)
    result = engine.accumulation.value()
    assert result.bins.size().sum().value == HYS_EVENTS
    assert result.sizes == {"event_id": 11_657}
    with snx.File(shared_data / HYS) as f:
        banks = [f["entry"][k][()] for k in f["entry"] if re.fullmatch(r"bank\d+_events", k)]
    offline = sc.concat([b.bins.concat() for b in banks], "bank").bins.concat()
    expected = offline.group(result.coords["event_id"])
    assert sc.identical(result.bins.size(), expected.bins.size())
    assert result.bins.coords["event_time_offset"].bins.sum().sum().value == pytest.approx(
        offline.bins.coords["event_time_offset"].bins.sum().value, rel=1e-6
    )


@pytest.mark.parametrize(
    ("name", "events"),
    [
        ("HYS_178922.nxs.h5", 21_504),
        ("HYS_178923.nxs.h5", 25_661),
        ("REF_L_184977.nxs.h5", 100_304),
        ("REF_L_184978.nxs.h5", 100_328),
    ],
)
def test_the_per_pixel_example_keeps_every_event_of_every_sns_run(
    tmp_path, shared_data, name, events
):
    engine = run_file(make_config(tmp_path, blocks()[1]), shared_data / name)
    assert engine.accumulation.value().bins.size().sum().value == events


def test_the_per_pixel_example_keeps_every_event_of_the_isis_run(tmp_path, shared_data):
    with snx.File(shared_data / "SANS2D_minimal.nxs") as f:
        events = f["raw_data_1/detector_1_events"][()]
    run = RunInfo(number=1)
    cuts = np.linspace(0, events.sizes["event_time_zero"], CHUNKS + 1).astype(int)
    chunks = [
        Chunk(events=events["event_time_zero", a:b], run=run, begins_run=i == 0)
        for i, (a, b) in enumerate(itertools.pairwise(cuts))
    ]
    engine = EmbeddedEngine(make_config(tmp_path, blocks()[1]), ChunkList(chunks))
    for _ in range(CHUNKS):
        engine.step()
    assert engine.progress.errors == 0, engine.progress.last_error
    assert engine.accumulation.value().bins.size().sum().value == 237_078


def test_the_post_processing_example_divides_by_the_proton_charge(tmp_path, shared_data):
    histogram, _, normalise = blocks()
    engine = run_file(make_config(tmp_path, histogram, normalise), shared_data / HYS)
    result = sc.io.load_hdf5(tmp_path / "out" / "result.h5")
    with snx.File(shared_data / HYS) as f:
        charge = f["entry/DASlogs/proton_charge"][()].sum().data
    accumulated = engine.accumulation.value()
    assert accumulated.sum().value == HYS_EVENTS
    assert sc.allclose(result.data, (accumulated / charge).data)
    assert result.unit == sc.Unit("counts") / charge.unit
