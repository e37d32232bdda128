#!/usr/bin/env bash
# Install everything, then run the test suite (slow tests excluded; add `-m slow` to run them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
status=0
.venv/bin/python -m pytest -q "$@" </dev/null || status=$?
if [ "$status" -eq 5 ]; then
    # pytest's "no tests collected": never a success here, the suite is not empty.
    echo "run-tests.sh: pytest collected no tests; failing" >&2
    exit 1
fi
exit "$status"
