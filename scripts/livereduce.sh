#!/bin/bash
# The launcher that livereduce.service runs: picks the Python environment named in the
# configuration file, then replaces itself (exec) with `python livereduce.py ARGS...`, so that
# systemd's signals reach the daemon directly and its sd_notify messages come from the main PID.
#
#   livereduce.sh [CONFIG [more daemon arguments]]     CONFIG defaults to /etc/livereduce.conf
#   livereduce.sh --version | --help                   in the environment of the default CONFIG
#
# Environment, first match wins (keys of the configuration file; docs/systemd.md):
#   PIXI_ENV   a pixi workspace (a folder holding pixi.toml/pyproject.toml, or the manifest file
#              itself), or the name of an environment of the manifest $LIVEREDUCE_PIXI_MANIFEST
#              (default: the pixi.toml of this checkout); activated with `pixi shell-hook`.
#   CONDA_ENV  a conda environment name or prefix; activated with conda, micromamba or mamba
#              ($CONDA_EXE first, then the first of those on PATH).
#   VENV       a virtual environment or Python installation folder; its bin/python is used.
#   (none)     $LIVEREDUCE_PYTHON, else the Python livereduce was installed with.
# A missing environment, tool or file is reported in one line on stderr, with exit status 2.
set -euo pipefail

# The RPM's %install rewrites this line to the Python the package was built for.
INSTALLED_PYTHON=python3
DEFAULT_CONFIG=/etc/livereduce.conf

die() {
    echo "livereduce.sh: $*" >&2
    exit 2
}

here=$(dirname "$(readlink -f "$0")")
daemon="$here/livereduce.py"
[ -f "$daemon" ] || die "the daemon $daemon is missing (broken installation)"

# The livereduce package: src/ in a checkout, /usr/share/livereduce when installed by the RPM.
# It goes first on PYTHONPATH so that any environment runs the code next to this launcher.
for candidate in "$here/../src" "$here/../share/livereduce"; do
    if [ -f "$candidate/livereduce/__init__.py" ]; then
        libdir=$(readlink -f "$candidate")
        export PYTHONPATH="$libdir${PYTHONPATH:+:$PYTHONPATH}"
        break
    fi
done

reader_python=${LIVEREDUCE_PYTHON:-$INSTALLED_PYTHON}
command -v "$reader_python" >/dev/null 2>&1 ||
    die "Python '$reader_python' not found (set LIVEREDUCE_PYTHON to the interpreter to use)"

if [ $# -ge 1 ] && [[ $1 != -* ]]; then
    config=$1
    [ -f "$config" ] || die "configuration file $config not found"
elif [ -f "$DEFAULT_CONFIG" ]; then
    config=$DEFAULT_CONFIG
else
    config=""
fi

pixi_env="" conda_env="" venv=""
if [ -n "$config" ]; then
    # The package checks the whole file as the daemon will and prints the environment to
    # activate, one KEY=VALUE line (relative paths taken from the configuration file's folder).
    keys=$("$reader_python" -P -m livereduce.config --launcher-env "$config") || exit 2
    while IFS='=' read -r key value; do
        case $key in
            PIXI_ENV) pixi_env=$value ;;
            CONDA_ENV) conda_env=$value ;;
            VENV) venv=$value ;;
        esac
    done <<<"$keys"
fi

activate_pixi() {
    local pixi manifest environment hook
    pixi=$(command -v pixi || true)
    if [ -z "$pixi" ] && [ -x "${HOME:-/nonexistent}/.pixi/bin/pixi" ]; then
        pixi=$HOME/.pixi/bin/pixi
    fi
    [ -n "$pixi" ] || die "PIXI_ENV '$pixi_env' is set in $config but the pixi command was not found"
    if [ -d "$pixi_env" ]; then
        manifest=$pixi_env/pixi.toml
        [ -f "$manifest" ] || manifest=$pixi_env/pyproject.toml
        environment=default
    elif [ -f "$pixi_env" ]; then
        manifest=$pixi_env
        environment=default
    else
        manifest=${LIVEREDUCE_PIXI_MANIFEST:-$here/../pixi.toml}
        environment=$pixi_env
    fi
    [ -f "$manifest" ] || die "PIXI_ENV '$pixi_env' (from $config): pixi manifest" \
        "$(readlink -m "$manifest") not found (give the workspace folder, or set LIVEREDUCE_PIXI_MANIFEST)"
    # --frozen: a start never re-solves or rewrites the lock file, but only a lock file can
    # be frozen; without one pixi solves the manifest (once, then it writes pixi.lock).
    local frozen=()
    [ -f "$(dirname "$manifest")/pixi.lock" ] && frozen=(--frozen)
    hook=$("$pixi" shell-hook --shell bash "${frozen[@]}" --manifest-path "$manifest" \
        --environment "$environment") ||
        die "PIXI_ENV '$pixi_env' (from $config): pixi could not activate environment '$environment' of $manifest"
    # Activation scripts of conda packages are not written for `set -eu`.
    set +eu
    eval "$hook"
    set -eu
}

activate_conda() {
    local tool="" candidate hook
    for candidate in "${CONDA_EXE:-}" conda micromamba mamba; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1; then
            tool=$candidate
            break
        fi
    done
    [ -n "$tool" ] ||
        die "CONDA_ENV '$conda_env' is set in $config but none of conda, micromamba, mamba was found"
    if [ "$(basename "$tool")" = conda ]; then
        hook=$("$tool" shell.bash hook) || die "'$tool shell.bash hook' failed"
    else
        hook=$("$tool" shell hook --shell bash) || die "'$tool shell hook --shell bash' failed"
    fi
    set +eu
    eval "$hook"
    # The hook defines a shell function named after the tool that performs the activation.
    "$(basename "$tool")" activate "$conda_env" ||
        die "CONDA_ENV '$conda_env' (from $config): $(basename "$tool") could not activate it"
    set -eu
}

if [ -n "$pixi_env" ]; then
    activate_pixi
    python=$(command -v python || true)
    [ -n "$python" ] || die "PIXI_ENV '$pixi_env' (from $config): the environment has no python"
elif [ -n "$conda_env" ]; then
    activate_conda
    python=$(command -v python || true)
    [ -n "$python" ] || die "CONDA_ENV '$conda_env' (from $config): the environment has no python"
elif [ -n "$venv" ]; then
    [ -x "$venv/bin/python" ] || die "VENV '$venv' (from $config) has no bin/python"
    export VIRTUAL_ENV=$venv
    export PATH="$venv/bin:$PATH"
    python=$venv/bin/python
else
    python=$(command -v "$reader_python")
fi

# -P: the script's own folder stays off sys.path, or livereduce.py would shadow the
# livereduce package it imports.
exec "$python" -P "$daemon" "$@"
