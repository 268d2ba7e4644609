#!/usr/bin/env bash
# Builds the python-livereduce and python-livereduce-watchdog RPMs (and the source RPM) from
# this checkout into dist/, or into the folder given with --outdir. With --lint, rpmlint then
# checks them; the only message it is told to ignore is no-signature, since packages are
# signed with the site's key when they enter its repository, not here.
#
# On a host without the systemd RPM macros (Debian's rpm has neither them nor the Python
# ones), the macros livereduce.spec uses are defined here as systemd's macros.systemd defines
# them, and BuildRequires are not checked (they name RPM packages such a host cannot have).
set -euo pipefail

die() {
    echo "rpmbuild.sh: $*" >&2
    exit 2
}

outdir=dist
lint=no
while [ $# -gt 0 ]; do
    case $1 in
        --outdir) [ $# -ge 2 ] || die "--outdir needs a folder"; outdir=$2; shift 2 ;;
        --lint) lint=yes; shift ;;
        -h | --help) echo "usage: $0 [--outdir DIR] [--lint]"; exit 0 ;;
        *) die "unknown argument '$1' (usage: $0 [--outdir DIR] [--lint])" ;;
    esac
done

cd "$(dirname "$(readlink -f "$0")")"
command -v rpmbuild >/dev/null || die "rpmbuild not found (Debian: apt-get install rpm; RHEL: dnf install rpm-build)"
python=${PYTHON:-python3}
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])') ||
    die "cannot read the version from pyproject.toml with $python (needs Python >= 3.11)"

top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS} "$outdir"

files=(src/livereduce scripts/livereduce.sh scripts/livereduce.py scripts/livereduce_watchdog.sh
    livereduce.service livereduce_watchdog.service 50-snsdata-livereduce.rules
    livereduce.conf.example pixi.toml pyproject.toml docs livereduce.spec)
for file in README.md LICENSE; do
    [ -e "$file" ] && files+=("$file")
done
for file in "${files[@]}"; do
    [ -e "$file" ] || die "$file is missing from the checkout"
done
tar --exclude=__pycache__ --exclude='*.pyc' --transform "s,^,livereduce-$version/," \
    -czf "$top/SOURCES/livereduce-$version.tar.gz" "${files[@]}"

args=(--define "_topdir $top" --define "livereduce_version $version")
if [ -z "$(rpm --eval '%{?packager}')" ]; then
    args+=(--define "packager ${LIVEREDUCE_PACKAGER:-livereduce developers}")
fi
if [ -z "$(rpm --eval '%{?_unitdir}')" ]; then
    macros=$top/macros.systemd
    cat >"$macros" <<'MACROS'
%_unitdir /usr/lib/systemd/system
%_systemd_update_helper /usr/lib/systemd/systemd-update-helper
%systemd_requires \
Requires(post): systemd \
Requires(preun): systemd \
Requires(postun): systemd \
%{nil}
%systemd_post() \
if [ $1 -eq 1 ] && [ -x "%{_systemd_update_helper}" ]; then \
    # Initial installation \
    %{_systemd_update_helper} install-system-units %{?*} || : \
fi \
%{nil}
%systemd_preun() \
if [ $1 -eq 0 ] && [ -x "%{_systemd_update_helper}" ]; then \
    # Package removal, not upgrade \
    %{_systemd_update_helper} remove-system-units %{?*} || : \
fi \
%{nil}
%systemd_postun_with_restart() \
if [ $1 -ge 1 ] && [ -x "%{_systemd_update_helper}" ]; then \
    # Package upgrade, not uninstall \
    %{_systemd_update_helper} mark-restart-system-units %{?*} || : \
fi \
%{nil}
MACROS
    args+=(--load "$macros" --nodeps)
fi

# rpmlint wants the spec file named after the package.
cp livereduce.spec "$top/SPECS/python-livereduce.spec"
rpmbuild -ba "${args[@]}" "$top/SPECS/python-livereduce.spec" >"$top/build.log" 2>&1 || {
    tail -n 40 "$top/build.log" >&2
    die "rpmbuild failed (last lines above)"
}
built=()
for rpm in "$top"/RPMS/noarch/*.rpm "$top"/SRPMS/*.rpm; do
    cp "$rpm" "$outdir"/
    built+=("$outdir/$(basename "$rpm")")
    echo "$outdir/$(basename "$rpm")"
done
if [ "$lint" = yes ]; then
    command -v rpmlint >/dev/null || die "rpmlint not found (pip install rpmlint rpm)"
    echo 'Filters = ["no-signature"]' >"$top/rpmlint.toml"
    rpmlint -c "$top/rpmlint.toml" "${built[@]}"
fi
