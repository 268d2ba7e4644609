"""docs/scripts-from-mantid.md: every example runs on a real run and publishes to the real server,
and the script namespace gives SNS scripts what they use."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from livedata_fixture import histogram_total, live_data_server  # noqa: F401
from livereduce.cli import main
from livereduce.worker.engine.scripts import RunContext, ScriptRunner

DOC = Path(__file__).resolve().parents[1] / "docs" / "scripts-from-mantid.md"
BLOCK = re.compile(r"```python\n# example: (\w+), file: (\S+)\n(.*?)```", re.S)


def examples() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name, file, code in BLOCK.findall(DOC.read_text()):
        found.setdefault(name, {})[file] = code
    return found


def run_example(tmp_path, name, instrument, run_file, live_data_server, monkeypatch):  # noqa: F811
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for file, code in examples()[name].items():
        (scripts / file).write_text(code)
    config = tmp_path / "live.conf"
    config.write_text(json.dumps({"instrument": instrument, "script_dir": "scripts"}))
    monkeypatch.setenv("POST_PROCESSING_CONF", str(live_data_server.publish_config(tmp_path)))
    return main(["try", str(config), str(run_file), "-o", str(tmp_path / "out"), "--publish"])


def test_doc_has_the_three_patterns():
    assert set(examples()) == {"powder", "image", "report"}


@pytest.mark.slow
def test_powder_pattern_on_hyspec(tmp_path, shared_data, live_data_server, monkeypatch, capsys):  # noqa: F811
    status = run_example(
        tmp_path, "powder", "HYSPEC", shared_data / "HYS_178921.nxs.h5", live_data_server,
        monkeypatch,
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "0 publish error(s)" in printed
    html = live_data_server.html("HYS", 178921).text
    assert html.startswith("<div")
    assert "d-spacing" in html
    assert histogram_total(html) == 26938  # every event falls in 0-20 Å at this geometry


def test_detector_image_on_hyspec(tmp_path, shared_data, live_data_server, monkeypatch, capsys):  # noqa: F811
    status = run_example(
        tmp_path, "image", "HYSPEC", shared_data / "HYS_178922.nxs.h5", live_data_server,
        monkeypatch,
    )  # fmt: skip
    assert status == 0, capsys.readouterr().out
    html = live_data_server.html("HYS", 178922).text
    assert '"type":"heatmap"' in html.replace(" ", "")
    import h5py  # noqa: PLC0415

    with h5py.File(shared_data / "HYS_178922.nxs.h5") as f:
        expected = int(f["entry/total_counts"][0])
    assert histogram_total(html) == expected


def test_sequence_report_on_ref_l(tmp_path, shared_data, live_data_server, monkeypatch, capsys):  # noqa: F811
    status = run_example(
        tmp_path, "report", "REF_L", shared_data / "REF_L_184977.nxs.h5", live_data_server,
        monkeypatch,
    )  # fmt: skip
    assert status == 0, capsys.readouterr().out
    html = live_data_server.html("REF_L", 184977).text
    assert html.startswith("<div")
    assert "Sequence 3 of 15" in html
    assert "IPTS-26776" in html
    assert html.count("Plotly.newPlot") == 2


def _run_script(tmp_path, code: str, run: RunContext):
    script = tmp_path / "script.py"
    script.write_text(code)
    return ScriptRunner(script, "post-processing", {}).run(None, run, {})


def test_script_namespace_is_main_with_sns_run_metadata(tmp_path):
    import scipp as sc  # noqa: PLC0415

    logs = {
        "proton_charge": sc.DataArray(
            sc.array(dims=["time"], values=[1.5e7, 2.5e7], unit="pC"),
            coords={"time": sc.datetimes(dims=["time"], values=[0, 1], unit="s")},
        ),
        "sequence_number": sc.DataArray(sc.array(dims=["time"], values=[2, 3])),
        "sequence_total": sc.DataArray(sc.array(dims=["time"], values=[15])),
    }
    run = RunContext(number=184977, experiment="IPTS-26776", logs=logs)
    code = (
        "import scipp as sc\n"
        "assert __name__ == '__main__'\n"
        "output = sc.scalar(0.0)\n"
        "if __name__ == '__main__':\n"
        "    output = sc.DataGroup({'n': run.run_number, 'ipts': run.experiment_identifier,\n"
        "        'pc': run.proton_charge, 'seq': run.sequence_number, 'tot': run.sequence_total})\n"
    )
    result = _run_script(tmp_path, code, run)
    assert result.failure is None, result.failure
    assert dict(result.output) == {
        "n": 184977, "ipts": "IPTS-26776", "pc": 4.0e7, "seq": 3, "tot": 15,
    }  # fmt: skip


def test_between_runs_the_run_number_is_zero(tmp_path):
    empty = RunContext()
    assert empty.run_number == 0
    assert empty.proton_charge is None
    assert empty.sequence_number is None
    assert empty.experiment_identifier == ""


@pytest.mark.parametrize("unit", ["uAh", None])
def test_proton_charge_units(unit):
    import scipp as sc  # noqa: PLC0415

    log = sc.DataArray(sc.array(dims=["time"], values=[1.0, 2.0], unit=unit))
    charge = RunContext(logs={"proton_charge": log}).proton_charge
    assert charge == pytest.approx(3.0 * 3.6e9 if unit == "uAh" else 3.0)


def test_sequence_from_the_pv_name():
    import scipp as sc  # noqa: PLC0415

    logs = {
        "BL4B:CS:Autoreduce:Sequence:Num": sc.DataArray(sc.array(dims=["time"], values=[4])),
        "BL4B:CS:Autoreduce:Sequence:Total": sc.DataArray(sc.array(dims=["time"], values=[9])),
    }
    run = RunContext(number=1, logs=logs)
    assert (run.sequence_number, run.sequence_total) == (4, 9)
