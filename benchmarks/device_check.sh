#!/usr/bin/env bash
# GPU check of the Triton kernels (correctness vs the reference, timings vs full attention / FlashAttention /
# vLLM's Triton sliding window, achieved HBM bandwidth). Finishes within 5 minutes; writes kernels_gpu.json
# and kernels_gpu.md (the section to paste into docs/benchmarks.md) into the directory given as $1.
#
#   benchmarks/device_check.sh [OUT_DIR]          # default benchmarks/results/
#   benchmarks/device_check.sh OUT_DIR --dry-run  # CPU, TRITON_INTERPRET=1, tiny shapes: checks the script
#
# Needs a Python with torch + triton (vLLM optional, for its baselines): $PYTHON, else .venv/bin/python,
# else python3. The kernels are imported from the working tree (no install needed).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/benchmarks/results}"
shift || true
mkdir -p "$out"
out="$(cd "$out" && pwd)"

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
export PYTHONPATH="$repo/kernels${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "== device_check $(date -u '+%Y-%m-%d %H:%M:%S') UTC, python $py"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv || echo "no nvidia-smi"
  "$py" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "triton", triton.__version__)'
} 2>&1 | tee "$out/device_check.log"

# 290 s hard stop; the Python side stops starting new sections after 240 s and always writes what it has.
set +e
timeout 290 "$py" -m localattn_kernels.devicecheck "$out" "$@" 2>&1 | tee -a "$out/device_check.log"
rc=${PIPESTATUS[0]}
set -e
echo "== exit $rc; results in $out (kernels_gpu.json, kernels_gpu.md, device_check.log)" | tee -a "$out/device_check.log"
exit "$rc"
