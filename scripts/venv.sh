#!/usr/bin/env bash
# Create or refresh the development virtualenv .venv in the repository:
#   python3 -m venv .venv; pip install -e ".[test]"
# Fast on re-run: pip runs again only when pyproject.toml is newer than .venv/.installed-stamp
# (or the venv is missing or broken). Force a reinstall with: rm .venv/.installed-stamp
#
#   bash scripts/venv.sh          create/refresh it
#   source scripts/venv.sh        the same, then activate it in the current shell
#
# PYTHON=/path/to/python3 chooses the interpreter for a new venv (default: python3 on PATH).

if [[ ${BASH_SOURCE[0]} != "$0" ]]; then
    # Sourced: do the work in a child bash (so its set -e cannot close the caller's shell and
    # is not disabled by the caller's context), then activate the venv in the caller.
    if bash "${BASH_SOURCE[0]}"; then
        # shellcheck disable=SC1091
        source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/activate"
        return 0
    fi
    return 1
fi

set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
venv=$root/.venv
stamp=$venv/.installed-stamp

if [[ -e $venv ]] && ! "$venv/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)' \
    >/dev/null 2>&1; then
    echo "venv.sh: $venv is broken or too old; recreating it"
    rm -rf "$venv"
fi

if [[ ! -x $venv/bin/python ]]; then
    if ! "$python" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
        echo "venv.sh: need Python >= 3.11; '$python' is $("$python" -V 2>&1 || echo missing)" \
            "(set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    echo "venv.sh: creating $venv with $("$python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$python" -m venv "$venv"
    rm -f "$stamp"
fi

if [[ -f $stamp && ! pyproject.toml -nt $stamp ]]; then
    echo "venv.sh: $venv is up to date (rm $stamp to force a reinstall)"
    exit 0
fi

pip_opts=(--disable-pip-version-check)
# Progress bars are noise in a CI log; keep pip's per-package lines.
[[ -t 1 ]] || pip_opts+=(--progress-bar off)

echo "venv.sh: upgrading pip"
"$venv/bin/python" -m pip install -q "${pip_opts[@]}" --upgrade pip
echo "venv.sh: pip install -e .[test]"
"$venv/bin/python" -m pip install "${pip_opts[@]}" -e ".[test]"
touch "$stamp"
echo "venv.sh: ready: $venv ($("$venv/bin/python" -V))"
