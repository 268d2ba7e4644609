"""The configuration: one frozen dataclass read from a JSON file, every error naming its key.

The file is the predecessor's ``/etc/livereduce.conf`` (reference: upstream-livereduce.md §1):
its keys keep their names and defaults. Keys new in livereduce are documented in
``docs/configuration.md``. Reading is strict where the predecessor was silent: a wrong type or
value, a missing file named on the command line or bad JSON raise :class:`ConfigError`, which
the command line turns into one message and exit status 2; unknown keys give a warning.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, overload

from livereduce.address import parse_host_port
from livereduce.instruments import Instrument, find_instrument

DEFAULT_CONFIG_PATH = Path("/etc/livereduce.conf")
MANTID_PROPERTIES = (
    Path("/etc/mantid.local.properties"),
    Path("~/.mantid/Mantid.user.properties"),
)
"""Where Mantid keeps ``default.instrument``; later files override earlier ones, as in Mantid."""

MIN_WATCHDOG_THRESHOLD_S = 20
"""The predecessor's lower bound for ``watchdog.threshold``: below it, ordinary log gaps trip it."""

MANTID_CHUNK = "LoadLiveData"
"""A report's ``in_script`` while the Mantid engine runs a chunk (Mantid's LoadLiveData runs the
processing script, the accumulation and the post-processing script in one go)."""


class ConfigError(Exception):
    """A configuration that cannot be used. ``str()`` names the file, the key and what is allowed.

    Attributes: ``path`` (the file, or None for built-in defaults), ``key`` (dotted key name,
    or None for whole-file problems), ``problem`` (what is wrong and what is allowed).
    """

    def __init__(self, path: Path | None, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        where = f"configuration file {path}" if path else "built-in configuration"
        super().__init__(f"{where}: key '{key}': {problem}" if key else f"{where}: {problem}")


class Engine(StrEnum):
    """Which engine the worker runs: Mantid when it imports (``auto``), or the one named."""

    AUTO = "auto"
    EMBEDDED = "embedded"
    MANTID = "mantid"


class ListenerKind(StrEnum):
    """Where chunks come from: the SNS ADARA stream, a synthetic stream, a NeXus file, or
    Kafka (ESS, ISIS)."""

    ADARA = "adara"
    FAKE = "fake"
    NEXUS = "nexus"
    KAFKA = "kafka"


class AccumulationMethod(StrEnum):
    """StartLiveData's AccumulationMethod (mantid-live-data.md §1, §2.3 step 8)."""

    ADD = "Add"
    REPLACE = "Replace"
    APPEND = "Append"


class RunTransitionBehavior(StrEnum):
    """StartLiveData's RunTransitionBehavior (mantid-live-data.md §2.4)."""

    RESTART = "Restart"
    STOP = "Stop"
    RENAME = "Rename"


class StartFrom(StrEnum):
    """Where live data starts: the start of the current run (the predecessor's FromStartOfRun)
    or now (FromNow)."""

    START_OF_RUN = "start_of_run"
    NOW = "now"


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogSettings:
    """The external watchdog's ``watchdog.interval`` and ``watchdog.threshold`` (seconds)."""

    interval: int = 60
    threshold: int = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The effective configuration. Times are in seconds, memory in percent of the limit.

    ``path`` is the file it came from (None: built-in defaults); ``raw`` is the parsed JSON
    object, kept so the worker process can be handed exactly what the supervisor read;
    ``given`` holds the top-level keys the file sets (a ``null`` value counts as not set, as
    it does for every key's default): where a given key means something other than its
    default (e.g. ``status_file``, Mantid's ``listener``), ask ``"key" in config.given``.
    """

    path: Path | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    given: frozenset[str] = frozenset()
    instrument: Instrument
    script_dir: Path
    update_every: float = 30.0
    preserve_events: bool = True
    accum_method: AccumulationMethod = AccumulationMethod.ADD
    periods: tuple[int, ...] | None = None
    spectra: tuple[int, ...] | None = None
    post_process: bool = True
    system_mem_limit_perc: float = 70.0
    mem_check_interval_sec: float = 0.1
    conda_env: str | None = None
    pixi_env: str | None = None
    venv: str | None = None
    watchdog: WatchdogSettings = WatchdogSettings()
    engine: Engine = Engine.AUTO
    listener: ListenerKind = ListenerKind.ADARA
    address: str = ""
    listener_options: Mapping[str, Any] = field(default_factory=dict)
    start_from: StartFrom = StartFrom.START_OF_RUN
    run_transition: RunTransitionBehavior = RunTransitionBehavior.RESTART
    output_workspace: str = "result"
    output_dir: Path = Path()
    status_file: Path = Path()
    log_file: Path | None = None
    poll_interval_sec: float = 10.0
    heartbeat_timeout_sec: float | None = None
    stop_timeout: float = 20.0
    progress_every_sec: float = 60.0
    proc_script_timeout_sec: float | None = None
    post_proc_script_timeout_sec: float | None = None
    publish_config: Path | None = None
    publish_every_sec: float | None = None
    publish_timeout_sec: float = 10.0
    view_address: str = ""

    @property
    def proc_script(self) -> Path:
        """``<script_dir>/reduce_<SHORT>_live_proc.py``, run on every chunk."""
        return self.script_dir / f"reduce_{self.instrument.short_name}_live_proc.py"

    @property
    def post_proc_script(self) -> Path:
        """``<script_dir>/reduce_<SHORT>_live_post_proc.py``, run on the accumulation."""
        return self.script_dir / f"reduce_{self.instrument.short_name}_live_post_proc.py"

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds without a worker heartbeat before it is killed: the configured value, else
        ``max(3 * update_every, 60)``."""
        if self.heartbeat_timeout_sec is not None:
            return self.heartbeat_timeout_sec
        return max(3 * self.update_every, 60.0)

    @property
    def proc_script_timeout(self) -> float:
        """Seconds one run of the processing script may take before the worker counts as hung
        (``script_timeout_sec``): the configured value, else ``max(300, 3 * update_every)``."""
        if self.proc_script_timeout_sec is not None:
            return self.proc_script_timeout_sec
        return max(300.0, 3 * self.update_every)

    @property
    def post_proc_script_timeout(self) -> float:
        """The same for the post-processing script: the configured value, else
        ``max(600, 2 * update_every)`` (REF_M-style post-processing runs a whole reduction)."""
        if self.post_proc_script_timeout_sec is not None:
            return self.post_proc_script_timeout_sec
        return max(600.0, 2 * self.update_every)

    def script_timeout(self, script: str) -> float:
        """The time limit of the script file named ``script`` (a report's ``in_script``);
        for :data:`MANTID_CHUNK` (a whole chunk of the Mantid engine, both scripts included)
        the processing limit plus, with ``post_process``, the post-processing limit."""
        if script == self.post_proc_script.name:
            return self.post_proc_script_timeout
        if script == MANTID_CHUNK:
            post = self.post_proc_script_timeout if self.post_process else 0.0
            return self.proc_script_timeout + post
        return self.proc_script_timeout

    def existing_scripts(self) -> tuple[Path | None, Path | None]:
        """(proc script, post-proc script) as they are on disk now; None where a script is
        missing or empty (an empty file is what a half-finished save leaves)."""
        proc = self.proc_script if _non_empty_file(self.proc_script) else None
        post = self.post_proc_script if self.post_process else None
        return proc, post if post is not None and _non_empty_file(post) else None

    def effective(self) -> dict[str, Any]:
        """Every setting with its effective value, JSON-compatible, for the start-up log."""
        out = {}
        for name in self.__dataclass_fields__:
            if name in {"raw", "given"}:
                continue
            value = getattr(self, name)
            if name in {"instrument", "watchdog"}:
                value = asdict(value)
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[name] = value
        out["heartbeat_timeout"] = self.heartbeat_timeout
        out["proc_script_timeout"] = self.proc_script_timeout
        out["post_proc_script_timeout"] = self.post_proc_script_timeout
        return out


def _non_empty_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


KNOWN_KEYS = frozenset(
    {
        "instrument", "script_dir", "update_every", "preserve_events", "accum_method",
        "periods", "spectra", "post_process", "system_mem_limit_perc",
        "mem_check_interval_sec", "CONDA_ENV", "PIXI_ENV", "VENV", "watchdog", "engine",
        "listener", "address", "listener_options", "start_from", "run_transition",
        "output_workspace", "output_dir", "status_file", "log_file", "poll_interval_sec",
        "heartbeat_timeout_sec", "stop_timeout", "script_timeout_sec", "progress_every_sec",
        "publish_config", "publish", "view_address",
    }
)  # fmt: skip

LISTENER_OPTIONS: Mapping[ListenerKind, frozenset[str]] = {
    ListenerKind.ADARA: frozenset(
        {
            "stale_timeout_sec",
            "reconnect_max_sec",
            "connect_timeout_sec",
            "keep_paused_events",
            "buffer_bytes",
        }
    ),
    ListenerKind.FAKE: frozenset(
        {"event_rate", "pixel_count", "run_length_sec", "run_number", "seed"}
    ),
    ListenerKind.NEXUS: frozenset({"chunks", "speed"}),
    ListenerKind.KAFKA: frozenset(
        {
            "event_topics",
            "log_topics",
            "run_topic",
            "source_names",
            "kafka",
            "group_id",
            "results_topic",
            "run_end_grace_sec",
            "max_pending_events",
        }
    ),
}
"""Allowed ``listener_options`` keys per listener (documented in docs/configuration.md)."""
BOOLEAN_LISTENER_OPTIONS = frozenset({"keep_paused_events"})
"""``listener_options`` that are true or false; the others are numbers >= 0."""


def default_instrument_name(properties: tuple[Path, ...] = MANTID_PROPERTIES) -> str | None:
    """``default.instrument`` from Mantid's properties files, later files overriding earlier
    ones as Mantid does; None when no file sets it."""
    name = None
    for candidate in properties:
        path = candidate.expanduser()
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "default.instrument" and value.strip():
                name = value.strip()
    return name


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a key given twice is an error (json.loads would keep the last one
    silently, and which one an editor shows first is anybody's guess)."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def load_config(
    path: str | os.PathLike[str] | None,
    *,
    warn: Callable[[str], None] | None = None,
    check_scripts: bool = True,
    mantid_properties: tuple[Path, ...] = MANTID_PROPERTIES,
) -> Config:
    """Read the configuration file at ``path`` (None: ``/etc/livereduce.conf`` if it exists,
    else built-in defaults).

    ``warn`` receives one message per unknown key. With ``check_scripts``, at least one of the
    two processing scripts must exist in ``script_dir``.

    Raises ConfigError: the path was given but is missing or unreadable, the JSON is invalid
    or not an object, a key has a wrong type or value, or no processing script exists.
    """
    if path is None:
        chosen = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
    else:
        chosen = Path(path)
    raw: dict[str, Any] = {}
    if chosen is not None:
        chosen = chosen.absolute()
        try:
            text = chosen.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(chosen, None, "file not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(chosen, None, f"cannot be read: {error}") from None
        try:
            raw = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKeyError as error:
            raise ConfigError(chosen, error.key, "given twice; keep one") from None
        except json.JSONDecodeError as error:
            raise ConfigError(
                chosen,
                None,
                f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}",
            ) from None
        if not isinstance(raw, dict):
            raise ConfigError(chosen, None, f"must hold a JSON object, not {type(raw).__name__}")
    return config_from_mapping(
        raw, chosen, warn=warn, check_scripts=check_scripts, mantid_properties=mantid_properties
    )


def config_from_mapping(
    raw: Mapping[str, Any],
    path: Path | None,
    *,
    warn: Callable[[str], None] | None = None,
    check_scripts: bool = True,
    mantid_properties: tuple[Path, ...] = MANTID_PROPERTIES,
) -> Config:
    """Build a :class:`Config` from an already parsed JSON object; see :func:`load_config`."""
    reader = _Reader(raw, path)
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown and warn is not None:
        where = path or "built-in configuration"
        warn(f"{where}: unknown key(s) ignored: {', '.join(unknown)}")

    listener = reader.enum("listener", ListenerKind, ListenerKind.ADARA)
    address = reader.string("address", "")
    instrument = _resolve_instrument(reader, listener, address, mantid_properties)
    if not address and listener is ListenerKind.ADARA:
        address = instrument.live_address
    if listener is ListenerKind.ADARA and address:
        try:
            parse_host_port(address)
        except ValueError as error:
            reader.fail("address", str(error))
    if listener is ListenerKind.KAFKA and not address:
        reader.fail("address", "the kafka listener needs the bootstrap servers (host:port,...)")
    if listener is ListenerKind.NEXUS:
        if not address:
            reader.fail("address", "the nexus listener needs the path of a NeXus event file")
        event_file = reader.resolve(address)
        if not event_file.is_file():
            state = "is not a file" if event_file.exists() else "does not exist"
            reader.fail("address", f"NeXus event file {event_file} {state}")
        address = str(event_file)

    base = path.parent if path else Path.cwd()
    script_dir = reader.path("script_dir", Path(f"/SNS/{instrument.short_name}/shared/livereduce"))
    output_dir = reader.path(
        "output_dir", Path(os.environ.get("STATE_DIRECTORY", base / "livereduce-output"))
    )
    runtime_dir = os.environ.get("RUNTIME_DIRECTORY")
    default_status = (
        Path(runtime_dir) / "status.json" if runtime_dir else output_dir / "status.json"
    )
    log_file = reader.path("log_file", None)
    publish_every, publish_timeout = _publish(reader)

    config = Config(
        path=path,
        raw=dict(raw),
        given=frozenset(key for key, value in raw.items() if value is not None),
        instrument=instrument,
        script_dir=script_dir,
        update_every=reader.number("update_every", 30.0, minimum=0.0, inclusive=False),
        preserve_events=reader.boolean("preserve_events", True),
        accum_method=reader.enum("accum_method", AccumulationMethod, AccumulationMethod.ADD),
        periods=reader.int_list("periods", minimum=1),
        spectra=reader.int_list("spectra", minimum=0),
        post_process=reader.boolean("post_process", True),
        system_mem_limit_perc=reader.number(
            "system_mem_limit_perc", 70.0, minimum=0.0, maximum=100.0
        ),
        mem_check_interval_sec=reader.number(
            "mem_check_interval_sec", 0.1, minimum=0.0, inclusive=False
        ),
        conda_env=reader.optional_string("CONDA_ENV"),
        pixi_env=reader.optional_string("PIXI_ENV"),
        venv=reader.optional_string("VENV"),
        watchdog=_watchdog(reader),
        engine=reader.enum("engine", Engine, Engine.AUTO),
        listener=listener,
        address=address,
        listener_options=_listener_options(reader, listener),
        start_from=reader.enum("start_from", StartFrom, StartFrom.START_OF_RUN),
        run_transition=reader.enum(
            "run_transition", RunTransitionBehavior, RunTransitionBehavior.RESTART
        ),
        output_workspace=_workspace_name(reader),
        output_dir=output_dir,
        status_file=reader.path("status_file", default_status),
        log_file=log_file,
        poll_interval_sec=reader.number("poll_interval_sec", 10.0, minimum=0.0, inclusive=False),
        heartbeat_timeout_sec=reader.optional_number("heartbeat_timeout_sec", minimum=0.0),
        stop_timeout=reader.number("stop_timeout", 20.0, minimum=0.0, inclusive=False),
        progress_every_sec=reader.number("progress_every_sec", 60.0, minimum=0.0, inclusive=False),
        **_script_timeouts(reader),
        publish_config=reader.path("publish_config", None),
        publish_every_sec=publish_every,
        publish_timeout_sec=publish_timeout,
        view_address=_view_address(reader),
    )
    if check_scripts and config.existing_scripts() == (None, None):
        names = [config.proc_script.name]
        if config.post_process:
            names.append(config.post_proc_script.name)
        reader.fail(
            "script_dir",
            f"no processing script in {config.script_dir}: need at least one non-empty "
            + " or ".join(f"'{n}'" for n in names),
        )
    return config


def _resolve_instrument(
    reader: _Reader, listener: ListenerKind, address: str, properties: tuple[Path, ...]
) -> Instrument:
    name = reader.optional_string("instrument")
    if name is None:
        name = default_instrument_name(properties)
        if name is None:
            reader.fail(
                "instrument",
                "not set, and no default.instrument in " + " or ".join(str(p) for p in properties),
            )
    known = find_instrument(name)
    if known is not None:
        return known
    if listener is ListenerKind.ADARA and not address:
        reader.fail(
            "instrument",
            f"'{name}' is not a known SNS or HFIR instrument; set 'address' (host:port) to use it",
        )
    return Instrument(name=name, short_name=name, facility="", beamline="", live_address=address)


def _script_timeouts(reader: _Reader) -> dict[str, float | None]:
    """``script_timeout_sec``: one number for both scripts, or an object with ``processing``
    and/or ``post_processing`` (seconds, > 0)."""
    value = reader.raw.get("script_timeout_sec")
    if value is None:
        return {"proc_script_timeout_sec": None, "post_proc_script_timeout_sec": None}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"processing", "post_processing"})
        if unknown:
            reader.fail(
                "script_timeout_sec",
                f"unknown key(s) {', '.join(unknown)}; allowed: processing, post_processing",
            )
        sub = _Reader(value, reader.path_, prefix="script_timeout_sec.")
        return {
            "proc_script_timeout_sec": sub.optional_number("processing", minimum=0.0),
            "post_proc_script_timeout_sec": sub.optional_number("post_processing", minimum=0.0),
        }
    both = reader.optional_number("script_timeout_sec", minimum=0.0)
    return {"proc_script_timeout_sec": both, "post_proc_script_timeout_sec": both}


def _publish(reader: _Reader) -> tuple[float | None, float]:
    """``publish``: false/absent (scripts publish, if they do), or an object with ``every_sec``
    (publish the default figure at most this often, > 0) and ``timeout_sec`` (of one upload)."""
    value = reader.raw.get("publish")
    if value is None or value is False:
        return None, 10.0
    if not isinstance(value, Mapping):
        reader.fail("publish", f"expected false or an object with 'every_sec', got {value!r}")
    unknown = sorted(set(value) - {"every_sec", "timeout_sec"})
    if unknown:
        reader.fail(
            "publish", f"unknown key(s) {', '.join(unknown)}; allowed: every_sec, timeout_sec"
        )
    sub = _Reader(value, reader.path_, prefix="publish.")
    return (
        sub.number("every_sec", 30.0, minimum=0.0, inclusive=False),
        sub.number("timeout_sec", 10.0, minimum=0.0, inclusive=False),
    )


def _view_address(reader: _Reader) -> str:
    """``view_address``: ``""`` (off), ``PORT`` (loopback; a JSON number too) or ``HOST:PORT``;
    a port of 0 takes any free one. Returns ``HOST:PORT``."""
    raw = reader.raw.get("view_address")
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)  # "view_address": 8080 means the port, as "8080" does
    value = _Reader({"view_address": raw}, reader.path_).string("view_address", "")
    if not value:
        return ""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        reader.fail(
            "view_address",
            f"expected 'PORT' or 'HOST:PORT' with a port from 0 to 65535, got {value!r}",
        )
    return f"{host.strip('[]')}:{int(port)}"


def _watchdog(reader: _Reader) -> WatchdogSettings:
    value = reader.raw.get("watchdog")
    if value is None:
        return WatchdogSettings()
    if not isinstance(value, Mapping):
        reader.fail(
            "watchdog", f"expected an object with 'interval' and 'threshold', got {value!r}"
        )
    sub = _Reader(value, reader.path_, prefix="watchdog.")
    unknown = sorted(set(value) - {"interval", "threshold"})
    if unknown:
        sub.fail(unknown[0], "unknown key; allowed: interval, threshold")
    return WatchdogSettings(
        interval=int(sub.number("interval", 60, minimum=1, integer=True)),
        threshold=int(sub.number("threshold", 300, minimum=MIN_WATCHDOG_THRESHOLD_S, integer=True)),
    )


def _listener_options(reader: _Reader, listener: ListenerKind) -> Mapping[str, Any]:
    value = reader.raw.get("listener_options", {})
    if not isinstance(value, Mapping):
        reader.fail("listener_options", f"expected an object, got {value!r}")
    allowed = LISTENER_OPTIONS[listener]
    for key, item in value.items():
        if key not in allowed:
            reader.fail(
                f"listener_options.{key}",
                f"not an option of the {listener} listener; allowed: {', '.join(sorted(allowed))}",
            )
        if listener is ListenerKind.KAFKA:
            _check_kafka_option(reader, key, item)
        elif key in BOOLEAN_LISTENER_OPTIONS:
            if not isinstance(item, bool):
                reader.fail(f"listener_options.{key}", f"expected true or false, got {item!r}")
        elif isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
            reader.fail(f"listener_options.{key}", f"expected a number >= 0, got {item!r}")
    if listener is ListenerKind.KAFKA and not value.get("run_topic"):
        reader.fail("listener_options.run_topic", "the kafka listener needs a run topic")
    return dict(value)


def _check_kafka_option(reader: _Reader, key: str, item: Any) -> None:
    """The kafka listener's options (docs/kafka.md): topic lists, names, librdkafka
    properties and two numbers."""
    where = f"listener_options.{key}"
    if key in ("event_topics", "log_topics"):
        if not isinstance(item, list) or not all(isinstance(t, str) and t for t in item):
            reader.fail(where, f"expected a list of topic names, got {item!r}")
    elif key in ("run_topic", "group_id", "results_topic"):
        if not isinstance(item, str) or not item:
            reader.fail(where, f"expected a non-empty string, got {item!r}")
    elif key == "kafka":
        if not isinstance(item, Mapping) or not all(
            isinstance(v, str | int | float | bool) for v in item.values()
        ):
            reader.fail(where, f"expected an object of librdkafka properties, got {item!r}")
    elif key == "source_names":
        if (
            not isinstance(item, Mapping)
            or set(item) - {"events", "logs"}
            or not all(
                isinstance(v, list) and all(isinstance(n, str) for n in v) for v in item.values()
            )
        ):
            reader.fail(where, f"expected {{'events': [names], 'logs': [names]}}, got {item!r}")
    elif isinstance(item, bool) or not isinstance(item, int | float) or item <= 0:
        reader.fail(where, f"expected a number > 0, got {item!r}")


def _workspace_name(reader: _Reader) -> str:
    name = reader.string("output_workspace", "result")
    if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
        reader.fail(
            "output_workspace",
            f"expected a name of letters, digits, '_', '-' or '.', got {name!r}",
        )
    return name


@dataclass(slots=True)
class _Reader:
    """Typed access to the JSON object; every failure raises ConfigError naming the key."""

    raw: Mapping[str, Any]
    path_: Path | None
    prefix: str = ""

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(self.path_, self.prefix + key, problem)

    def _get(self, key: str) -> Any:
        return self.raw.get(key)

    def string(self, key: str, default: str) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {value!r}")
        return value

    def optional_string(self, key: str) -> str | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {value!r}")
        return value

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        inclusive: bool = True,
        integer: bool = False,
    ) -> float:
        value = self._get(key)
        if value is None:
            return default
        kind = "a whole number" if integer else "a number"
        bounds = []
        if minimum is not None:
            bounds.append(f"{'>=' if inclusive else '>'} {minimum:g}")
        if maximum is not None:
            bounds.append(f"<= {maximum:g}")
        expected = f"{kind} {' and '.join(bounds)}".strip()
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(key, f"expected {expected}, got {value!r}")
        if integer and int(value) != value:
            self.fail(key, f"expected {expected}, got {value!r}")
        too_low = minimum is not None and (value < minimum if inclusive else value <= minimum)
        if too_low or (maximum is not None and value > maximum):
            self.fail(key, f"expected {expected}, got {value!r}")
        return float(value)

    def optional_number(self, key: str, *, minimum: float) -> float | None:
        if self._get(key) is None:
            return None
        return self.number(key, 0.0, minimum=minimum, inclusive=False)

    def enum(self, key: str, kind: type[StrEnum], default: StrEnum) -> Any:
        value = self._get(key)
        if value is None:
            return default
        allowed = [member.value for member in kind]
        if value not in allowed:
            self.fail(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        return kind(value)

    def int_list(self, key: str, *, minimum: int) -> tuple[int, ...] | None:
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
        ):
            self.fail(key, f"expected a list of whole numbers >= {minimum}, got {value!r}")
        return tuple(value)

    def resolve(self, value: str) -> Path:
        """Relative paths are taken from the configuration file's folder, not the working
        directory (which is /tmp under systemd)."""
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (self.path_.parent if self.path_ else Path.cwd()) / path
        return path

    @overload
    def path(self, key: str, default: Path) -> Path: ...
    @overload
    def path(self, key: str, default: None) -> Path | None: ...
    def path(self, key: str, default: Path | None) -> Path | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a path string, got {value!r}")
        return self.resolve(value)


LAUNCHER_ENV_KEYS = ("PIXI_ENV", "CONDA_ENV", "VENV")
"""The keys naming the Python environment scripts/livereduce.sh activates; the first given wins."""


def launcher_environment(config: Config) -> tuple[str, str] | None:
    """The environment the launcher activates: ``(key, value)`` for the first of
    LAUNCHER_ENV_KEYS that ``config`` gives, or None (the launcher's own Python).

    A value that names a path (``VENV`` always, the others when they contain ``/``) is made
    absolute against the configuration file's folder, as the daemon does for its paths.
    Raises ConfigError when the value spans lines (the launcher reads one line).
    """
    values = {"PIXI_ENV": config.pixi_env, "CONDA_ENV": config.conda_env, "VENV": config.venv}
    for key in LAUNCHER_ENV_KEYS:
        value = values[key]
        if value is None:
            continue
        if "\n" in value or "\r" in value:
            raise ConfigError(config.path, key, f"expected one line, got {value!r}")
        if key == "VENV" or "/" in value:
            path = Path(value).expanduser()
            if not path.is_absolute() and config.path is not None:
                path = config.path.parent / path
            value = str(path)
        return key, value
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m livereduce.config --launcher-env CONFIG``: what scripts/livereduce.sh
    activates, as one ``KEY=VALUE`` line on stdout (nothing when no environment is named).

    The whole file is checked as the daemon checks it (scripts excepted), so the launcher
    stops at the same errors. Exit status 0, or 2 with the ConfigError on stderr. Unknown
    keys are left to the daemon to warn about.
    """
    parser = argparse.ArgumentParser(
        prog="python -m livereduce.config",
        description="Print the Python environment livereduce.sh activates for CONFIG.",
    )
    parser.add_argument("--launcher-env", metavar="CONFIG", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        config = load_config(args.launcher_env, check_scripts=False, warn=lambda _: None)
        chosen = launcher_environment(config)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    if chosen is not None:
        print(f"{chosen[0]}={chosen[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
