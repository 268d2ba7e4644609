"""The live view page: its server (files only), and the page in a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from livereduce.view.server import ViewServer, tail_lines
from waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


@pytest.fixture
def server(tmp_path):
    status = tmp_path / "status.json"
    figures = tmp_path / "result_figures.json"
    logfile = tmp_path / "livereduce.log"
    view = ViewServer(
        "127.0.0.1:0", status_file=status, figures_file=figures, log_file=logfile
    ).start()
    yield view, status, figures, logfile
    view.close()


def test_server_serves_only_the_daemon_files(server):
    view, status, figures, logfile = server
    assert requests.get(view.url + "status.json", timeout=5).json() == {"state": "unknown"}
    assert requests.get(view.url + "figures.json", timeout=5).json() == {"figures": []}
    status.write_text(json.dumps({"state": "running", "events": 12}))
    figures.write_text(json.dumps({"updated": 1.0, "figures": [{"name": "", "figure": {}}]}))
    logfile.write_text("".join(f"line {i}\n" for i in range(100)))
    assert requests.get(view.url + "status.json", timeout=5).json()["events"] == 12
    assert len(requests.get(view.url + "figures.json", timeout=5).json()["figures"]) == 1
    text = requests.get(view.url + "log.txt", timeout=5).text
    assert text.splitlines() == [f"line {i}" for i in range(60, 100)]
    page = requests.get(view.url, timeout=5)
    assert 'id="events"' in page.text
    assert '<script src="plotly.min.js">' in page.text
    script = requests.get(view.url + "plotly.min.js", timeout=5)
    assert script.status_code == 200
    assert len(script.content) > 1_000_000
    assert requests.get(view.url + "../etc/passwd", timeout=5).status_code == 404
    assert requests.get(view.url + "status.json/x", timeout=5).status_code == 404


def test_torn_or_bad_status_reads_as_unknown(server):
    view, status, _, _ = server
    status.write_text('{"state": "runn')
    assert requests.get(view.url + "status.json", timeout=5).json() == {"state": "unknown"}


def test_tail_lines_reads_only_the_end(tmp_path):
    big = tmp_path / "big.log"
    big.write_bytes(b"x" * 200_000 + b"\nlast one\n")
    assert tail_lines(big, 1) == "last one"
    assert tail_lines(tmp_path / "none.log") == ""


def test_view_address_is_loopback_unless_written(tmp_path):
    from livereduce.config import ConfigError, config_from_mapping  # noqa: PLC0415

    def address(value):
        raw = {"instrument": "HYSPEC", "listener": "fake", "view_address": value}
        return config_from_mapping(raw, tmp_path / "c.conf", check_scripts=False).view_address

    assert address("8080") == "127.0.0.1:8080"
    assert address(8080) == "127.0.0.1:8080"
    assert address("0.0.0.0:8080") == "0.0.0.0:8080"
    assert address("") == ""
    for bad in ("host:port", "99999", True, ["x"]):
        with pytest.raises(ConfigError, match="view_address"):
            address(bad)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (.ci/system-deps.sh)")
    return found


def load_page(browser: str, url: str, *, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (a fresh profile: the network is closed)."""
    profile = tempfile.mkdtemp(prefix="livereduce-chromium-")
    try:
        args = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                "--virtual-time-budget=8000", "--window-size=1100,1400"]  # fmt: skip
        if screenshot is not None:
            args.append(f"--screenshot={screenshot}")
        else:
            args.append("--dump-dom")
        done = subprocess.run([*args, url], capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def events_shown(dom: str) -> int:
    match = re.search(r'id="events"[^>]*>([\d,]+)<', dom)
    assert match, dom[:2000]
    return int(match.group(1).replace(",", ""))


def drawn_pixels(png: Path) -> int:
    """Pixels of plotly's trace colours (blue line, coloured heatmap), not white or grey."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    return int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())


@pytest.fixture
def daemon(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for role in ("proc", "post_proc"):
        shutil.copy(REPO / "test" / f"reduce_FAKE_live_{role}.py", scripts)
    out = tmp_path / "out"
    config = tmp_path / "live.conf"
    config.write_text(
        json.dumps(
            {
                "instrument": "FAKE",
                "listener": "fake",
                "engine": "embedded",
                "script_dir": "scripts",
                "update_every": 0.5,
                "preserve_events": False,
                "listener_options": {"event_rate": 20000, "pixel_count": 4096, "seed": 1,
                                     "run_length_sec": 3600, "run_number": 7},
                "output_dir": "out",
                "status_file": "out/status.json",
                "log_file": "out/livereduce.log",
                "view_address": "127.0.0.1:0",
            }
        )
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "livereduce", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        yield process, out
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_page_in_chromium_shows_a_figure_and_growing_events(daemon, tmp_path):
    browser = chromium()
    process, out = daemon

    def view_url():
        log = out / "livereduce.log"
        text = log.read_text() if log.is_file() else ""
        match = re.search(r"view_started: live view at (\S+)", text)
        assert process.poll() is None, text[-2000:]
        return match.group(1) if match else None

    url = wait_for(view_url, "the view_started log line", timeout_s=60)
    figures = out / "result_figures.json"
    wait_for(figures.is_file, "the worker's figures file", timeout_s=60)

    def status_events():
        try:
            return json.loads((out / "status.json").read_text())["events"]
        except (OSError, ValueError, KeyError):
            return 0

    wait_for(status_events, "events in the status file", timeout_s=60)
    first_dom = load_page(browser, url)
    first = events_shown(first_dom)
    assert first > 0
    assert 'data-figures="2"' in first_dom  # tof (1-D) and image (2-D); the 0-D total is not drawn
    wait_for(lambda: status_events() > first, "more events in the status file", timeout_s=60)
    second = events_shown(load_page(browser, url))
    assert second > first

    screenshot = tmp_path / "view.png"
    load_page(browser, url, screenshot=screenshot)
    assert screenshot.is_file()
    assert drawn_pixels(screenshot) > 5000


def test_the_supervisor_side_imports_no_neutron_data_library():
    code = (
        "import sys, livereduce.cli, livereduce.view.server\n"
        "print(sorted(m for m in ('scipp', 'scippnexus', 'h5py', 'plotly') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_a_busy_view_address_is_logged_and_the_daemon_goes_on(tmp_path, caplog):
    import socket  # noqa: PLC0415

    from livereduce.cli import start_view  # noqa: PLC0415
    from livereduce.config import config_from_mapping  # noqa: PLC0415

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        raw = {"instrument": "HYSPEC", "listener": "fake", "view_address": str(port)}
        config = config_from_mapping(raw, tmp_path / "c.conf", check_scripts=False)
        assert start_view(config) is None
    assert f"view_failed: cannot serve the live view on 127.0.0.1:{port}" in caplog.text
