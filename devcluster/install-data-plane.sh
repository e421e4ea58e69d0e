#!/usr/bin/env bash
# Installs the dev cluster's data plane from Debian: `haproxy` (2.6, the service proxy) and `prometheus`
# (2.42, with promtool). Idempotent and quiet: nothing to do when both are installed. Debian's packages
# would start system-wide services on install; the dev cluster runs its own instances (`localattn dev up`),
# so policy-rc.d (where present, as in containers) or an explicit stop keeps the system ones from running.
set -euo pipefail

packages=(haproxy prometheus)
log="${LOCALATTN_CACHE:-$HOME/.cache/localattn}/data-plane-install.log"
mkdir -p "$(dirname "$log")"

say() { echo "install-data-plane: $*" >&2; }
die() { say "error: $*"; [ -f "$log" ] && tail -n 20 "$log" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "needs root for: $*"; fi
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

say "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# `apt-get update` only when the install fails on stale or absent package lists.
if ! as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
  as_root apt-get update -qq >>"$log" 2>&1 || die "apt-get update failed"
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
    || die "apt-get install ${missing[*]} failed"
fi
# On a machine with systemd the packages start their system services: the dev cluster needs neither.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  as_root systemctl disable --now haproxy prometheus >>"$log" 2>&1 || true
fi
command -v haproxy >/dev/null && command -v prometheus >/dev/null && command -v promtool >/dev/null \
  || die "haproxy/prometheus/promtool not on PATH after install"
