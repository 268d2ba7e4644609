#!/usr/bin/env python3
"""Entry point that systemd's launcher (scripts/livereduce.sh) runs: ``livereduce.py [CONFIG]``.

Works from a checkout after ``pip install -e .`` (or any install of the package).
"""

import sys
from pathlib import Path

# This file has the package's name: with its folder first on sys.path, `import livereduce`
# would find this script instead of the package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from livereduce.cli import main  # noqa: E402 - needs the path fixed first

if __name__ == "__main__":
    sys.exit(main())
