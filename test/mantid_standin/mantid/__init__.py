"""STAND-IN for tests, not Mantid: see test/mantid_standin/README.md.

Only the calls livereduce's Mantid engine makes exist here; each is recorded.
"""

__version__ = "0.0.0+standin"
STANDIN = True
