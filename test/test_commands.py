"""``livereduce plot`` and ``livereduce try`` on the real run HYS_178921; the result metadata."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipp as sc

from livereduce.cli import main
from livereduce.worker.outputs.metadata import read_metadata

HYS_EVENTS = 26938
HYS_PROTON_CHARGE_PC = 200238827910.0  # entry/proton_charge of HYS_178921

TOF_PROC = """\
import scipp as sc
edges = sc.linspace("event_time_offset", 0.0, 40000.0, 101, unit="us")
output = input.bins.concat().hist(event_time_offset=edges)
"""

FAILING_POST = """\
if run.sequence_number is None and len(workspaces) > 2:
    raise RuntimeError("no sequence in this run")
workspaces[len(workspaces)] = 1
output = input
"""


def write_config(tmp_path: Path, proc: str = TOF_PROC, post: str | None = None, **raw) -> Path:
    scripts = tmp_path / "scripts"
    scripts.mkdir(exist_ok=True)
    (scripts / "reduce_HYS_live_proc.py").write_text(proc)
    if post is not None:
        (scripts / "reduce_HYS_live_post_proc.py").write_text(post)
    config = tmp_path / "live.conf"
    config.write_text(json.dumps({"instrument": "HYSPEC", "script_dir": "scripts", **raw}))
    return config


def test_try_good_script_writes_results_with_metadata(tmp_path, shared_data, capsys):
    config = write_config(tmp_path, publish={"every_sec": 30})
    out = tmp_path / "out"
    status = main(["try", str(config), str(shared_data / "HYS_178921.nxs.h5"), "-o", str(out),
                   "--update-every", "60"])  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0, printed
    chunks = [line for line in printed.splitlines() if line.startswith("chunk ")]
    assert len(chunks) == 4  # 232 s of pulses in 60 s chunks
    assert all(line.endswith(": ok") for line in chunks)
    assert sum(int(line.split(", ")[1].split()[0].replace(",", "")) for line in chunks) == (
        HYS_EVENTS
    )
    result = sc.io.load_hdf5(out / "result.h5")
    assert result.sum().value == HYS_EVENTS
    meta = read_metadata(out / "result.h5")
    assert meta["run_number"] == 178921
    assert meta["title"].startswith("MnO xtal")
    assert meta["experiment_identifier"] == "IPTS-19996"
    assert meta["events"] == HYS_EVENTS
    assert meta["proton_charge"] == pytest.approx(HYS_PROTON_CHARGE_PC)
    assert meta["start_time"] == "2017-11-02T01:47:58.543571+00:00"
    assert meta["end_time"].startswith("2017-11-02T01:51:50")
    assert meta["run_ended"] is True or meta["run_ended"] == 1
    assert meta["version"]
    assert meta["updated"]
    figures = json.loads((out / "result_figures.json").read_text())
    assert figures["run_number"] == 178921
    assert sum(figures["figures"][0]["figure"]["data"][0]["y"]) == HYS_EVENTS
    published = out / "published" / "HYS_178921.html"
    assert published.read_text().startswith("<div")
    assert (out / "result.png").stat().st_size > 10_000
    assert "plotly" in (out / "result.html").read_text()[:100_000].lower()


def test_try_failing_script_exits_nonzero_and_names_the_error(tmp_path, shared_data, capsys):
    config = write_config(tmp_path, post=FAILING_POST)
    status = main(["try", str(config), str(shared_data / "HYS_178921.nxs.h5"),
                   "-o", str(tmp_path / "out")])  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 1
    lines = [line for line in printed.splitlines() if line.startswith("chunk ")]
    assert len(lines) == 8  # 30 s chunks
    assert all(line.endswith(": ok") for line in lines[:3])
    failed = lines[3:]
    assert all("FAILED" in line for line in failed)
    assert "reduce_HYS_live_post_proc.py:2: RuntimeError: no sequence in this run" in failed[0]
    assert "5 failed" in printed
    # What went through before the failures is kept.
    assert sc.io.load_hdf5(tmp_path / "out" / "result.h5").sum().value > 0


def test_try_bad_inputs_give_status_2(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["try", str(config), str(tmp_path / "missing.nxs.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["try", str(tmp_path / "none.conf"), "x.nxs.h5"]) == 2
    assert main(["try", str(config), "x.nxs.h5", "--update-every", "0"]) == 2


def test_try_runs_as_a_command(tmp_path, shared_data):
    config = write_config(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "livereduce", "try", str(config),
         str(shared_data / "HYS_178921.nxs.h5"), "-o", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "8 chunk(s) processed, 0 failed, 26,938 events" in done.stdout


def test_plot_command_draws_a_result(tmp_path, capsys):
    tof = sc.DataArray(
        sc.array(dims=["tof"], values=np.arange(50.0), variances=np.arange(50.0), unit="counts"),
        coords={"tof": sc.linspace("tof", 0.0, 1000.0, 51, unit="us")},
    )
    image = sc.DataArray(sc.array(dims=["y", "x"], values=np.ones((8, 9)), unit="counts"))
    result = tmp_path / "result.h5"
    sc.DataGroup({"tof": tof, "image": image, "total": tof.sum()}).save_hdf5(result)
    assert main(["plot", str(result), "-o", str(tmp_path / "out.png")]) == 0
    assert "2 panel(s)" in capsys.readouterr().out
    from PIL import Image  # noqa: PLC0415

    with Image.open(tmp_path / "out.png") as picture:
        assert picture.size[1] >= 700  # two panels, one above the other
        pixels = np.asarray(picture.convert("RGB"), dtype=int)
    assert ((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum() > 1000  # coloured data
    assert main(["plot", str(result), "-o", str(tmp_path / "out.html")]) == 0
    assert (tmp_path / "out.html").read_text().count("Plotly.newPlot") == 2


def test_plot_command_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    assert main(["plot", str(bad)]) == 1
    assert str(bad) in capsys.readouterr().err
    assert main(["plot", str(bad), "-o", str(tmp_path / "x.gif")]) == 1
    assert "unknown image format" in capsys.readouterr().err


def test_result_file_without_metadata_still_plots(tmp_path):
    result = tmp_path / "old.h5"
    sc.DataArray(sc.arange("x", 5.0)).save_hdf5(result)
    assert read_metadata(result) == {}
    assert main(["plot", str(result)]) == 0
    assert (tmp_path / "old.png").is_file()


def test_loaded_result_plots_with_plopp(tmp_path, shared_data):
    """issue 12: `.plot()` on a loaded result works (plopp is a dependency)."""
    config = write_config(tmp_path)
    main(["try", str(config), str(shared_data / "HYS_178921.nxs.h5"), "-o", str(tmp_path / "o")])
    figure = sc.io.load_hdf5(tmp_path / "o" / "result.h5").plot()
    assert figure is not None
    assert not math.isnan(read_metadata(tmp_path / "o" / "result.h5")["proton_charge"])


def test_readme_picture_is_made_by_the_plot_command():
    picture = Path(__file__).resolve().parents[1] / "docs" / "demo-result.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "docs/demo-result.png" in (picture.parents[1] / "README.md").read_text()


def test_each_kept_run_carries_its_own_metadata(tmp_path):
    """run_transition Rename: result_<run>.h5 says its run and end; result.h5 the next run's,
    also when the next run begins without the previous one reporting its end."""
    from test_engine_embedded import drive, make_config, run_chunks  # noqa: PLC0415

    first = run_chunks(1, 2, ends=False)  # never reports its end
    second = run_chunks(2, 2, pulse0=1000, ends=False)
    drive(make_config(tmp_path, run_transition="Rename"), first + second)
    kept = read_metadata(tmp_path / "out" / "result_1.h5")
    current = read_metadata(tmp_path / "out" / "result.h5")
    assert (kept["run_number"], kept["events"], kept["run_ended"]) == (1, 140, True)
    assert (current["run_number"], current["events"], current["run_ended"]) == (2, 140, False)
    # Pulses are 16_666_667 ns apart: run 1 ends at pulse 19, run 2 at pulse 1019.
    assert kept["end_time"] == "1970-01-01T00:00:00.316667+00:00"
    assert current["end_time"] == "1970-01-01T00:00:16.983334+00:00"
    assert current["title"] == "run 2"
    assert math.isnan(current["proton_charge"])
