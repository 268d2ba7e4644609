"""End to end: HYS_178921 replayed over ADARA into the daemon, plots published to the real
live_data_server (issue 12, "Done when")."""

from __future__ import annotations

import time

import pytest

from livedata_fixture import free_port, histogram_total, live_data_server  # noqa: F401
from test_e2e_replay import daemons, finished, serve  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow  # real daemons, brokers or servers: seconds each

HYS_EVENTS = 26938


def wait_for_total(server, instrument: str, run: int, total: int, timeout_s: float = 30.0) -> str:
    """The server's answer once its plot totals ``total`` (uploads are asynchronous)."""
    deadline = time.monotonic() + timeout_s
    answer = None
    while time.monotonic() < deadline:
        answer = server.html(instrument, run)
        if answer.status_code == 200 and histogram_total(answer.text) == total:
            return answer.text
        time.sleep(0.2)
    raise AssertionError(f"the server never showed {total} events: {answer and answer.text[:300]}")


def test_daemon_publishes_the_replayed_run(
    tmp_path,
    shared_data,
    daemons,  # noqa: F811
    live_data_server,  # noqa: F811
    monkeypatch,
):
    monkeypatch.setenv("POST_PROCESSING_CONF", str(live_data_server.publish_config(tmp_path)))
    replay = serve(daemons, [shared_data / "HYS_178921.nxs.h5"])
    daemon = daemons(
        tmp_path / "d",
        {"address": f"127.0.0.1:{replay.port}", "publish": {"every_sec": 0.2}},
        "output = input\n",
    )
    status = daemon.wait_for(finished(HYS_EVENTS))
    html = wait_for_total(live_data_server, "HYS", 178921, HYS_EVENTS)
    assert html.startswith("<div")
    assert "HYSPEC run 178921: MnO xtal" in html
    assert "26,938 events, 2e+11 pC, updated" in html  # the proton charge from the stream
    status = daemon.wait_for(lambda s: s["plots_published"] >= 1)
    assert status["publish_errors"] == 0, status["last_publish_error"]
    assert "plot_published: HYS run 178921" in daemon.log()
    daemon.terminate()


@pytest.mark.parametrize("failure", ["bad credentials", "server down"])
def test_daemon_keeps_processing_when_publishing_fails(
    tmp_path,
    shared_data,
    daemons,  # noqa: F811
    live_data_server,  # noqa: F811
    failure,
):
    if failure == "bad credentials":
        conf = live_data_server.publish_config(tmp_path, password="wrong")
    else:
        conf = live_data_server.unreachable_config(tmp_path)
    replay = serve(daemons, [shared_data / "HYS_178921.nxs.h5"])
    daemon = daemons(
        tmp_path / "d",
        {
            "address": f"127.0.0.1:{replay.port}",
            "publish": {"every_sec": 0.2, "timeout_sec": 2},
            "publish_config": str(conf),
        },
        "output = input\n",
    )
    status = daemon.wait_for(lambda s: finished(HYS_EVENTS)(s) and s["publish_errors"] >= 1)
    assert status["errors"] == 0
    assert status["plots_published"] == 0
    expected = "answered 401" if failure == "bad credentials" else "cannot publish"
    assert expected in status["last_publish_error"]
    assert "publish_failed" in daemon.log()
    assert status["restarts"] == 0
    daemon.terminate()
