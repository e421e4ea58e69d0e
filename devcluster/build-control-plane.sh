#!/usr/bin/env bash
# Builds a real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)
# from Debian's `kubernetes` source package 1.20.2 with Debian's Go 1.19, and installs an envtest-style
# directory $LOCALATTN_CACHE/k8s/<key>/bin (those four + etcd). No registry ships these binaries, so we
# build them once; <key> hashes the source version, our patches and this script, so any change rebuilds.
#
# Idempotent and quiet: a warm run prints the bin dir and exits; a cold run takes ~5 min on 2 cores, logs
# to $LOCALATTN_CACHE/k8s/build.log and deletes the ~2 GB build tree afterwards. Prints the bin dir last.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LOCALATTN_CACHE:-$HOME/.cache/localattn}"
k8s="$cache/k8s"
log="$k8s/build.log"
go_bin=/usr/lib/go-1.19/bin
packages=(golang-1.19-go etcd-server dpkg-dev patch make rsync)
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

say() { echo "build-control-plane: $*" >&2; }
die() { say "error: $*"; [ -f "$log" ] && tail -n 30 "$log" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "needs root for: $*"; fi
}

missing_packages() {
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

apt_install() {
  # `apt-get update` only when the install fails on stale or absent package lists.
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1; then
    as_root apt-get update -qq >>"$log" 2>&1 || die "apt-get update failed"
    as_root apt-get install -y -qq --no-install-recommends "$@" >>"$log" 2>&1 || die "apt-get install $* failed"
  fi
}

ensure_deb_src() {
  # `apt-get source` needs a deb-src entry; derive it from the deb822 entry Debian images ship.
  local list=/etc/apt/sources.list.d/debian-src.sources
  if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    [ -f /etc/apt/sources.list.d/debian.sources ] || die "no deb-src entry and no debian.sources to derive one"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | as_root tee "$list" >/dev/null
    as_root apt-get update -qq >>"$log" 2>&1 || die "apt-get update failed"
  elif ! compgen -G '/var/lib/apt/lists/*_source_Sources*' >/dev/null; then
    as_root apt-get update -qq >>"$log" 2>&1 || die "apt-get update failed"
  fi
}

find_dsc() {
  # Newest kubernetes .dsc already downloaded (prewarm/ is filled by the machine image, src/ by us).
  # Only a .dsc whose files are all present counts.
  local dsc
  for dsc in $(ls "$cache"/prewarm/kubernetes_*.dsc "$cache"/src/kubernetes_*.dsc 2>/dev/null | sort -V -r); do
    if (cd "$(dirname "$dsc")" && awk '/^Files:/{f=1;next} /^[^ ]/{f=0} f && NF==3{print $3}' "$dsc" \
          | while read -r name; do [ -f "$name" ] || exit 1; done); then
      echo "$dsc"; return 0
    fi
  done
  return 1
}

mkdir -p "$k8s"
# One build at a time: `localattn dev up` may call us while a background build is running.
exec 9>"$k8s/.build.lock"
flock 9

echo "=== $(date -u +%FT%TZ) build-control-plane.sh" >>"$log"
missing="$(missing_packages | tr '\n' ' ')"
if [ -n "${missing// /}" ]; then
  say "installing ${missing% }"
  # shellcheck disable=SC2086
  apt_install $missing
fi

if ! dsc="$(find_dsc)"; then
  say "downloading Debian's kubernetes source package"
  ensure_deb_src
  mkdir -p "$cache/src"
  (cd "$cache/src" && apt-get source --download-only -qq kubernetes >>"$log" 2>&1) \
    || die "apt-get source kubernetes failed"
  dsc="$(find_dsc)" || die "no kubernetes .dsc after download"
fi

key="$( { basename "$dsc" ; cat "$dsc" "$here"/patches/*.patch "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)"
dest="$k8s/$key"
if [ -f "$dest/.complete" ]; then
  echo "$dest/bin"
  exit 0
fi

work="$k8s/build-$key"
cleanup() { rm -rf "$work" "$dest.tmp"; }
trap cleanup EXIT
rm -rf "$work" "$dest.tmp"
mkdir -p "$work"

say "unpacking $(basename "$dsc")"
dpkg-source -x "$dsc" "$work/src" >>"$log" 2>&1 || die "dpkg-source -x failed"

for p in "$here"/patches/*.patch; do
  say "applying $(basename "$p")"
  patch -d "$work/src" -p1 -N -s <"$p" >>"$log" 2>&1 || die "patch $(basename "$p") failed"
done

say "building ${binaries[*]} (~5 min on 2 cores; log: $log)"
start=$SECONDS
(
  cd "$work/src"
  export PATH="$go_bin:$PATH" GOFLAGS=-mod=vendor GOPROXY=off CGO_ENABLED=0
  export GOCACHE="$work/gocache" GOPATH="$work/gopath" HOME="$work/home"
  mkdir -p "$HOME"
  make WHAT="${binaries[*]/#/cmd/}"
) >>"$log" 2>&1 || die "make failed"
say "built in $((SECONDS - start)) s"

mkdir -p "$dest.tmp/bin"
for b in "${binaries[@]}"; do
  install -m 0755 "$work/src/_output/bin/$b" "$dest.tmp/bin/$b"
done
install -m 0755 "$(command -v etcd || echo /usr/bin/etcd)" "$dest.tmp/bin/etcd"
{
  echo "source: $(basename "$dsc")"
  echo "go: $("$go_bin/go" version)"
  echo "etcd: $(dpkg-query -W -f='${Version}' etcd-server)"
  echo "patches: $(cd "$here/patches" && ls -- *.patch | tr '\n' ' ')"
} >"$dest.tmp/VERSION"
touch "$dest.tmp/.complete"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest/bin"
