#!/usr/bin/env bash
# GPU check, within 5 minutes:
#  1. the Triton kernels (localattn_kernels.devicecheck): correctness vs the reference, timings vs full attention,
#     torch's FlashAttention-2 (SDPA) and FlexAttention (sinks + window and full causal), vLLM's kernels where
#     vLLM is importable, achieved HBM bandwidth; writes kernels_gpu.json and kernels_gpu.md (the section to
#     paste into docs/benchmarks.md) into the directory given as $1;
#  2. the Triton kernel tests and the runtime's vLLM-free GPU layer path (tests/kernels/test_kernels_triton.py,
#     tests/runtime/test_backend_gpu.py) with the time left; a summary line is appended to kernels_gpu.md.
#
#   benchmarks/device_check.sh [OUT_DIR]          # default benchmarks/results/
#   benchmarks/device_check.sh OUT_DIR --dry-run  # CPU, TRITON_INTERPRET=1, tiny shapes: checks the script
#
# Needs a Python with torch + triton (+ pytest for part 2; vLLM optional): $PYTHON, else .venv/bin/python,
# else python3. The sources are imported from the working tree (no install needed). Exit status: non-zero when
# either part fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/benchmarks/results}"
shift || true
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/device_check.log"
dry_run=0
for arg in "$@"; do [[ "$arg" == --dry-run ]] && dry_run=1; done

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then py="$repo/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
export PYTHONPATH="$repo/kernels:$repo/runtime${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "== device_check $(date -u '+%Y-%m-%d %H:%M:%S') UTC, python $py"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.memory,driver_version --format=csv || echo "no nvidia-smi"
  "$py" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "triton", triton.__version__)'
} 2>&1 | tee "$log"

# Part 1: the Python side starts no new row or baseline after 150 s; at the 200 s hard stop (SIGTERM) it still
# writes what it has.
set +e
timeout -k 10 200 "$py" -m localattn_kernels.devicecheck "$out" "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e

# Part 2: the GPU tests that need no vLLM (the rest of test_backend_gpu.py imports vLLM), in what is left of 285 s.
tests=(tests/kernels/test_kernels_triton.py tests/runtime/test_backend_gpu.py::test_local_forward_matches_reference)
left=$((285 - SECONDS))
cmd="$py -m pytest -q -p no:cacheprovider ${tests[*]}"
if ((dry_run)); then
  echo "== dry run: would run (in $repo, timeout ${left} s): $cmd" | tee -a "$log"
  summary="not run in a dry run"
  test_rc=0
elif ((left < 20)); then
  summary="not run: no time left"
  test_rc=1
else
  echo "== $cmd (timeout ${left} s)" | tee -a "$log"
  : >"$out/gpu_tests.log"
  set +e
  (cd "$repo" && timeout -k 10 "$left" "$py" -m pytest -q -p no:cacheprovider "${tests[@]}") 2>&1 | tee -a "$log" "$out/gpu_tests.log"
  test_rc=${PIPESTATUS[0]}
  set -e
  # pytest's last line: "15 passed, 1 deselected in 42.10s", "1 failed, 14 passed ... in 40.2s", "1 error in 0.50s"
  summary="$(grep -E '(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s' "$out/gpu_tests.log" \
    | tail -n 1 | sed -E 's/^[= ]+|[= ]+$//g' || true)"
  rm -f "$out/gpu_tests.log"
  ((test_rc == 124)) && summary="timed out after ${left} s${summary:+ ($summary)}"
  summary="${summary:-exit $test_rc}"
fi
printf '\nTriton kernel tests + runtime local layer on the device (`pytest tests/kernels/test_kernels_triton.py tests/runtime/test_backend_gpu.py::test_local_forward_matches_reference`): %s.\n' "$summary" >>"$out/kernels_gpu.md"

((rc == 0)) && rc=$test_rc
echo "== exit $rc (kernel check, then tests: $summary); results in $out (kernels_gpu.json, kernels_gpu.md, device_check.log)" | tee -a "$log"
exit "$rc"
