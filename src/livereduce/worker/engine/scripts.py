"""Runs the instrument scientist's processing and post-processing scripts.

The contract (DESIGN.md, "The embedded engine's contract with scripts"): a script runs with the
globals ``input`` (the chunk, or the accumulation for post-processing), ``output`` (None until
the script assigns a scipp DataArray, Dataset, DataGroup or Variable), ``workspaces`` (a dict
that survives between chunks of one worker: Mantid's ADS), ``run`` (:class:`RunContext`),
``monitors`` (monitor name -> events) and ``logger``. Mantid's RunPythonScript gives the same
names (mantid-live-data.md §2.5). The post-processing script's ``input`` and ``monitors`` are
read-only views of the accumulation (:func:`~livereduce.worker.engine.accumulation.read_only`),
and ``run.logs`` are read-only in both scripts: changing them in place fails the script with
:data:`READ_ONLY_HINT` in its message.

A script's failure is a value, not an exception (STYLE.md §10): a SyntaxError, anything the
script raises (any BaseException: KeyboardInterrupt, SystemExit with any code, GeneratorExit as
well as every Exception) or an ``output`` of the wrong type gives a :class:`ScriptFailure` naming
the script file and line, and the caller loses that chunk only. The one exception that passes
through is :class:`~livereduce.worker.stop.StopRequested`: the worker's own stop, raised into a
running script so that a stop does not wait for it (issue 15.3).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import traceback
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import CodeType, TracebackType
from typing import Any

import scipp as sc

from livereduce.scriptfile import ScriptCompileError, compile_script
from livereduce.worker.stop import StopRequested

SCIPP_OUTPUT_TYPES = (sc.DataArray, sc.Dataset, sc.DataGroup, sc.Variable)
"""What a script may assign to ``output``: anything the accumulation and the HDF5 writer take."""


READ_ONLY_HINT = (
    "the accumulation (post-processing input and monitors) and run.logs are read-only:"
    " change a copy, e.g. data = input.copy()"
)
"""Added to the failure of a script that changed one of them in place."""

_READ_ONLY = ("Read-only flag is set", "destination is read-only", "array is read-only")
"""How scipp (VariableError, DataArrayError) and numpy (ValueError) say an object is read-only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunContext:
    """The ``run`` global: ``number`` (0 outside a run), ``title``, ``start_time`` (UTC),
    ``instrument``, ``experiment`` (the proposal, e.g. ``IPTS-19996``) and ``logs`` (name ->
    DataArray over ``time``: every log value received for this run so far, e.g.
    ``run.logs['proton_charge']``).

    SNS scripts' names for the same (docs/scripts-from-mantid.md): ``run_number``,
    ``experiment_identifier``, ``proton_charge`` (pC so far), ``sequence_number`` and
    ``sequence_total`` (REF_L / REF_M "Sequence N of M": the last value of those DAS logs).
    """

    number: int = 0
    title: str = ""
    start_time: datetime | None = None
    instrument: str = ""
    experiment: str = ""
    logs: Mapping[str, sc.DataArray] = field(default_factory=dict)

    @property
    def run_number(self) -> int:
        """The run number, 0 between runs."""
        return self.number

    @property
    def experiment_identifier(self) -> str:
        """The experiment (IPTS) identifier, empty when the stream has not said it."""
        return self.experiment

    @property
    def proton_charge(self) -> float | None:
        """Proton charge of the run so far in pC (the sum of the per-pulse ``proton_charge``
        log, picoCoulombs at SNS); None when no such log arrived."""
        log = self.logs.get("proton_charge")
        if log is None or log.size == 0:
            return None
        total = log.data.sum()
        if total.unit is not None and total.unit != sc.units.dimensionless:
            with contextlib.suppress(sc.UnitError):
                return float(total.to(unit="pC").value)
        return float(total.value)

    @property
    def sequence_number(self) -> int | None:
        """This run's place in its sequence (1-based), None when not part of one."""
        return self._last_int("sequence_number", ":Sequence:Num")

    @property
    def sequence_total(self) -> int | None:
        """Runs in the sequence, None when not part of one."""
        return self._last_int("sequence_total", ":Sequence:Total")

    def _last_int(self, name: str, pv_suffix: str) -> int | None:
        """The last value of log ``name``, else of the PV ending in ``pv_suffix`` (the stream
        may carry the PV's own name, e.g. ``BL4B:CS:Autoreduce:Sequence:Num``, where the NeXus
        file has the alias)."""
        log = self.logs.get(name)
        if log is None:
            log = next((v for k, v in self.logs.items() if k.endswith(pv_suffix)), None)
        if log is None or log.size == 0:
            return None
        try:
            return int(log.values[-1])
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptFailure:
    """Why a script lost its chunk: ``script`` file, ``line`` in it (None when unknown),
    ``message`` (one line, ``ErrorType: text``) and the ``traceback`` as formatted text."""

    script: Path
    line: int | None
    message: str
    traceback: str = ""

    def summary(self) -> str:
        """``<script>:<line>: <message>``, for logs and the status file."""
        where = f"{self.script}:{self.line}" if self.line is not None else str(self.script)
        return f"{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What a script run gave: ``output`` (a scipp object) or ``failure``."""

    output: Any = None
    failure: ScriptFailure | None = None


class ScriptRunner:
    """Runs one script file, read and compiled once, when the runner is made.

    The worker makes its runners at start and the supervisor restarts the worker when a script
    changes (after the save has gone quiet), so a half-written save is never loaded and every
    chunk of one worker runs the same code.

    ``path``: the script; ``role``: 'processing' or 'post-processing' (for messages);
    ``workspaces``: the dict shared by both scripts of one worker.
    """

    def __init__(self, path: Path, role: str, workspaces: MutableMapping[str, Any]) -> None:
        self.path = Path(path)
        self.role = role
        self._workspaces = workspaces
        self._logger = logging.getLogger(f"livereduce.script.{self.path.stem}")
        self._code: CodeType | None = None
        self._load_failure = self._load()

    def _load(self) -> ScriptFailure | None:
        try:
            source = self.path.read_bytes()
        except OSError as error:
            return ScriptFailure(
                script=self.path, line=None, message=f"cannot read the {self.role} script: {error}"
            )
        try:
            self._code = compile_script(source, self.path)
        except ScriptCompileError as error:
            return ScriptFailure(
                script=self.path, line=error.line, message=error.message, traceback=error.detail
            )
        return None

    def run(self, data: Any, run: RunContext, monitors: Mapping[str, sc.DataArray]) -> ScriptResult:
        """Execute the script on ``data`` (the ``input`` global). Never raises for a fault of
        the script, whatever it raises; returns its ``output`` or the failure. Raises
        StopRequested when the worker's stop interrupted the script."""
        if self._code is None:  # not compiled: _load_failure says why
            return ScriptResult(failure=self._load_failure)
        namespace: dict[str, Any] = {
            # SNS scripts guard their body with `if __name__ == "__main__":`, as Mantid runs them.
            "__name__": "__main__",
            "__file__": str(self.path),
            "__builtins__": builtins,
            "input": data,
            "output": None,
            "workspaces": self._workspaces,
            "run": run,
            "monitors": monitors,
            "logger": self._logger,
        }
        try:
            exec(self._code, namespace)  # noqa: S102 - running the user's script is the job
        except StopRequested:
            raise
        except BaseException as error:  # noqa: BLE001 - whatever a script raises loses one chunk
            return ScriptResult(failure=self._failure_from(error))
        output = namespace.get("output")
        if not isinstance(output, SCIPP_OUTPUT_TYPES):
            got = (
                "nothing (output was not assigned)"
                if output is None
                else f"a value of type {type(output).__name__}"
            )
            return ScriptResult(
                failure=ScriptFailure(
                    script=self.path,
                    line=None,
                    message=f"the {self.role} script must assign a scipp DataArray, Dataset, "
                    f"DataGroup or Variable to 'output', got {got}",
                )
            )
        return ScriptResult(output=output)

    def _failure_from(self, error: BaseException) -> ScriptFailure:
        # Drop our own frames: the traceback starts at the script's module level.
        tb: TracebackType | None = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != str(self.path):
            tb = tb.tb_next
        line = None
        walk = tb
        while walk is not None:
            if walk.tb_frame.f_code.co_filename == str(self.path):
                line = walk.tb_lineno
            walk = walk.tb_next
        text = "".join(traceback.format_exception(type(error), error, tb)).rstrip()
        message = (
            "".join(traceback.format_exception_only(type(error), error)).strip().splitlines()[-1]
        )
        if any(text in message for text in _READ_ONLY):
            message += f" ({READ_ONLY_HINT})"
        return ScriptFailure(script=self.path, line=line, message=message, traceback=text)
