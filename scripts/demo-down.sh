#!/usr/bin/env bash
# Stops what `make demo` started: its load clients and operator, then the dev cluster with every pod process
# (and checks by PID that none is left). Logic in devcluster/localattn_dev/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m localattn_dev.demo --down "$@"
