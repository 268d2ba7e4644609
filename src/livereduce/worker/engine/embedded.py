"""The embedded engine: Mantid's StartLiveData / MonitorLiveData loop on scipp.

Every ``update_every`` seconds (start to start, as MonitorLiveData: slow processing delays the
next chunk, it does not pile chunks up; mantid-live-data.md §2.4) one :meth:`EmbeddedEngine.step`
runs LoadLiveData's steps (§2.3):

1. extract the chunk from the listener (NotYet: report what it waits for, try next tick);
2. run the processing script on it (none: the chunk as it is);
3. with ``preserve_events`` false, turn events into a histogram: every binned result becomes
   its bins' sums (``bins.sum()``), keeping the bins the script chose — Mantid's
   ConvertToMatrixWorkspace, which keeps the workspace's binning;
4. accumulate (:mod:`livereduce.worker.engine.accumulation`); the first chunk, a chunk that begins a
   run, a data reset and the first chunk after a run transition force Replace;
5. run the post-processing script on the accumulation (none: the output is the accumulation);
6. write the output file (:mod:`livereduce.worker.outputs.result`) and report progress.

Run transitions (``run_transition``): at the chunk that ends a run, Restart makes the next chunk
replace the accumulation; Rename does the same and keeps the finished run's output as
``<output_workspace>_<run>.h5`` (``<output_workspace>_<run>_partial.h5`` when the listener
joined the run after its start: a partial result never replaces a complete one); Stop writes
the output and ends the loop (state run_ended). A chunk that begins a new run when the previous
one never reported its end counts as that end. After a chunk that ends a run the next chunk is
taken at once, whatever ``update_every`` is, so runs finished in a burst are all handed on
without lag. A data reset (the stream replays the run) replaces the run's events, monitors and
logs together. A script failure loses its chunk only; the loop goes on (STYLE.md §10).

What the listener left out or could not read (``Chunk.input_counts``) is summed in the report's
``input_counts`` and in the result file's ``livereduce_input_counts`` attribute (JSON, for the
current run); stream faults (:data:`~livereduce.worker.listeners.base.STREAM_FAULTS`) also count
as ``errors``. Every report names the oldest run seen whose end was not yet handled
(``unfinished_run``, ``unfinished_run_start_ns``) so that a worker taking over (``resume``)
completes it first.

Each user script is announced: just before it runs the engine reports ``in_script`` (the
script's file name) and ``in_script_since`` (wall time), and just after it one with
``in_script`` empty, so the supervisor allows the script its ``script_timeout_sec`` instead of the
heartbeat timeout.

A stop (issue 15.3) is checked between the phases of a step (after the extract, the processing
script, the accumulation and the post-processing script); a stop signal that arrives inside a
script, the accumulation or an output write abandons that work at once
(:meth:`~livereduce.worker.stop.StopToken.abandonable`): the step is dropped and the output file
on disk stays the last one completely written. Before the process ends, an output still waiting
for its write (writes are rate-limited) is written, unless the last write took more than
``STOP_FLUSH_MAX_S`` or the stop abandoned the accumulation (which may be half updated) or a
write (the same write again would hold the stop up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import scipp as sc

from livereduce.config import AccumulationMethod, Config, RunTransitionBehavior
from livereduce.protocol import HEARTBEAT_INTERVAL_S, Progress, Resume, WorkerExit, WorkerState
from livereduce.worker.engine.accumulation import (
    SCIPP_ERRORS,
    Accumulation,
    AccumulationError,
    read_only,
    sum_bins,
)
from livereduce.worker.engine.scripts import RunContext, ScriptFailure, ScriptRunner
from livereduce.worker.listeners.base import (
    STREAM_FAULTS,
    Chunk,
    Listener,
    ListenerError,
    NotYet,
    RunInfo,
)
from livereduce.worker.outputs.figures import FigureCaption
from livereduce.worker.outputs.live import STOP_FLUSH_S, LiveOutputs
from livereduce.worker.outputs.metadata import ResultMetadata, iso_utc
from livereduce.worker.outputs.result import OutputWriter
from livereduce.worker.outputs.savable import unsavable
from livereduce.worker.stop import StopRequested, StopToken

CHUNK_READY_POLL_S = 0.02
"""How often the loop asks a listener with ``chunk_ready`` whether its buffer is full (then
the chunk is taken at once instead of at the next ``update_every`` tick)."""

log = logging.getLogger(__name__)

STOP_FLUSH_MAX_S = 1.0
"""At a stop between steps, a pending output is written only when the last write took at most
this long (seconds): a stop must take seconds (issue 15.3), and a longer write is the kind that
the rate limit defers anyway."""

ACCUMULATION_PHASE = "the accumulation"
WRITE_PHASE = "the output write"
NO_FLUSH_AFTER = (ACCUMULATION_PHASE, WRITE_PHASE)
"""Abandoned work after which a pending output is not written at a stop."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepOutcome:
    """What one :meth:`EmbeddedEngine.step` did, with its timings in seconds.

    ``processed``: the chunk went through processing and accumulation; ``waiting``: the
    listener had nothing (NotYet) or the chunk was empty; ``failed``: the chunk was lost to a
    script or accumulation error; ``wrote``: the output file was written; ``ended_run``: a run
    ended with this chunk (the next chunk is taken at once); ``finished``: the run ended with
    run_transition Stop, the loop must end.
    """

    events: int = 0
    ended_run: bool = False
    processed: bool = False
    waiting: bool = False
    failed: bool = False
    wrote: bool = False
    finished: bool = False
    extract_s: float = 0.0
    process_s: float = 0.0
    accumulate_s: float = 0.0
    post_process_s: float = 0.0
    write_s: float = 0.0


def to_histogram(result: Any) -> Any:
    """``preserve_events`` false: every binned part of ``result`` becomes the sum of each bin
    (weights of the events in it, float64: :func:`accumulation.sum_bins`), the bins' coords
    and masks kept. Dense parts are unchanged."""
    if isinstance(result, sc.DataGroup):
        return result.apply(to_histogram)
    if isinstance(result, sc.Dataset):
        return sc.Dataset({k: to_histogram(v) for k, v in result.items()})
    if isinstance(result, sc.DataArray | sc.Variable) and result.bins is not None:
        return sum_bins(result)
    return result


def _stage_text(seconds: Sequence[float]) -> str:
    """The seconds of a step's stages (extract, processing script, accumulate,
    post-processing, write) for the log."""
    names = ("extract", "processing script", "accumulate", "post-processing", "write")
    return ", ".join(f"{name} {value:.3f} s" for name, value in zip(names, seconds, strict=True))


def _has_data(chunk: Chunk) -> bool:
    monitors = sum(m.bins.size().sum().value for m in chunk.monitors.values() if m.bins is not None)
    return (
        chunk.event_count > 0
        or monitors > 0
        or chunk.begins_run
        or chunk.ends_run
        or chunk.data_reset
    )


class EmbeddedEngine:
    """The live-data loop for ``config``. ``listener``: the source of chunks (None: made from
    the configuration by :func:`livereduce.worker.listeners.create_listener` when :meth:`run`
    starts; tests pass one, already started or not). ``clock``: monotonic seconds.
    ``resume``: the run a previous worker left unfinished (reported as unfinished until this
    engine handles its end). ``outputs``: figures and publishing (default: as the
    configuration says)."""

    def __init__(
        self,
        config: Config,
        listener: Listener | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        outputs: LiveOutputs | None = None,
        resume: Resume | None = None,
    ) -> None:
        self.config = config
        self.listener = listener
        self._clock = clock
        self.accumulation = Accumulation()
        self._monitors: dict[str, Accumulation] = {}
        """One accumulation per beam monitor: a chunk without a monitor's events leaves its
        accumulation as it is, and a monitor first seen mid-run starts its own."""
        self.workspaces: dict[str, Any] = {}
        self.writer = OutputWriter(config.output_dir, config.output_workspace, clock=clock)
        self._output: Any = None
        self._output_version = 0
        self.outputs = outputs if outputs is not None else LiveOutputs(config)
        self._last_pulse_ns: int | None = None
        proc, post = config.existing_scripts()
        self._runners = {
            role: ScriptRunner(path, role, self.workspaces)
            for role, path in (("processing", proc), ("post-processing", post))
            if path is not None
        }
        # without post-processing the output is the accumulation, which Add and Append only
        # extend: the result file can then grow by appending
        self.writer.output_grows = (
            "post-processing" not in self._runners
            and config.accum_method is not AccumulationMethod.REPLACE
        )
        self._run: RunInfo | None = None
        self._run_open = False
        self._run_logs: dict[str, list[sc.DataArray]] = {}
        self._replace_next = True
        self._run_stages: list[float] = [0] * 7
        """Since the last run end: chunks, events and the seconds of each stage of a step."""
        self._received_data = False
        self._run_events = 0
        self._stop: StopToken | None = None
        self._report: Callable[[Progress], None] = _no_report
        self._run_input_counts: dict[str, int] = {}
        self._unfinished: dict[int, int] = {}
        """Run number -> start (Unix ns) of every run seen whose end was not handled yet."""
        self._resumed = resume.run_number if resume is not None else None
        """The run handed over by the previous worker, until this engine meets it."""
        if resume is not None:
            self._unfinished[resume.run_number] = resume.start_ns
        self.progress = Progress(
            state=WorkerState.STARTING,
            engine="embedded",
            instrument=config.instrument.name,
            results_written=0,
        )
        self._report_unfinished()

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: StopToken, report: Callable[[Progress], None]) -> WorkerExit:
        """Start the listener and run chunks every ``update_every`` seconds until ``stop`` or,
        with run_transition Stop, the end of the run. Reports after every chunk and at least
        every HEARTBEAT_INTERVAL_S while waiting, and around every user script. ListenerError:
        ENGINE_FAILURE. A stop abandons the step in hand (module docstring)."""
        self._stop, self._report = stop, report
        abandoned = ""
        if self.listener is None:
            from livereduce.worker.listeners import create_listener  # noqa: PLC0415 - lazy: picks a module by kind

            self.listener = create_listener(self.config)
        self._set(WorkerState.CONNECTING, f"starting {self.listener.name}")
        report(self.progress)
        log.info(
            "engine_started: embedded engine, listener %s, start_from %s, update_every %g s, "
            "accumulation %s, preserve_events %s",
            self.listener.name, self.config.start_from, self.config.update_every,
            self.config.accum_method, self.config.preserve_events,
        )  # fmt: skip
        self.outputs.activate()
        try:
            self.listener.start(self.config.start_from)
            return self._loop(stop, report)
        except StopRequested as stopped:
            abandoned = stopped.phase
            log.info("engine_stopping: %s: %s abandoned", stopped.reason, abandoned or "a step")
            return WorkerExit.STOPPED
        except ListenerError as error:
            log.error("listener_failed: %s", error)
            self._set(WorkerState.ERROR, f"listener failed: {error}", last_error=str(error))
            report(self.progress)
            return WorkerExit.ENGINE_FAILURE
        finally:
            try:
                self._finish(stop, abandoned)
            finally:
                self.outputs.close(STOP_FLUSH_S if stop.requested else None)

    def _finish(self, stop: StopToken, abandoned: str) -> None:
        """Close the listener; write a pending output unless the stop made it unsafe or slow."""
        try:
            if self.writer.pending:
                why_not = self._why_not_flush(stop, abandoned)
                if why_not:
                    log.warning(
                        "output_not_flushed: %s; %s stays as last written",
                        why_not, self.writer.path,
                    )  # fmt: skip
                else:
                    with contextlib.suppress(StopRequested):  # a second stop signal: abandon it
                        self.flush()
        finally:
            self.writer.close()
            if self.listener is not None:
                self.listener.close()

    def _why_not_flush(self, stop: StopToken, abandoned: str) -> str:
        """Why a pending output must not be written as the engine ends (empty: write it)."""
        if abandoned in NO_FLUSH_AFTER:
            return f"the stop abandoned {abandoned}"
        if stop.requested and self.writer.last_write_s > STOP_FLUSH_MAX_S:
            return (
                f"the last write took {self.writer.last_write_s:.1f} s "
                f"(more than {STOP_FLUSH_MAX_S:g} s at a stop)"
            )
        return ""

    def _loop(self, stop: StopToken, report: Callable[[Progress], None]) -> WorkerExit:
        next_chunk = self._clock()
        last_report = self._clock()
        while not stop.requested:
            now = self._clock()
            if now >= next_chunk or (self.listener is not None and self.listener.chunk_ready):
                outcome = self.step()
                # Until the stream has spoken, look again at the heartbeat cadence: a worker
                # that is connected and receiving says so (systemd's READY=1) within seconds,
                # not one update_every after start.
                connecting = self.progress.state is WorkerState.CONNECTING
                wait_s = HEARTBEAT_INTERVAL_S if connecting else self.config.update_every
                next_chunk = now + min(wait_s, self.config.update_every)
                report(self.progress)
                last_report = self._clock()
                if outcome.finished:
                    return WorkerExit.STOPPED
                if outcome.ended_run:
                    next_chunk = last_report  # a finished run waits for nothing: take the next
            elif self._write_due():
                self._write(force=False)
                if self.writer.failure:
                    self._count_error(self.writer.failure)
                report(self.progress)
                last_report = self._clock()
            elif now - last_report >= HEARTBEAT_INTERVAL_S:
                report(self.progress)
                last_report = now
            due = self.writer.due_in()
            stop.wait(
                max(
                    0.0,
                    min(
                        next_chunk - self._clock(),
                        HEARTBEAT_INTERVAL_S - (self._clock() - last_report),
                        CHUNK_READY_POLL_S if self._polls_listener else math.inf,
                        due if due is not None else math.inf,
                    ),
                )
            )
        log.info("engine_stopping: %s", stop.reason or "stop requested")
        return WorkerExit.STOPPED

    def _write_due(self) -> bool:
        """Whether an output the write budget deferred may be written now (between chunks)."""
        due = self.writer.due_in()
        return due is not None and due <= 0

    def flush(self) -> None:
        """Write the output file if a newer output waits (writes are rate-limited)."""
        if self.writer.pending:
            self._write(force=True)

    def _write(self, *, force: bool, ended: bool = False) -> bool:
        """Write the current output and count it (abandoned by a stop signal: the rename never
        happens, so the file on disk stays whole); returns whether it was written. ``ended``:
        the output is the run's last (the file's metadata says so)."""
        with self._abandonable(WRITE_PHASE):
            wrote = self.writer.write(
                self._output,
                self._output_version,
                force=force,
                metadata=self._file_metadata(ended=ended),
            )
        self._count_write(wrote)
        return wrote

    def _count_write(self, wrote: bool) -> None:
        """Count a result file written (``results_written``: the supervisor's ``failing``)."""
        if wrote:
            written = (self.progress.results_written or 0) + 1
            self.progress = self.progress.with_(results_written=written)

    @property
    def _polls_listener(self) -> bool:
        return self.listener is not None and self.listener.hands_over_early

    def _abandonable(self, phase: str) -> contextlib.AbstractContextManager[None]:
        return self._stop.abandonable(phase) if self._stop is not None else contextlib.nullcontext()

    def _phase_done(self) -> None:
        """Between two phases of a step: raise StopRequested if a stop was asked for."""
        if self._stop is not None:
            self._stop.check()

    # -- one chunk -----------------------------------------------------------------------

    def step(self) -> StepOutcome:
        """Extract and process one chunk (LoadLiveData). Never raises for a script fault;
        raises ListenerError when the listener cannot go on, StopRequested when a stop (of the
        token :meth:`run` was given) abandons the step."""
        began = self._clock()
        if self.listener is None:
            raise ListenerError("the engine has no listener: run() makes one, tests pass one")
        try:
            chunk = self.listener.extract_data()
        except NotYet as not_yet:
            self._add_input_counts(not_yet.input_counts)
            waiting = self._received_data or not_yet.waiting_for_run
            state = WorkerState.WAITING_FOR_RUN if waiting else WorkerState.CONNECTING
            self._set(state, str(not_yet))
            return StepOutcome(waiting=True, extract_s=self._clock() - began)
        extracted = self._clock()
        self._phase_done()
        self._received_data = True
        # A run that never reported its end ends here, before this chunk's events and pulses
        # count for the next run (its result keeps its own events and end time).
        finished = (
            self._run is not None and self._new_run_without_end(chunk) and self._end_run(self._run)
        )
        self._count_events(chunk)
        self._count_input(chunk)
        self._see_run(chunk.run)
        if finished:
            return StepOutcome(finished=True, extract_s=extracted - began)
        if not _has_data(chunk):
            run = self._run
            if (
                self._run_open
                and chunk.run is not None
                and run is not None
                and chunk.run.number == run.number
            ):
                self._keep_logs(chunk)  # a PV is sent when it changes, beam or no beam
            self._report_idle(chunk)
            return StepOutcome(waiting=True, extract_s=extracted - began)
        self._note_last_pulse(chunk)
        if chunk.begins_run or chunk.data_reset:
            self._replace_next = True
        if chunk.begins_run or chunk.data_reset or (chunk.run is not None and self._run is None):
            self._run_logs = {}
        self._run = chunk.run
        self._run_open = chunk.run is not None and not chunk.ends_run
        self._keep_logs(chunk)
        # The scripts may run for minutes: the reports meanwhile (in_script) name the run and
        # say data arrive, not the "connecting" or "waiting for a run" of before the chunk.
        self._set(
            WorkerState.RUNNING,
            f"{self._describe(chunk)}: processing chunk {self.progress.chunks + 1}",
        )
        outcome = self._process(chunk, began, extracted)
        if chunk.ends_run and chunk.run is not None:
            finished = self._end_run(chunk.run)
            outcome = dataclasses.replace(outcome, finished=finished, ended_run=True)
        return outcome

    def _keep_logs(self, chunk: Chunk) -> None:
        for name, series in chunk.logs.items():
            self._run_logs.setdefault(name, []).append(series)

    def _note_last_pulse(self, chunk: Chunk) -> None:
        if chunk.begins_run:
            self._last_pulse_ns = None
        pulses = chunk.events.coords.get("event_time_zero")
        if pulses is not None and pulses.size:
            last = int(pulses.values.max().astype("datetime64[ns]").astype("int64"))
            self._last_pulse_ns = max(last, self._last_pulse_ns or last)

    def _count_events(self, chunk: Chunk) -> None:
        events = self.progress.events
        if chunk.data_reset:
            # The run is streamed again from its first pulse: its events so far come again.
            events -= self._run_events
        if chunk.begins_run or chunk.data_reset:
            self._run_events = 0
        self._run_events += chunk.event_count
        self.progress = self.progress.with_(events=events + chunk.event_count)

    def _count_input(self, chunk: Chunk) -> None:
        """Sum what the listener left out or could not read into the run's and the report's
        counts; stream faults are errors too."""
        if chunk.begins_run:
            self._run_input_counts = {}
        for kind, count in chunk.input_counts.items():
            self._run_input_counts[kind] = self._run_input_counts.get(kind, 0) + count
        self._add_input_counts(chunk.input_counts)

    def _add_input_counts(self, counts: Mapping[str, int]) -> None:
        """Add ``counts`` (kind -> count) to the report's; stream faults are errors too."""
        if not counts:
            return
        total = dict(self.progress.input_counts)
        for kind, count in counts.items():
            total[kind] = total.get(kind, 0) + count
        faults = sum(counts.get(kind, 0) for kind in STREAM_FAULTS)
        summary = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
        last_error = f"bad input from the stream: {summary}" if faults else None
        self.progress = self.progress.with_(
            input_counts=total,
            errors=self.progress.errors + faults,
            last_error=last_error or self.progress.last_error,
        )

    def _see_run(self, run: RunInfo | None) -> None:
        if run is not None and self._resumed is not None and run.number != self._resumed:
            # the stream began after the handed-over run: it cannot be completed any more
            log.warning(
                "resume_abandoned: run %d was handed over unfinished, but the stream gave "
                "run %d first; run %d stays incomplete",
                self._resumed,
                run.number,
                self._resumed,
            )
            self._unfinished.pop(self._resumed, None)
            self._report_unfinished()
        if run is not None:
            self._resumed = None
        if run is not None and run.number and run.number not in self._unfinished:
            start_ns = run.start_ns
            self._unfinished[run.number] = start_ns if start_ns is not None else 0
            self._report_unfinished()

    def _report_unfinished(self) -> None:
        oldest = min(self._unfinished, key=self._unfinished.__getitem__, default=None)
        self.progress = self.progress.with_(
            unfinished_run=oldest,
            unfinished_run_start_ns=None if oldest is None else self._unfinished[oldest],
        )

    def _report_idle(self, chunk: Chunk) -> None:
        if not self._run_open:
            self._set(WorkerState.WAITING_FOR_RUN, "waiting for a run")
        elif chunk.connected:
            self._set(WorkerState.NO_DATA, "in a run, no new data (beam off?)")
        else:
            self._set(WorkerState.CONNECTING, chunk.activity or "reconnecting")

    def _new_run_without_end(self, chunk: Chunk) -> bool:
        return (
            chunk.begins_run
            and self._run_open
            and self._run is not None
            and chunk.run is not None
            and chunk.run.number != self._run.number
        )

    def _process(self, chunk: Chunk, began: float, extracted: float) -> StepOutcome:
        run = self._run_context()
        result = self._script("processing", chunk.events, run, chunk.monitors)
        processed = self._clock()
        self._phase_done()
        if isinstance(result, ScriptFailure):
            return self._lost(
                chunk,
                result.summary(),
                result.traceback,
                began=began,
                extracted=extracted,
                processed=processed,
            )
        if not self.config.preserve_events:
            result = to_histogram(result)
        problem = None if "post-processing" in self._runners else unsavable(result)
        if problem is not None:
            return self._lost(
                chunk, problem, "", began=began, extracted=extracted, processed=processed
            )
        method, replace = self.config.accum_method, self._replace_next
        try:
            with self._abandonable(ACCUMULATION_PHASE):
                self.accumulation.accumulate(method, result, replace=replace)
        except AccumulationError as error:
            return self._lost(
                chunk, str(error), "", began=began, extracted=extracted, processed=processed
            )
        self._accumulate_monitors(chunk, method, replace=replace)
        if replace:
            self.writer.replaced()
            log.info("accumulation_replaced: %s replaces the accumulation", self._describe(chunk))
        self._replace_next = False
        accumulated = self._clock()
        self._phase_done()
        output = self._post_process(run)
        post_processed = self._clock()
        self._phase_done()
        wrote = False
        if output is not None:
            self._output = output
            self._output_version += 1
            if self.listener is not None:
                self.listener.accumulated(output, chunk)
            wrote = self._write(force=chunk.ends_run, ended=chunk.ends_run)
            if self.writer.failure:
                self._count_error(self.writer.failure)
            self.outputs.after_output(
                output, self._output_version, self._caption(run), run_ended=chunk.ends_run
            )
        written = self._clock()
        self.progress = self.progress.with_(
            chunks=self.progress.chunks + 1, last_chunk_time=time.time()
        )
        self._set(
            WorkerState.RUNNING, f"{self._describe(chunk)}: chunk {self.progress.chunks} processed"
        )
        stages = (
            extracted - began,
            processed - extracted,
            accumulated - processed,
            post_processed - accumulated,
            written - post_processed,
        )
        self._run_stages = [
            total + value
            for total, value in zip(self._run_stages, (1, chunk.event_count, *stages), strict=True)
        ]
        log.debug(
            "chunk_processed: %d events; %s%s",
            chunk.event_count,
            _stage_text(stages),
            "" if wrote else " (not written)",
        )
        return StepOutcome(
            events=chunk.event_count,
            processed=True,
            wrote=wrote,
            extract_s=extracted - began,
            process_s=processed - extracted,
            accumulate_s=accumulated - processed,
            post_process_s=post_processed - accumulated,
            write_s=written - post_processed,
        )

    def _accumulate_monitors(
        self, chunk: Chunk, method: AccumulationMethod, *, replace: bool
    ) -> None:
        """Each of the chunk's monitors into its own accumulation (all replaced with
        ``replace``); a monitor whose events do not fit loses this chunk's, with a warning."""
        if replace:
            self._monitors = {}
        for name, events in chunk.monitors.items():
            accumulation = self._monitors.setdefault(name, Accumulation())
            try:
                accumulation.accumulate(method, events)
            except AccumulationError as error:
                log.warning("monitor_not_accumulated: %s: %s", name, error)

    def _post_process(self, run: RunContext) -> Any:
        """The output workspace: the post-processing script's output on the accumulation, or
        the accumulation itself; None when post-processing failed (the last output stays)."""
        try:
            accumulated = self.accumulation.value()
            monitors = {name: acc.value() for name, acc in self._monitors.items()}
        except SCIPP_ERRORS as error:
            self._count_error(f"cannot read the accumulation: {error}")
            log.error("accumulation_unreadable: %s", error)
            return None
        if "post-processing" not in self._runners:
            return accumulated
        # Read-only views, not copies (a copy of 10^8 events takes seconds and as much memory
        # again): an in-place edit fails the script and cannot alter what later chunks are
        # added to.
        monitors = {name: read_only(value) for name, value in monitors.items()}
        result = self._script("post-processing", read_only(accumulated), run, monitors)
        if isinstance(result, ScriptFailure):
            self._count_error(result.summary())
            log.error("post_processing_failed: %s\n%s", result.summary(), result.traceback)
            return None
        problem = unsavable(result)
        if problem is not None:
            self._count_error(problem)
            log.error("post_processing_failed: %s", problem)
            return None
        return result

    def _script(self, role: str, data: Any, run: RunContext, monitors: Any) -> Any:
        """The script's output or its ScriptFailure, announced to the supervisor before and
        after (``in_script``); a stop signal abandons it."""
        runner = self._runners.get(role)
        if runner is None:
            return data
        self.progress = self.progress.with_(in_script=runner.path.name, in_script_since=time.time())
        self._report(self.progress)
        try:
            with self._abandonable(f"the {role} script {runner.path.name}"):
                outcome = runner.run(data, run, monitors)
        finally:
            self.progress = self.progress.with_(in_script="", in_script_since=None)
        self._report(self.progress)
        return outcome.failure if outcome.failure is not None else outcome.output

    def _lost(
        self,
        chunk: Chunk,
        summary: str,
        trace: str,
        *,
        began: float,
        extracted: float,
        processed: float,
    ) -> StepOutcome:
        self._count_error(summary)
        log.error(
            "chunk_lost: %s: %s%s", self._describe(chunk), summary, f"\n{trace}" if trace else ""
        )
        self._set(WorkerState.RUNNING, f"{self._describe(chunk)}: chunk lost: {summary}")
        return StepOutcome(
            events=chunk.event_count,
            failed=True,
            extract_s=extracted - began,
            process_s=processed - extracted,
        )

    def _count_error(self, summary: str) -> None:
        self.progress = self.progress.with_(
            errors=self.progress.errors + 1, last_error=summary[-500:]
        )

    # -- run transitions -----------------------------------------------------------------

    def _file_metadata(
        self, run: RunContext | None = None, *, ended: bool = False
    ) -> dict[str, object]:
        """Attributes written into the result file: the run's metadata (``run``: default the
        current context; :mod:`livereduce.worker.outputs.metadata`) and what the stream left
        out of this run."""
        return self._metadata(run, ended=ended).attributes() | {
            "livereduce_input_counts": json.dumps(self._run_input_counts, sort_keys=True)
        }

    def _end_run(self, run: RunInfo) -> bool:
        """Apply run_transition at the end of ``run``; True when the loop must stop."""
        behavior = self.config.run_transition
        chunks, events, *stages = self._run_stages
        log.info(
            "run_stages: run %d: %d chunks, %d events; %s",
            run.number,
            chunks,
            events,
            _stage_text(stages),
        )
        self._run_stages = [0] * 7
        log.info(
            "run_ended: run %d ended%s; run_transition %s",
            run.number,
            " (partial: joined after its start)" if run.partial else "",
            behavior,
        )
        self._run_open = False
        self._replace_next = True
        context = self._run_context()
        self._write(force=True, ended=True)
        self.outputs.after_output(
            self._output, self._output_version, self._caption(context), run_ended=True
        )
        if behavior is RunTransitionBehavior.RENAME and self._output is not None:
            kept = self.writer.keep_run(run.number, partial=run.partial)
            if kept is not None:
                log.info("run_output_kept: run %d kept as %s", run.number, kept)
        if self.writer.failure:
            # The run's result is not on disk as it should be: it stays unfinished, so that
            # the next worker completes it again (the resume), and the loss is an error.
            self._count_error(f"run {run.number} not kept: {self.writer.failure}")
            log.error(
                "run_not_kept: run %d stays unfinished for the next worker: %s",
                run.number,
                self.writer.failure,
            )
        else:
            self._unfinished.pop(run.number, None)
        self._report_unfinished()
        if behavior is RunTransitionBehavior.STOP:
            self._set(
                WorkerState.RUN_ENDED,
                f"run {run.number} ended; run_transition Stop: monitoring stopped",
            )
            return True
        return False

    # -- reporting -----------------------------------------------------------------------

    def _run_context(self) -> RunContext:
        run = self._run
        logs = {}
        for name, pieces in self._run_logs.items():
            if len(pieces) > 1:
                try:
                    pieces[:] = [sc.concat(pieces, "time")]
                except SCIPP_ERRORS:
                    pieces[:] = [pieces[-1]]
            logs[name] = read_only(pieces[0])  # the run's logs are the engine's: no edits
        if run is None:
            return RunContext(instrument=self.config.instrument.name, logs=logs)
        return RunContext(
            number=run.number,
            title=run.title,
            start_time=run.start_time,
            instrument=run.instrument or self.config.instrument.name,
            experiment=run.experiment,
            logs=logs,
        )

    def _caption(self, run: RunContext) -> FigureCaption:
        return FigureCaption(
            instrument=self.config.instrument.name,
            run_number=run.number,
            title=run.title,
            events=self._run_events,
            proton_charge=run.proton_charge,
            updated=time.time(),
        )

    def _metadata(self, run: RunContext | None, *, ended: bool) -> ResultMetadata:
        run = run if run is not None else self._run_context()
        charge = run.proton_charge
        end = self._last_pulse_ns / 1e9 if self._last_pulse_ns is not None else None
        return ResultMetadata(
            instrument=run.instrument,
            run_number=run.number,
            title=run.title,
            experiment_identifier=run.experiment,
            start_time=iso_utc(run.start_time),
            end_time=iso_utc(end),
            run_ended=ended or (run.number != 0 and not self._run_open),
            events=self._run_events,
            proton_charge=charge if charge is not None else float("nan"),
            updated=iso_utc(time.time()),
        )

    def _describe(self, chunk: Chunk) -> str:
        run = f"run {chunk.run.number}" if chunk.run is not None else "no run"
        return f"{run}, {chunk.event_count} events"

    def _set(self, state: WorkerState, detail: str, **changes: Any) -> None:
        run = self._run
        self.progress = self.progress.with_(
            state=state,
            detail=detail,
            run_number=run.number if run is not None else None,
            run_title=run.title if run is not None else "",
            streams=(
                {k: dict(v) for k, v in self.listener.streams.items()} if self.listener else {}
            ),
            **(self.outputs.counters() | changes),
        )


def _no_report(_progress: Progress) -> None:
    """The reporter of an engine stepped outside :meth:`EmbeddedEngine.run` (tests)."""
