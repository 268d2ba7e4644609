"""STAND-IN for tests, not Mantid: ``mantid.utils``."""
