"""Listeners: where chunks come from (contract: :mod:`livereduce.worker.listeners.base`)."""

from __future__ import annotations

import importlib

from livereduce.config import Config
from livereduce.worker.listeners.base import Listener


def create_listener(config: Config) -> Listener:
    """The listener named by ``config.listener``, from ``livereduce.worker.listeners.<kind>``'s
    ``from_config`` (imported only when chosen, so a listener's dependencies are needed only
    when it is used). Raises what ``from_config`` raises for unusable settings (ConfigError)."""
    module = importlib.import_module(f"livereduce.worker.listeners.{config.listener.value}")
    return module.from_config(config)
