"""Listeners: where chunks come from (contract: :mod:`livereduce.worker.listeners.base`)."""

from __future__ import annotations

import importlib
import logging

from livereduce.config import Config
from livereduce.protocol import Resume
from livereduce.worker.listeners.base import Listener

log = logging.getLogger(__name__)


def create_listener(config: Config, resume: Resume | None = None) -> Listener:
    """The listener named by ``config.listener``, from ``livereduce.worker.listeners.<kind>``'s
    ``from_config`` (imported only when chosen, so a listener's dependencies are needed only
    when it is used). ``resume``: the run a previous worker left unfinished, handed to a
    listener module that declares ``RESUMABLE = True`` (``from_config(config, resume=...)``);
    others cannot ask their source for the past and start as configured. Raises what
    ``from_config`` raises for unusable settings (ConfigError)."""
    module = importlib.import_module(f"livereduce.worker.listeners.{config.listener.value}")
    if resume is None:
        return module.from_config(config)
    if getattr(module, "RESUMABLE", False):
        return module.from_config(config, resume=resume)
    log.warning(
        "resume_ignored: the %s listener cannot ask for the past; run %d may stay incomplete",
        config.listener.value,
        resume.run_number,
    )
    return module.from_config(config)
