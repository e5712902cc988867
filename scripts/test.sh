#!/usr/bin/env bash
# The project's test command (CI runs it through .ci/run):
#   system packages (deps.sh), .venv (venv.sh), ruff, then pytest.
# Extra arguments go to pytest, e.g.  scripts/test.sh -k outbox -x   or   scripts/test.sh -m 'not slow'
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/deps.sh
bash scripts/venv.sh

lint_dirs=()
for d in agent collector tests bench scripts; do
    [[ -d $d ]] && lint_dirs+=("$d")
done
ruff_status=0
if ((${#lint_dirs[@]})); then
    echo "test.sh: ruff check ${lint_dirs[*]}"
    .venv/bin/ruff check "${lint_dirs[@]}" || ruff_status=$?
fi

echo "test.sh: pytest -q -ra $*"
pytest_status=0
.venv/bin/python -m pytest -q -ra "$@" || pytest_status=$?

if ((pytest_status == 5)); then
    echo "test.sh: FAILED: pytest collected no tests (exit 5); a run that tests nothing is a failure" >&2
    exit 1
fi
if ((pytest_status != 0)); then
    echo "test.sh: FAILED: pytest exited $pytest_status" >&2
    exit "$pytest_status"
fi
if ((ruff_status != 0)); then
    echo "test.sh: FAILED: ruff found problems (exit $ruff_status); the tests passed" >&2
    exit "$ruff_status"
fi
echo "test.sh: OK"
