"""Stop time: SIGTERM to the livereduce daemon until it exits, in the cases of issue 15.3.

    python bench/stop_time.py [--events-per-s N] [--only NAME]

For each case the daemon (``scripts/livereduce.py``; embedded engine on the fake listener, or
the Mantid engine on the test stand-in) runs in a temporary folder; at the case's moment (a
file the script writes, an event count in the status file, a temporary output file) the bench
sends SIGTERM and prints the seconds until the daemon exited, its exit status, what its worker
said it abandoned, and whether any process it started is left, beside the ceiling of 5 s.
The tests (test/test_worker_stop.py, test/test_engine_mantid.py) check the same cases by
exit status, log lines and left-over processes; this prints the times.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))

from daemon_process import Daemon  # noqa: E402 - test helpers, from the path above
from test_engine_mantid import mantid_daemon, recorded  # noqa: E402
from test_worker_stop import (  # noqa: E402
    IN_C_WITH_THE_GIL,
    SLEEPER,
    SWALLOWER,
    daemon_config,
    status,
    temporaries,
)

CEILING_S = 5.0
"""Issue 15.3: SIGTERM -> exit status 0 in under 5 s, whatever the worker is doing."""


def embedded(tmp: Path, scripts: dict[str, str], **raw) -> Daemon:
    for name, source in scripts.items():
        (tmp / f"reduce_FAKE_live_{name}.py").write_text(source.format(mark=str(tmp / "mark")))
    return Daemon(tmp, daemon_config(tmp, **raw))


def big(tmp: Path, rate: int) -> Daemon:
    options = {"event_rate": rate, "pixel_count": 1024}
    return embedded(tmp, {"proc": "output = input\n"}, update_every=1.0, listener_options=options)


def cases(rate: int) -> dict[str, tuple[Callable[[Path], Daemon], Callable[[Daemon, Path], bool]]]:
    """name -> (start the daemon in a folder, the moment to send SIGTERM)."""
    marked = lambda _d, tmp: (tmp / "mark").exists()  # noqa: E731
    many = lambda _d, tmp: status(tmp).get("events", 0) >= 2 * rate  # noqa: E731
    return {
        "processing script in time.sleep(20)": (
            lambda tmp: embedded(tmp, {"proc": SLEEPER}),
            marked,
        ),
        "post-processing script in time.sleep(20)": (
            lambda tmp: embedded(tmp, {"proc": "output = input\n", "post_proc": SLEEPER}),
            marked,
        ),
        "script that swallows the stop": (lambda tmp: embedded(tmp, {"proc": SWALLOWER}), marked),
        "script in C code holding the GIL": (
            lambda tmp: embedded(tmp, {"proc": IN_C_WITH_THE_GIL}),
            marked,
        ),
        f"step on >= {2 * rate:.0e} accumulated events": (lambda tmp: big(tmp, rate), many),
        f"output write in progress (>= {2 * rate:.0e} events)": (
            lambda tmp: big(tmp, rate),
            lambda d, tmp: many(d, tmp) and bool(temporaries(tmp / "out")),
        ),
        "Mantid: cancel and exit hook block": (
            lambda tmp: mantid_daemon(
                tmp,
                {"instrument": "POWGEN", "engine": "mantid", "stop_timeout": 5.0},
                {"MANTID_STANDIN_CANCEL": "block", "MANTID_STANDIN_EXIT": "block"},
                standin=True,
            ),
            lambda d, _tmp: bool(recorded(d).named("MonitorLiveData.isRunning")),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-s", type=int, default=3 * 10**7, help="fake event rate")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()
    print(f"{'case':52s} {'stop s':>7s} {'ratio':>6s} status  left  abandoned")
    for name, (start, moment) in cases(args.events_per_s).items():
        if args.only not in name:
            continue
        with tempfile.TemporaryDirectory(prefix="livereduce-stop-") as folder:
            tmp = Path(folder)
            daemon = start(tmp)
            try:
                if not daemon.wait_for(lambda m=moment, d=daemon, t=tmp: m(d, t), 120):
                    print(f"{name:52s} the moment never came:\n{daemon.text()[-2000:]}")
                    continue
                code, took = daemon.stop()
                left = daemon.left_over()
            finally:
                daemon.stop()
                daemon.kill_left_over()
            said = re.findall(r"engine_stopping: [^\n]*|stop_deadline|worker_killed", daemon.text())
            print(
                f"{name:52s} {took:7.2f} {took / CEILING_S:6.2f} {code!s:>6s} {len(left):5d}  "
                f"{'; '.join(said)[:80]}"
            )


if __name__ == "__main__":
    main()
