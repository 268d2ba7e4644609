"""What the worker shows of each new output workspace besides the result file.

:class:`LiveOutputs` gets every new output workspace from the engine and

- writes its default figures (:mod:`livereduce.worker.outputs.figures`) next to the result file
  as ``<output_workspace>_figures.json`` (atomically) when the view page is on
  (``view_address``) or ``figures`` is asked for (``livereduce try``), at most every
  :data:`FIGURES_EVERY_S`, and always at the end of a run;
- with ``publish`` configured, hands the default figures to the :class:`Publisher` at most every
  ``publish.every_sec`` and always at the end of a run (the run's last plot is published: the
  publisher keeps one pending plot per run, so the next run's plots do not replace it, and a
  stopping worker sends what waits).

It owns the worker's :class:`Publisher`; :meth:`LiveOutputs.activate` (when the engine's loop
starts) installs it, so that scripts' ``publish_plot`` queues on it too. Figure failures are
logged and counted as publish errors; nothing here raises into the processing loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from livereduce.config import Config
from livereduce.view.files import figures_path
from livereduce.worker.engine.accumulation import SCIPP_ERRORS
from livereduce.worker.outputs import publishing
from livereduce.worker.outputs.figures import (
    FigureCaption,
    NamedFigure,
    default_figures,
    figure_div,
    write_figures,
)
from livereduce.worker.outputs.result import WRITE_SHARE

log = logging.getLogger(__name__)

STOP_FLUSH_S = 1.0
"""What a stopping worker gives the plots still queued: a stop has seconds in all
(livereduce.worker.stop.STOP_EXIT_AFTER_S), the result file comes first."""

FIGURES_EVERY_S = 1.0
"""The view page polls every two seconds: writing the figures more often shows nothing more."""


def combined_div(figures: list[NamedFigure]) -> str:
    """One HTML ``<div>`` holding every figure (the server keeps one plot per run)."""
    if len(figures) == 1:
        return figure_div(figures[0].figure)
    inner = "".join(
        figure_div(f.figure, div_id=f"livereduce-plot-{i}") for i, f in enumerate(figures)
    )
    return f"<div>{inner}</div>"


class LiveOutputs:
    """Figures and publishing for ``config``; ``figures``: write the figures file even
    without ``view_address``; ``publisher``: the one to use (tests; default: a new one when
    publishing is configured); ``clock``: monotonic seconds."""

    def __init__(
        self,
        config: Config,
        *,
        figures: bool = False,
        publisher: publishing.PlotSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._write_figures = figures or bool(config.view_address)
        self._figures_file = figures_path(config.output_dir, config.output_workspace)
        self._every = config.publish_every_sec
        self.publisher: publishing.PlotSink = (
            publisher
            if publisher is not None
            else publishing.Publisher(timeout_s=config.publish_timeout_sec)
        )
        self._previous: publishing.PlotSink | None = None
        self._active = False
        self._next_figures = 0.0
        self._next_publish = 0.0
        self._figure_errors = 0
        self._last_figure_error = ""
        self._figures_version: object = None
        self._published_version: object = None

    def after_output(
        self, output: Any, version: object, caption: FigureCaption, *, run_ended: bool
    ) -> None:
        """A new output workspace (``version``); ``run_ended``: it is the run's last."""
        if output is None:
            return
        now = self._clock()
        want_figures = (
            self._write_figures
            and version != self._figures_version
            and (run_ended or now >= self._next_figures)
        )
        want_publish = (
            self._every is not None
            and caption.run_number > 0
            and version != self._published_version
            and (run_ended or now >= self._next_publish)
        )
        if not (want_figures or want_publish):
            return
        try:
            figures = default_figures(output, caption)
        except SCIPP_ERRORS as error:
            self._figure_failed(f"cannot draw the output workspace: {error}")
            return
        # Drawing a large accumulation takes time: keep it to a share of the loop, as writes.
        spent = self._clock() - now
        if want_figures:
            self._figures_version = version
            self._next_figures = now + max(FIGURES_EVERY_S, spent / WRITE_SHARE)
            try:
                write_figures(self._figures_file, figures, caption)
            except OSError as error:
                self._figure_failed(f"cannot write {self._figures_file}: {error}")
        if want_publish and figures and self._every is not None:
            self._published_version = version
            self._next_publish = now + self._every
            self.publisher.submit(
                self._config.instrument.short_name,
                caption.run_number,
                {"file": combined_div(figures)},
                config=self._config.publish_config,
            )

    def _figure_failed(self, message: str) -> None:
        self._figure_errors += 1
        self._last_figure_error = message[-500:]
        log.warning("figures_failed: %s", message)

    def counters(self) -> dict[str, Any]:
        """The report fields: ``plots_published``, ``publish_errors``, ``last_publish_error``."""
        errors = self.publisher.errors + self._figure_errors
        last = self.publisher.last_error or self._last_figure_error
        return {
            "plots_published": self.publisher.published,
            "publish_errors": errors,
            "last_publish_error": last,
        }

    def activate(self) -> None:
        """Make scripts' ``publish_plot`` queue on this publisher, with the ``publish_config``
        key as their default configuration, until :meth:`close` (the engine's run)."""
        publishing.set_default_config(self._config.publish_config)
        self._previous = publishing.install(self.publisher)
        self._active = True

    def close(self, timeout_s: float | None = None) -> None:
        """Publish what waits (the run's last plot) within ``timeout_s`` (default: the upload
        timeout, at most half the stop timeout) and uninstall the publisher."""
        limit = min(self._config.publish_timeout_sec + 1.0, self._config.stop_timeout / 2)
        if timeout_s is not None:
            limit = min(limit, timeout_s)
        if not self.publisher.flush(limit):
            log.warning("publish_flush_timeout: plots still queued when the worker stopped")
        self.publisher.close(timeout_s=0.0)
        if self._active:
            publishing.install(self._previous)
            publishing.set_default_config(None)
            self._active = False
