"""Logging for both processes. (Interim: the supervisor issue completes it.)"""

from __future__ import annotations

import logging
import sys

from livereduce.config import Config

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(config: Config, *, process: str) -> None:
    """Configure the root logger once, in the entry point of ``process`` ('supervisor' or
    'worker')."""
    del config, process
    logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stderr, force=True)
