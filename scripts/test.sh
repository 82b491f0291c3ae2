#!/usr/bin/env bash
# README command 2: install the app and the test tools, lint, then run every test.
# As root the tests run in a fresh network namespace that has only loopback, so no test
# traffic can leave the machine and WebRTC must use the advertised 127.0.0.1 candidates.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --dev
. .venv/bin/activate
ruff check .
mypy .
if [ "$(id -u)" = 0 ] && unshare --net true 2>/dev/null; then
  exec unshare --net bash -c 'ip link set lo up && exec python -m pytest "$@"' pytest -q -rs "$@"
fi
echo "parley: not root (or no unshare): browser tests will be skipped" >&2
exec python -m pytest -q -rs "$@"
