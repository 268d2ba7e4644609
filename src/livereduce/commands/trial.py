"""``livereduce try CONFIG RUN.nxs.h5``: run the instrument's scripts on a recorded run.

The scripts of CONFIG run as the live service runs them (the embedded engine, the same
accumulation, post-processing, result file and figures), on chunks of the run's own pulses:
each chunk holds ``update_every`` seconds of the run (``--update-every`` overrides it), read as
fast as the machine goes instead of waiting for the clock. Every chunk prints one line (its
pulses' time span, events, the time it took, and the error if it failed); the result file, the
figures (``result_figures.json``, ``result.png``, ``result.html``) and a log go to the output
folder (default ``./livereduce-try-<run file stem>``). ``publish_plot`` calls of the scripts and
the ``publish`` key write the plots to ``<folder>/published/`` instead of the live data server,
unless ``--publish`` is given. Exit status 0 when every chunk went through, 1 when any chunk or
post-processing failed, 2 when the configuration or run cannot be used.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from livereduce.config import Config, ConfigError, config_from_mapping, load_config
from livereduce.config import Engine as EngineChoice
from livereduce.protocol import Progress

MAX_IDLE_STEPS = 10_000
"""Chunks in a row without data before the run counts as finished: a run's beam-off gap is
minutes, 10,000 chunks of even one second is hours. Keeps a strange file from looping for ever."""


class VirtualClock:
    """Run time for the listener: one ``update_every`` per chunk, however long a chunk takes."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class LocalPublisher:
    """Stands in for :class:`~livereduce.worker.outputs.publishing.Publisher`: writes each plot
    to ``<folder>/<instrument>_<run>.html`` (the newest replaces the older, as on the server)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.published = 0
        self.errors = 0
        self.last_error = ""

    def submit(
        self, instrument: str, run_number: object, files: Mapping[str, Any], *, config: object
    ) -> None:
        """Write the ``file`` part of ``files``; ``config`` is ignored (nothing is sent)."""
        del config
        from livereduce.worker.outputs.publishing import materialise  # noqa: PLC0415

        content = materialise(files.get("file", ""))
        if isinstance(content, tuple):  # (file name, content[, type])
            content = content[1]
        if isinstance(content, bytes):
            content = content.decode("utf-8", errors="replace")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{instrument}_{run_number}.html").write_text(str(content))
            self.published += 1
        except OSError as error:
            self.errors += 1
            self.last_error = f"cannot write the plot of {instrument} run {run_number}: {error}"

    def flush(self, timeout_s: float | None = None) -> bool:
        """Nothing waits: plots are written when submitted."""
        del timeout_s
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Nothing to close."""
        del timeout_s


def parser() -> argparse.ArgumentParser:
    """The ``livereduce try`` argument parser."""
    out = argparse.ArgumentParser(prog="livereduce try", description=__doc__.splitlines()[0])
    out.add_argument("config", type=Path, help="the live configuration (its scripts are run)")
    out.add_argument("run", type=Path, help="a recorded run: a NeXus event file (.nxs.h5)")
    out.add_argument(
        "--update-every",
        type=float,
        metavar="S",
        help="seconds of the run per chunk (default: the configuration's update_every)",
    )
    out.add_argument("-o", "--output", type=Path, help="folder for the results and figures")
    out.add_argument(
        "--publish",
        action="store_true",
        help="publish to the live data server as the service would (default: to files)",
    )
    return out


def trial_config(live: Config, run: Path, folder: Path, update_every: float | None) -> Config:
    """The live configuration turned to ``run``: the nexus listener, the embedded engine,
    outputs in ``folder``, run_transition Stop (the run's end ends the trial), no view page.
    Raises ConfigError."""
    raw = dict(live.raw)
    raw.update(
        listener="nexus",
        address=str(run.absolute()),
        listener_options={},
        engine="embedded",
        output_dir=str(folder.absolute()),
        status_file=str(folder.absolute() / "status.json"),
        log_file=str(folder.absolute() / "livereduce.log"),
        run_transition="Stop",
        view_address="",
    )
    if update_every is not None:
        raw["update_every"] = update_every
    return config_from_mapping(raw, live.path)


def run_trial(config: Config, *, publish: bool, out: Any = None) -> tuple[Progress, int]:
    """Run every chunk of ``config``'s NeXus file, printing one line per chunk to ``out``
    (default stdout); returns the last progress and the number of chunks that failed
    (post-processing failures included)."""
    out = sys.stdout if out is None else out
    from livereduce.worker.engine.embedded import EmbeddedEngine  # noqa: PLC0415 - scipp
    from livereduce.worker.listeners.base import ListenerError  # noqa: PLC0415
    from livereduce.worker.listeners.nexus import NexusListener  # noqa: PLC0415
    from livereduce.worker.outputs.compat import install_compat_modules  # noqa: PLC0415
    from livereduce.worker.outputs.live import LiveOutputs  # noqa: PLC0415

    install_compat_modules()
    clock = VirtualClock()
    listener = NexusListener(Path(config.address), speed=1.0, clock=clock)
    publisher = None if publish else LocalPublisher(config.output_dir / "published")
    outputs = LiveOutputs(config, figures=True, publisher=publisher)
    engine = EmbeddedEngine(config, listener, outputs=outputs)
    failed = 0
    outputs.activate()
    try:
        listener.start(config.start_from)
        idle = 0
        number = 0
        while idle < MAX_IDLE_STEPS:
            before = engine.progress.errors
            span = (clock.now_s, clock.now_s + config.update_every)
            clock.now_s += config.update_every
            began = time.monotonic()
            outcome = engine.step()
            took = time.monotonic() - began
            if outcome.waiting and not outcome.finished:
                idle += 1
                continue
            idle = 0
            number += 1
            broke = outcome.failed or engine.progress.errors > before
            failed += broke
            what = f"FAILED: {engine.progress.last_error}" if broke else "ok"
            print(
                f"chunk {number}: run time {span[0]:.1f}-{span[1]:.1f} s, "
                f"{outcome.events:,} events, {took:.3f} s: {what}",
                file=out,
                flush=True,
            )
            if outcome.finished:
                break
    except ListenerError as error:
        print(f"livereduce try: {error}", file=out)
        failed += 1
    finally:
        engine.flush()
        outputs.close()
        listener.close()
    return engine.progress.with_(**outputs.counters()), failed


def main(argv: Sequence[str]) -> int:
    """``livereduce try``; returns the exit status."""
    args = parser().parse_args(list(argv))
    if args.update_every is not None and not (
        math.isfinite(args.update_every) and args.update_every > 0
    ):
        print("livereduce try: --update-every must be a number of seconds > 0", file=sys.stderr)
        return 2
    folder = args.output or Path(f"livereduce-try-{args.run.name.split('.')[0]}")
    try:
        live = load_config(args.config)
        if not args.run.is_file():
            raise ConfigError(None, None, f"the run file {args.run} does not exist")
        config = trial_config(live, args.run, folder, args.update_every)
    except ConfigError as error:
        print(f"livereduce try: {error}", file=sys.stderr)
        return 2
    if live.engine is EngineChoice.MANTID:
        print("livereduce try: note: the configuration names engine 'mantid'; "
              "trying its scripts on the embedded engine", file=sys.stderr)  # fmt: skip
    config.output_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(config.output_dir / "livereduce.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        progress, failed = run_trial(config, publish=args.publish)
    finally:
        root.removeHandler(handler)
        handler.close()
    _draw(config)
    print(
        f"{progress.chunks} chunk(s) processed, {failed} failed, {progress.events:,} events; "
        f"{progress.plots_published} plot(s) published, {progress.publish_errors} publish "
        f"error(s); results in {config.output_dir}"
    )
    return 1 if failed else 0


def _draw(config: Config) -> None:
    from livereduce.commands.plot import plot_result  # noqa: PLC0415

    result = config.output_dir / f"{config.output_workspace}.h5"
    if not result.is_file():
        return
    for suffix in (".png", ".html"):
        try:
            plot_result(result, result.with_suffix(suffix))
        except (OSError, ValueError) as error:
            print(f"livereduce try: cannot draw {result}: {error}", file=sys.stderr)
