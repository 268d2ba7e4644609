"""Where the files the view page reads are; the worker and the supervisor write them.

Kept free of neutron-data imports: the supervisor process serves the page.
"""

from __future__ import annotations

from pathlib import Path

FIGURES_SUFFIX = "_figures.json"


def figures_path(output_dir: Path, output_workspace: str) -> Path:
    """``<output_dir>/<output_workspace>_figures.json``: the default figures of the output
    workspace, written by the worker (:mod:`livereduce.worker.outputs.figures`)."""
    return Path(output_dir) / f"{output_workspace}{FIGURES_SUFFIX}"
