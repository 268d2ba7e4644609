"""Subcommands of ``livereduce`` beside running the daemon: ``plot`` and ``try``."""
