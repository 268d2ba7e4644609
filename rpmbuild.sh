#!/usr/bin/env bash
# Builds the python-livereduce and python-livereduce-watchdog RPMs (and the source RPM) from
# this checkout into dist/, or into the folder given with --outdir. With --lint, rpmlint then
# checks them with the filters below, each with its reason.
#
# The spec that gets built (and goes into the source RPM) starts with the version from
# pyproject.toml, so `rpmbuild --rebuild` of the source RPM needs nothing from this script.
# The manual pages are generated here from the commands' argparse parsers (argparse-manpage,
# from the test extra) and shipped in the tarball.
#
# On a host without the systemd RPM macros (Debian's rpm has neither them nor the Python
# ones), the macros livereduce.spec uses are defined here after systemd's macros.systemd,
# calling systemctl directly where systemd-update-helper is missing, and BuildRequires are not
# checked (they name RPM packages such a host cannot have).
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
"$python" -c 'import argparse_manpage' 2>/dev/null ||
    die "argparse-manpage is missing for $python (pip install -e '.[test]')"

top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS} "$outdir"

files=(src/livereduce scripts/livereduce.sh scripts/livereduce.py scripts/livereduce_watchdog.sh
    livereduce.service livereduce_watchdog.service 50-snsdata-livereduce.rules
    livereduce.conf.example packaging test/reduce_FAKE_live_proc.py
    test/reduce_FAKE_live_post_proc.py pyproject.toml README.md LICENSE docs livereduce.spec)
for file in "${files[@]}"; do
    [ -e "$file" ] || die "$file is missing from the checkout"
done
stage=$top/livereduce-$version
mkdir -p "$stage/man"
tar --exclude=__pycache__ --exclude='*.pyc' -cf - "${files[@]}" | tar -xf - -C "$stage"

# page name, module, parser function, what the page's NAME line says
manpages=(
    "livereduce.py livereduce.cli _parser keep the live reduction of a neutron data stream running"
    "livereduce.sh livereduce.cli _parser run livereduce.py in the Python environment the configuration names"
    "livereduce_watchdog.sh livereduce.watchdog _parser restart livereduce.service when it stalls"
)
for entry in "${manpages[@]}"; do
    read -r page module function description <<<"$entry"
    PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} "$python" -c "import sys; from argparse_manpage.cli import main; sys.exit(main())" \
        --module "$module" --function "$function" --prog "$page" --version "$version" \
        --project-name livereduce --description "$description" --manual-section 1 \
        --manual-title "livereduce manual" --output "$stage/man/$page.1" ||
        die "cannot generate the manual page of $page from $module.$function"
done
tar -czf "$top/SOURCES/livereduce-$version.tar.gz" -C "$top" "livereduce-$version"
cp packaging/livereduce.sysusers packaging/livereduce.tmpfiles "$top/SOURCES/"

args=(--define "_topdir $top")
if [ -z "$(rpm --eval '%{?packager}')" ]; then
    args+=(--define "packager ${LIVEREDUCE_PACKAGER:-livereduce developers}")
fi
if [ -z "$(rpm --eval '%{?_unitdir}')" ]; then
    args+=(--load packaging/macros.systemd --nodeps)
fi

# rpmlint wants the spec file named after the package.
spec=$top/SPECS/python-livereduce.spec
{
    echo "%global livereduce_version $version"
    cat livereduce.spec
} >"$spec"
rpmbuild -ba "${args[@]}" "$spec" >"$top/build.log" 2>&1 || {
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
    cat >"$top/rpmlint.toml" <<'LINT'
# MIT is the SPDX name of LICENSE; rpmlint's own list is empty without a distribution's.
ValidLicenses = ["MIT"]
# RHEL's brp-compress (and %install here) compress manual pages with gzip
CompressExtension = "gz"
Filters = [
    # packages are signed with the site's key when they enter its repository, not here
    "no-signature",
    # BuildRoot has been ignored since rpm 4.6; rpm sets it
    "no-buildroot-tag",
    # Source0 is made from the checkout by rpmbuild.sh: there is nothing to download
    "invalid-url Source0",
    # the project has no public home yet; the documentation is installed with the package
    "no-url-tag",
    # the log folder belongs to snsdata, the service's account from the package's sysusers.d
    "non-standard-uid /var/log/SNS_applications snsdata",
    # only the Debian build host lacks a spell checker; nothing to check
    "unable to init enchant",
]
LINT
    rpmlint -c "$top/rpmlint.toml" "${built[@]}"
fi
