"""livereduce: keeps the live reduction of a neutron instrument's data stream running."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("livereduce")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0+unknown"
