"""Publishing plots to the SNS live data server, as SNS post-processing scripts expect.

The contract is neutrons/plot_publisher's (peers/README.md, ecosystem.md "SNS: publish_plot"):
a JSON configuration file with ``publish_url_template`` (a :class:`string.Template` with
``${instrument}`` and ``${run_number}``), ``publisher_username``, ``publisher_password`` and
``publisher_certificate``; one plain ``POST`` per plot (no session: live_data_server lets a
logged-in session in whatever the password) of the form fields ``username`` and ``password``
and the file part ``file``. The server stores the part as HTML only when it starts with
``<div``.

Where the configuration file is (:func:`find_publish_config`): the argument, else the
livereduce key ``publish_config`` (:func:`set_default_config`), else ``$POST_PROCESSING_CONF``,
else plot_publisher's own order: ``/etc/autoreduce/post_processing.conf``, then
``./post_processing.conf``.

Inside the worker a :class:`Publisher` is installed (:func:`install`): :func:`publish_plot`
then hands the plot to its thread and returns at once (None), so an upload never stalls the
processing loop; the thread posts with a timeout, keeps only the newest plot per run while an
upload is under way, logs and counts failures, and :meth:`Publisher.flush` sends what waits
when a run ends. Outside livereduce (no publisher installed) :func:`publish_plot` posts at
once and returns the response, raising ``requests.HTTPError`` on a failed answer, as
plot_publisher does.
"""

from __future__ import annotations

import json
import logging
import os
import string
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests

log = logging.getLogger(__name__)

CONFIG_SEARCH = (Path("/etc/autoreduce/post_processing.conf"), Path("post_processing.conf"))
"""plot_publisher's own search order (its ``configuration.py``)."""

CONFIG_ENV = "POST_PROCESSING_CONF"
"""Environment variable naming the configuration file; the worker inherits it."""

UPLOAD_TIMEOUT_S = 10.0
"""Connect and read timeout of one upload: the server answers in milliseconds; a stalled one
must not keep newer plots waiting for long."""

_default_config: Path | None = None
_installed: PlotSink | None = None


class PublishError(Exception):
    """No usable publishing configuration; ``str()`` names the file and the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishConfig:
    """The publishing keys of a post_processing.conf file (``config_file``)."""

    publish_url_template: str
    publisher_username: str = ""
    publisher_password: str = ""
    publisher_certificate: str = ""
    config_file: Path | None = None

    def url(self, instrument: str, run_number: object) -> str:
        """The upload URL for ``instrument`` and ``run_number``. Raises PublishError when the
        template names another placeholder."""
        try:
            return string.Template(self.publish_url_template).substitute(
                instrument=instrument, run_number=str(run_number)
            )
        except (KeyError, ValueError) as error:
            raise PublishError(
                f"{self.config_file}: publish_url_template {self.publish_url_template!r}: "
                f"unknown placeholder {error}; allowed: ${{instrument}}, ${{run_number}}"
            ) from None


def set_default_config(path: Path | None) -> None:
    """The configuration file to use when none is given (the ``publish_config`` key)."""
    global _default_config
    _default_config = Path(path) if path is not None else None


def find_publish_config(config_file: str | os.PathLike[str] | None = None) -> Path | None:
    """The first readable file of: ``config_file``, the ``publish_config`` key,
    ``$POST_PROCESSING_CONF``, then plot_publisher's search order; None when none is."""
    env = os.environ.get(CONFIG_ENV)
    choices = [config_file, _default_config, env or None, *CONFIG_SEARCH]
    for choice in choices:
        if choice and os.access(choice, os.R_OK):
            return Path(choice)
    return None


def read_publish_config(config_file: str | os.PathLike[str] | None = None) -> PublishConfig:
    """Read the configuration found by :func:`find_publish_config`. Raises PublishError when
    there is none, it is not a JSON object, or ``publish_url_template`` is missing."""
    path = find_publish_config(config_file)
    if path is None:
        raise PublishError(
            "no publishing configuration: set 'publish_config', $POST_PROCESSING_CONF, or "
            "write " + " or ".join(str(p) for p in CONFIG_SEARCH)
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PublishError(f"{path}: cannot be read as JSON: {error}") from None
    if not isinstance(raw, dict):
        raise PublishError(f"{path}: must hold a JSON object")
    template = raw.get("publish_url_template")
    if not isinstance(template, str) or not template:
        raise PublishError(f"{path}: key 'publish_url_template' is missing or not a string")
    return PublishConfig(
        publish_url_template=template,
        publisher_username=str(raw.get("publisher_username", "")),
        publisher_password=str(raw.get("publisher_password", "")),
        publisher_certificate=str(raw.get("publisher_certificate", "")),
        config_file=path,
    )


def _as_config(config: object) -> PublishConfig:
    if isinstance(config, PublishConfig):
        return config
    if hasattr(config, "publish_url_template"):  # plot_publisher's own Configuration
        return PublishConfig(
            publish_url_template=config.publish_url_template,
            publisher_username=getattr(config, "publisher_username", ""),
            publisher_password=getattr(config, "publisher_password", ""),
            publisher_certificate=getattr(config, "publisher_certificate", ""),
        )
    if config is not None and not isinstance(config, str | os.PathLike):
        raise PublishError(f"config must be a configuration or a file name, got {config!r}")
    return read_publish_config(config)  # None or a file name, as plot_publisher takes


def upload(
    config: PublishConfig,
    instrument: str,
    run_number: object,
    files: Mapping[str, Any],
    *,
    timeout_s: float = UPLOAD_TIMEOUT_S,
) -> requests.Response:
    """One upload, as plot_publisher sends it (a plain request, no session). Returns the
    response whatever its status; raises requests.RequestException when there is none."""
    url = config.url(instrument, run_number)
    data = {"username": config.publisher_username, "password": config.publisher_password}
    tls: dict[str, Any] = (
        {"cert": config.publisher_certificate}
        if config.publisher_certificate
        else {"verify": False}
    )
    return requests.post(url, data=data, files=dict(files), timeout=timeout_s, **tls)


def publish_plot(
    instrument: str, run_number: object, files: Mapping[str, Any], config: object = None
) -> requests.Response | None:
    """plot_publisher's ``publish_plot``. ``files``: ``{'file': html_div}``; ``config``: a
    configuration, a file name or None (found as the module docstring says).

    With a :class:`Publisher` installed (inside livereduce) the plot is queued and None is
    returned. Otherwise the response is returned; an answer that is not 200 raises
    requests.HTTPError, as plot_publisher does."""
    if _installed is not None:
        _installed.submit(instrument, run_number, files, config=config)
        return None
    response = upload(_as_config(config), instrument, run_number, files)
    if response.status_code != requests.codes.ok:
        log.error("publish_failed: %s answered %d", response.url, response.status_code)
        response.raise_for_status()
    return response


class PlotSink(Protocol):
    """Where the worker's plots go: a :class:`Publisher`, or files (``livereduce try``)."""

    published: int
    errors: int
    last_error: str

    def submit(
        self, instrument: str, run_number: object, files: Mapping[str, Any], *, config: object
    ) -> None:
        """Queue one plot of ``instrument`` run ``run_number``; never blocks on the network."""

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait (at most ``timeout_s``) until nothing is queued; True when nothing is."""

    def close(self, timeout_s: float | None = None) -> None:
        """Send what waits (at most ``timeout_s``) and stop."""


@dataclass(frozen=True, slots=True)
class _Pending:
    instrument: str
    run_number: str
    files: Mapping[str, Any]
    config: object


class Publisher:
    """Uploads plots from its own thread; see the module docstring.

    ``send``: does one upload and returns the HTTP status (tests pass a fake);
    ``clock``: monotonic seconds. Counters: ``published``, ``errors``, ``last_error``.
    """

    def __init__(
        self,
        *,
        timeout_s: float = UPLOAD_TIMEOUT_S,
        send: Callable[[_Pending, float], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self._send = send or _send_pending
        self._clock = clock
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._busy = False
        self._closed = False
        self._wake = threading.Condition()
        self.published = 0
        self.errors = 0
        self.last_error = ""
        self._thread: threading.Thread | None = None

    def submit(
        self, instrument: str, run_number: object, files: Mapping[str, Any], *, config: object
    ) -> None:
        """Queue a plot; a newer plot of the same run replaces one that has not gone yet
        (the server keeps one plot per run, every upload replaces it)."""
        parts = {name: materialise(value) for name, value in files.items()}
        with self._wake:
            key = (str(instrument).lower(), str(run_number))
            self._pending[key] = _Pending(str(instrument), str(run_number), parts, config)
            if self._thread is None:  # started on first use: most workers never publish
                self._thread = threading.Thread(
                    target=self._run, name="livereduce-publish", daemon=True
                )
                self._thread.start()
            self._wake.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued plot was sent (or failed); at most ``timeout_s`` (default:
        the upload timeout plus a second). True when nothing is left."""
        limit = (self.timeout_s + 1.0) if timeout_s is None else timeout_s
        deadline = self._clock() + limit
        with self._wake:
            while self._pending or self._busy:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.1))
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Send what waits (at most ``timeout_s``), then end the thread."""
        self.flush(timeout_s)
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed and not self._pending:
                    return
                key = next(iter(self._pending))
                item = self._pending.pop(key)
                self._busy = True
            self._deliver(item)
            with self._wake:
                self._busy = False
                self._wake.notify_all()

    def _deliver(self, item: _Pending) -> None:
        where = f"{item.instrument} run {item.run_number}"
        try:
            status = self._send(item, self.timeout_s)
        except (PublishError, requests.RequestException, OSError, ValueError) as error:
            self._failed(f"cannot publish the plot of {where}: {error}")
            return
        if status != requests.codes.ok:
            hint = " (wrong publisher_username/publisher_password?)" if status == 401 else ""
            self._failed(f"publishing the plot of {where}: the server answered {status}{hint}")
            return
        self.published += 1
        log.info("plot_published: %s", where)

    def _failed(self, message: str) -> None:
        self.errors += 1
        self.last_error = message[-500:]
        log.warning("publish_failed: %s", message)


def materialise(value: Any) -> Any:
    """A file part's content now: a script may close its file as soon as publish_plot returns.
    Takes what requests takes: text, bytes, a file object, or ``(name, content[, type])``."""
    if hasattr(value, "read"):
        return value.read()
    if isinstance(value, tuple) and len(value) >= 2 and hasattr(value[1], "read"):
        return (value[0], value[1].read(), *value[2:])
    return value


def _send_pending(item: _Pending, timeout_s: float) -> int:
    response = upload(
        _as_config(item.config), item.instrument, item.run_number, item.files, timeout_s=timeout_s
    )
    return response.status_code


def install(publisher: PlotSink | None) -> PlotSink | None:
    """Make :func:`publish_plot` queue on ``publisher`` (None: post at once). Returns the one
    installed before."""
    global _installed
    previous, _installed = _installed, publisher
    return previous


def installed() -> PlotSink | None:
    """The publisher :func:`publish_plot` queues on, if any."""
    return _installed


def _axis(title: str, log_scale: bool) -> dict[str, Any]:
    axis: dict[str, Any] = {
        "title": {"text": title},
        "zeroline": False,
        "exponentformat": "power",
        "showexponent": "all",
        "showgrid": True,
        "showline": True,
        "mirror": "all",
        "ticks": "inside",
    }
    if log_scale:
        axis["type"] = "log"
    return axis


def _listify(values: Any) -> Any:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def plot1d(  # noqa: PLR0917 - plot_publisher's signature, called positionally by SNS scripts
    run_number: object,
    data_list: Sequence[Any],
    data_names: Sequence[str] | None = None,
    x_title: str = "",
    y_title: str = "",
    x_log: bool = False,
    y_log: bool = False,
    instrument: str = "",
    show_dx: bool = True,
    title: str = "",
    publish: bool = True,
) -> Any:
    """plot_publisher's ``plot1d``: ``data_list`` is ``[x, y]`` or a list of traces
    ``[x, y[, dy[, dx]]]``; ``data_names`` one legend entry per trace. Publishes the figure's
    div (returns what :func:`publish_plot` returns, None when that failed) or, with
    ``publish=False``, returns the div."""
    if not isinstance(data_list, list | tuple):
        raise TypeError("plot1d: data_list is expected to be a list")
    names = list(data_names) if data_names is not None else []
    single = len(data_list) == 2 and not isinstance(data_list[0], list | tuple)
    traces_in = [data_list] if single else list(data_list)
    traces = []
    for i, trace in enumerate(traces_in):
        out: dict[str, Any] = {
            "type": "scatter",
            "x": _listify(trace[0]),
            "y": _listify(trace[1]),
            "name": names[i] if len(names) == len(traces_in) else "",
        }
        if len(trace) >= 3:
            out["error_y"] = {"type": "data", "array": _listify(trace[2]), "visible": True}
        if len(trace) >= 4:
            out["error_x"] = {"type": "data", "array": _listify(trace[3]), "visible": True}
            if not show_dx:
                out["error_x"]["thickness"] = 0
        traces.append(out)
    layout = _layout(title, _axis(x_title, x_log), _axis(y_title, y_log), height=400)
    layout["showlegend"] = len(names) == len(traces_in) and bool(names)
    return _publish_or_return(instrument, run_number, {"data": traces, "layout": layout}, publish)


def plot_heatmap(  # noqa: PLR0917 - plot_publisher's signature
    run_number: object,
    x: Any,
    y: Any,
    z: Any,
    x_title: str = "",
    y_title: str = "",
    surface: bool = False,
    x_log: bool = False,
    y_log: bool = False,
    instrument: str = "",
    title: str = "",
    publish: bool = True,
) -> Any:
    """plot_publisher's ``plot_heatmap``: ``z`` (rows along ``y``) over ``x`` and ``y``; a
    3-D surface with ``surface``. Publishes or returns the div as :func:`plot1d` does."""
    trace = {
        "type": "surface" if surface else "heatmap",
        "x": _listify(x),
        "y": _listify(y),
        "z": _listify(z),
        "autocolorscale": False,
        "colorscale": "Jet",
    }
    layout = _layout(title, _axis(x_title, x_log), _axis(y_title, y_log), height=500)
    return _publish_or_return(instrument, run_number, {"data": [trace], "layout": layout}, publish)


def _layout(title: str, xaxis: dict[str, Any], yaxis: dict[str, Any], *, height: int) -> dict:
    """plot_publisher's figure layout: 600 pixels wide, ``height`` high."""
    return {
        "autosize": True,
        "width": 600,
        "height": height,
        "margin": {"t": 40, "b": 40, "l": 80, "r": 40},
        "hovermode": "closest",
        "xaxis": xaxis,
        "yaxis": yaxis,
        "title": {"text": title},
    }


def _publish_or_return(
    instrument: str, run_number: object, figure: dict[str, Any], publish: bool
) -> Any:
    from livereduce.worker.outputs.figures import figure_div  # noqa: PLC0415 - plotly is heavy

    div = figure_div(figure)
    if not publish:
        return div
    try:
        return publish_plot(instrument, run_number, files={"file": div})
    except (PublishError, requests.RequestException) as error:
        log.error("publish_failed: %s", error)
        return None
