"""The module names SNS scripts import ``publish_plot`` from, where the real packages are absent.

SNS post-processing scripts say ``from plot_publisher import publish_plot`` (today),
``from finddata.publish_plot import publish_plot`` or
``from postprocessing.publish_plot import publish_plot`` (older). Neither package is on PyPI
(ecosystem.md "SNS: publish_plot"), so :func:`install_compat_modules` registers those names in
``sys.modules`` as livereduce's own :mod:`livereduce.worker.outputs.publishing` (``publish_plot``,
``plot1d``, ``plot_heatmap``), for each top-level package that cannot be imported here. A real
package that is installed is left alone. The worker calls it before it runs any script, so
scripts of both engines find the names.
"""

from __future__ import annotations

import importlib.util
import sys
import types

from livereduce.worker.outputs import publishing

PACKAGES = {
    "plot_publisher": None,
    "finddata": "publish_plot",
    "postprocessing": "publish_plot",
}
"""Top-level package -> the submodule holding ``publish_plot`` (None: the package itself)."""

EXPORTS = ("publish_plot", "plot1d", "plot_heatmap")


def _module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, f"livereduce's stand-in for {name} (publish_plot)")
    for export in EXPORTS:
        setattr(module, export, getattr(publishing, export))
    module.__dict__["__all__"] = list(EXPORTS)
    return module


def _importable(name: str) -> bool:
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def install_compat_modules() -> list[str]:
    """Register the stand-ins for the packages that are not importable; returns the module
    names registered (empty when every real package is installed). Safe to call twice."""
    added = []
    for package, submodule in PACKAGES.items():
        if _importable(package):
            continue
        top = _module(package)
        top.__path__ = []  # a package, so that 'import finddata.publish_plot' works
        sys.modules[package] = top
        added.append(package)
        if submodule is not None:
            full = f"{package}.{submodule}"
            sys.modules[full] = _module(full)
            setattr(top, submodule, sys.modules[full])
            added.append(full)
    return added
