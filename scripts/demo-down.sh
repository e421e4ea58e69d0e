#!/usr/bin/env bash
# Stops what `make demo` started: the operator, then the local control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=.localattn/operator.pid
if [ -f "$pidfile" ]; then
  kill -- "-$(cat "$pidfile")" 2>/dev/null || kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
fi
.venv/bin/localattn dev down
