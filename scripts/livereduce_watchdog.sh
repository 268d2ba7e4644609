#!/bin/bash
# The launcher that livereduce_watchdog.service runs: `livereduce-watchdog [CONFIG] [options]`
# (src/livereduce/watchdog.py) on the Python livereduce was installed with. The watchdog needs
# only the standard library, so no environment is activated. Exit status 2 when no Python is
# found; otherwise the watchdog's own.
set -euo pipefail

# The RPM's %install rewrites this line to the Python the package was built for.
INSTALLED_PYTHON=python3

here=$(dirname "$(readlink -f "$0")")
for candidate in "$here/../src" "$here/../share/livereduce"; do
    if [ -f "$candidate/livereduce/watchdog.py" ]; then
        libdir=$(readlink -f "$candidate")
        export PYTHONPATH="$libdir${PYTHONPATH:+:$PYTHONPATH}"
        break
    fi
done

python=${LIVEREDUCE_PYTHON:-$INSTALLED_PYTHON}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "livereduce_watchdog.sh: Python '$python' not found (set LIVEREDUCE_PYTHON)" >&2
    exit 2
fi
exec "$python" -m livereduce.watchdog "$@"
