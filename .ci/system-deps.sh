#!/usr/bin/env bash
# System packages the tests need (test_systemd.py: systemd-nspawn, and dbus, polkitd and
# logrotate run inside the container; test_rpm.py: rpmbuild, rpm2archive and the rpm Python
# bindings that PyPI's rpmlint uses; test_publishing.py: PostgreSQL for the real
# live_data_server; test_view.py: a headless Chromium). Idempotent: apt-get runs only when a
# package is missing, and then updates its lists once.
set -euo pipefail

packages=(systemd systemd-container dbus polkitd rpm python3-rpm logrotate postgresql chromium)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
