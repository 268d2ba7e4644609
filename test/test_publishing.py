"""Publishing plots: publish_plot as plot_publisher does it, against the real live_data_server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from livedata_fixture import (  # noqa: F401 - live_data_server is a fixture
    LiveDataServer,
    free_port,
    histogram_total,
    live_data_server,
)
from livereduce.config import StartFrom, config_from_mapping
from livereduce.worker.engine.embedded import EmbeddedEngine
from livereduce.worker.listeners.base import NotYet
from livereduce.worker.listeners.nexus import NexusListener
from livereduce.worker.outputs import publishing
from livereduce.worker.outputs.compat import install_compat_modules
from livereduce.worker.outputs.live import LiveOutputs

HYS_EVENTS = 26938


def hys_engine(tmp_path: Path, data: Path, **raw) -> EmbeddedEngine:
    settings = {
        "instrument": "HYSPEC",
        "listener": "nexus",
        "address": str(data / "HYS_178921.nxs.h5"),
        "engine": "embedded",
        "script_dir": "scripts",
        "output_dir": "out",
        "update_every": 0.05,
        "publish": {"every_sec": 0.001, "timeout_sec": 5},
        **raw,
    }
    config = config_from_mapping(settings, tmp_path / "livereduce.conf", check_scripts=False)
    return EmbeddedEngine(config, NexusListener(Path(config.address), chunks=4))


def replay(engine: EmbeddedEngine) -> None:
    engine.listener.start(StartFrom.START_OF_RUN)
    for _ in range(6):
        try:
            engine.step()
        except NotYet:
            break
    engine.flush()
    engine.outputs.close()
    engine.progress = engine.progress.with_(**engine.outputs.counters())


def test_publish_plot_posts_like_plot_publisher(tmp_path, live_data_server, monkeypatch):  # noqa: F811
    monkeypatch.setenv("POST_PROCESSING_CONF", str(live_data_server.publish_config(tmp_path)))
    div = '<div id="x">hello</div>'
    response = publishing.publish_plot("TESTINST", 4242, files={"file": div})
    assert response.status_code == 200
    assert live_data_server.html("testinst", 4242).text == div


def test_publish_plot_raises_on_bad_credentials(tmp_path, live_data_server):  # noqa: F811
    config = live_data_server.publish_config(tmp_path, password="wrong")
    with pytest.raises(requests.HTTPError, match="401"):
        publishing.publish_plot("TESTINST", 4243, files={"file": "<div></div>"}, config=str(config))


def test_config_search_order(tmp_path, monkeypatch):
    env_file = tmp_path / "env.conf"
    env_file.write_text('{"publish_url_template": "http://env/${instrument}/${run_number}/"}')
    key_file = tmp_path / "key.conf"
    key_file.write_text('{"publish_url_template": "http://key/${instrument}/${run_number}/"}')
    monkeypatch.setenv("POST_PROCESSING_CONF", str(env_file))
    assert publishing.read_publish_config().url("HYS", 1) == "http://env/HYS/1/"
    publishing.set_default_config(key_file)
    try:
        assert publishing.read_publish_config().url("HYS", 1) == "http://key/HYS/1/"
        assert publishing.find_publish_config(env_file) == env_file
    finally:
        publishing.set_default_config(None)
    monkeypatch.delenv("POST_PROCESSING_CONF")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(publishing.PublishError, match="no publishing configuration"):
        publishing.read_publish_config()
    bad = tmp_path / "bad.conf"
    bad.write_text('{"publish_url_template": "http://x/${beamline}/"}')
    with pytest.raises(publishing.PublishError, match="unknown placeholder"):
        publishing.read_publish_config(bad).url("HYS", 1)


def test_replayed_run_is_published_and_last_plot_totals_its_events(
    tmp_path,
    shared_data,
    live_data_server,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setenv("POST_PROCESSING_CONF", str(live_data_server.publish_config(tmp_path)))
    engine = hys_engine(tmp_path, shared_data)
    replay(engine)
    assert engine.progress.chunks == 4
    assert engine.progress.publish_errors == 0, engine.progress.last_publish_error
    assert engine.progress.plots_published >= 2
    answer = live_data_server.html("HYS", 178921)
    assert answer.status_code == 200
    assert answer.text.startswith("<div")
    assert "run 178921" in answer.text
    assert histogram_total(answer.text) == HYS_EVENTS


@pytest.mark.parametrize("failure", ["bad credentials", "server down"])
def test_publish_failures_are_counted_and_processing_goes_on(
    tmp_path,
    shared_data,
    live_data_server,  # noqa: F811
    monkeypatch,
    failure,
    caplog,
):
    if failure == "bad credentials":
        conf = live_data_server.publish_config(tmp_path, password="wrong")
        expected = "answered 401"
    else:
        conf = live_data_server.unreachable_config(tmp_path)
        expected = "cannot publish"
    engine = hys_engine(tmp_path, shared_data, publish_config=str(conf))
    replay(engine)
    assert engine.progress.chunks == 4
    assert engine.progress.errors == 0
    assert engine.progress.publish_errors >= 1
    assert expected in engine.progress.last_publish_error
    assert engine.progress.plots_published == 0
    assert (tmp_path / "out" / "result.h5").is_file()
    assert "publish_failed" in caplog.text


def test_publisher_never_waits_for_a_hung_server(tmp_path):
    """A server that accepts and never answers: submit returns at once; the upload times out."""
    import socket  # noqa: PLC0415

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        conf = tmp_path / "hung.conf"
        conf.write_text(
            json.dumps({"publish_url_template": f"http://127.0.0.1:{port}/${{instrument}}/"})
        )
        publisher = publishing.Publisher(timeout_s=0.3)
        publisher.submit("HYS", 1, {"file": "<div></div>"}, config=str(conf))
        assert publisher.errors == 0  # nothing happened yet: the loop did not wait
        assert publisher.flush(timeout_s=5.0)
        publisher.close()
    assert publisher.errors == 1
    assert "timed out" in publisher.last_error.lower()


def test_newest_plot_of_a_run_replaces_a_queued_one():
    sent: list[str] = []
    gate = __import__("threading").Event()

    def send(item, _timeout):
        gate.wait(5)
        sent.append(item.files["file"])
        return 200

    publisher = publishing.Publisher(send=send)
    publisher.submit("HYS", 1, {"file": "first"}, config=None)
    publisher.submit("HYS", 1, {"file": "second"}, config=None)
    publisher.submit("HYS", 1, {"file": "third"}, config=None)
    gate.set()
    publisher.close()
    assert sent[-1] == "third"
    assert len(sent) <= 2
    assert publisher.published == len(sent)


def test_finddata_import_runs_unchanged_in_a_fresh_python(tmp_path, live_data_server):  # noqa: F811
    """A script written for SNS: `from finddata.publish_plot import publish_plot`."""
    script = tmp_path / "script.py"
    script.write_text(
        "from livereduce.worker.outputs.compat import install_compat_modules\n"
        "install_compat_modules()\n"
        "from finddata.publish_plot import publish_plot, plot1d\n"
        "from postprocessing.publish_plot import publish_plot as p2\n"
        "import plot_publisher\n"
        "assert p2 is publish_plot is plot_publisher.publish_plot\n"
        "r = publish_plot('TESTINST', 777, files={'file': '<div>sns</div>'})\n"
        "print(r.status_code)\n"
        "import numpy as np\n"
        "xy = [np.array([1, 2, 3]), np.array([4, 5, 6])]\n"
        "print(plot1d(778, xy, instrument='TESTINST', title='t').status_code)\n"
    )
    env = {
        "POST_PROCESSING_CONF": str(live_data_server.publish_config(tmp_path)),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["200", "200"]
    assert live_data_server.html("TESTINST", 777).text == "<div>sns</div>"
    assert histogram_total(live_data_server.html("TESTINST", 778).text) == 15


def test_compat_modules_leave_real_packages_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "plot_publisher", object())
    for name in (
        "finddata",
        "finddata.publish_plot",
        "postprocessing",
        "postprocessing.publish_plot",
    ):
        monkeypatch.delitem(sys.modules, name, raising=False)
    added = install_compat_modules()
    assert "plot_publisher" not in added
    assert "finddata.publish_plot" in added
    from finddata.publish_plot import publish_plot  # noqa: PLC0415

    assert publish_plot is publishing.publish_plot


def test_script_publish_plot_queues_inside_the_worker(tmp_path):
    """Inside livereduce publish_plot returns at once (None) and the upload is counted."""
    sent = []
    config = config_from_mapping(
        {"instrument": "HYSPEC", "listener": "fake", "output_dir": "out"},
        tmp_path / "c.conf",
        check_scripts=False,
    )
    publisher = publishing.Publisher(send=lambda item, _t: sent.append(item) or 500)
    outputs = LiveOutputs(config, publisher=publisher)
    assert publishing.installed() is None  # made, not yet running: nothing global changed
    outputs.activate()
    try:
        assert publishing.publish_plot("HYS", 5, files={"file": "<div></div>"}) is None
        assert publisher.flush(5.0)
    finally:
        outputs.close()
    assert publishing.installed() is None
    assert len(sent) == 1
    assert outputs.counters()["publish_errors"] == 1
    assert "answered 500" in outputs.counters()["last_publish_error"]


def test_mantid_engine_scripts_queue_their_plots(tmp_path, monkeypatch):
    """Mantid runs the scripts in the worker: their publish_plot queues on a publisher too."""
    from livereduce.config import Engine  # noqa: PLC0415
    from livereduce.worker.main import make_engine, send_queued_plots  # noqa: PLC0415

    monkeypatch.delenv("POST_PROCESSING_CONF", raising=False)
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "mantid_standin"))
    for name in [m for m in sys.modules if m == "mantid" or m.startswith("mantid.")]:
        monkeypatch.delitem(sys.modules, name)
    config = config_from_mapping(
        {"instrument": "HYSPEC", "engine": "mantid", "publish_config": "p.conf"},
        tmp_path / "c.conf",
        check_scripts=False,
    )
    try:
        make_engine(Engine.MANTID, config)
        publisher = publishing.installed()
        assert isinstance(publisher, publishing.Publisher)
        assert publishing.find_publish_config() is None  # p.conf does not exist
        LiveDataServer.unreachable_config(tmp_path).rename(tmp_path / "p.conf")
        assert publishing.find_publish_config() == tmp_path / "p.conf"
        # A script's plot, still queued when the engine ends, is sent before the worker exits.
        assert publishing.publish_plot("HYS", 3, files={"file": "<div></div>"}) is None
        send_queued_plots(config)
        assert publishing.installed() is None
        assert publisher.errors == 1
        assert "cannot publish the plot of HYS run 3" in publisher.last_error
    finally:
        publishing.install(None)
        publishing.set_default_config(None)


def test_a_broken_publish_config_is_a_counted_error(tmp_path):
    broken = tmp_path / "broken.conf"
    broken.write_text("{not json")
    publisher = publishing.Publisher(timeout_s=1.0)
    publisher.submit("HYS", 1, {"file": "<div></div>"}, config=str(broken))
    assert publisher.flush(5.0)
    publisher.close()
    assert publisher.errors == 1
    assert "cannot be read as JSON" in publisher.last_error
    assert str(broken) in publisher.last_error


def test_a_file_closed_after_publish_plot_is_still_sent(tmp_path):
    sent = []
    publisher = publishing.Publisher(send=lambda item, _t: sent.append(item.files) or 200)
    report = tmp_path / "report.html"
    report.write_text("<div>report</div>")
    with report.open() as handle:
        publisher.submit("REF_L", 9, {"file": handle}, config=None)
    with report.open("rb") as handle:
        publisher.submit("REF_M", 9, {"file": ("r.html", handle, "text/html")}, config=None)
    publisher.close()
    assert {"file": "<div>report</div>"} in sent
    assert {"file": ("r.html", b"<div>report</div>", "text/html")} in sent
    assert publisher.errors == 0
