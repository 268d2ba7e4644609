"""The run a supervisor hands to the next supervisor: ``<output_dir>/.livereduce.resume``.

Within one supervisor the unfinished run (``Resume``, protocol.py) passes from worker to worker
in memory. A supervisor that exits (a configuration change, a stop, a crash, systemd's restart)
would take it along, and the next one would start from the current run only, losing a run that
ended just before (issue 9: whatever a restart does, each run's result is kept). So the
supervisor keeps the run it would hand on in this file, beside the results (``output_dir`` is
persistent under systemd, ``/run`` is not), and a new supervisor takes it over when the file is
recent: an old handover would make the SMS replay runs long past.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from livereduce.atomic import write_atomically
from livereduce.protocol import Resume

log = logging.getLogger(__name__)

HANDOVER_NAME = ".livereduce.resume"

HANDOVER_MAX_AGE_S = 600.0
"""A handover older than this is ignored: a restart by systemd (``RestartSec=10``) or by hand
takes far less; after longer, the SMS would first replay every run since."""

HANDOVER_REFRESH_S = 60.0
"""While a run is unfinished the supervisor rewrites the file at least this often, so that its
age says when a supervisor last held it (a run may stay unfinished for hours)."""


def handover_path(output_dir: Path) -> Path:
    """The handover file of ``output_dir``."""
    return output_dir / HANDOVER_NAME


def read_handover(output_dir: Path, *, now: float | None = None) -> Resume | None:
    """The run the previous supervisor left unfinished, or None: no file, a file older than
    HANDOVER_MAX_AGE_S, or one that cannot be read (logged, never raised)."""
    path = handover_path(output_dir)
    now = time.time() if now is None else now
    try:
        age_s = now - path.stat().st_mtime
        if age_s > HANDOVER_MAX_AGE_S:
            log.info(
                "resume_too_old: %s was written %.0f s ago (more than %.0f s): not taken over",
                path, age_s, HANDOVER_MAX_AGE_S,
            )  # fmt: skip
            return None
        return Resume.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        log.warning("resume_unreadable: %s cannot be used: %s", path, error)
        return None


def write_handover(output_dir: Path, resume: Resume | None) -> None:
    """Keep ``resume`` for the next supervisor (None removes the file). Raises OSError."""
    path = handover_path(output_dir)
    if resume is None:
        path.unlink(missing_ok=True)
        return
    text = json.dumps(resume.to_json()) + "\n"
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
