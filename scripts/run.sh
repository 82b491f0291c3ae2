#!/usr/bin/env bash
# README command 1: install what is missing, then run Parley on a local Ray.
# Arguments go to serve_app.py (e.g. --host 0.0.0.0 --port 8443, --config my.yaml). The console shows
# Parley's own lines; Ray's logs stay in the folder the start-up names, and --verbose prints them too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/python serve_app.py "$@"
