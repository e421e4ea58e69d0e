#!/usr/bin/env bash
# `make demo`: a local-attention revision rolled out on real vLLM pods of the local dev cluster, then a bad one.
# All the logic is in devcluster/localattn_dev/demo.py (also `localattn dev demo`); `make demo-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m localattn_dev.demo "$@"
