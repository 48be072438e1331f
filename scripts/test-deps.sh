#!/usr/bin/env bash
# Installs what the end-to-end tests need and builds kube-apiserver 1.20.2 once.
#
# kube-apiserver comes from Debian bookworm's `kubernetes` source package, which carries the
# whole Kubernetes 1.20.2 tree with its Go dependencies vendored, so it builds offline with
# Debian's golang-go. The binary is cached outside the checkout (about 10-15 minutes to build
# on 2 cores) and rebuilt only when it is missing. etcd comes from Debian's etcd-server.
#
# The vendored github.com/modern-go/reflect2 1.0.1 of Kubernetes 1.20 faults under Go >= 1.18
# (json-iterator's map encoding, hit whenever a mutating webhook returns a patch), so it is
# replaced by Debian's reflect2 1.0.2 before building.
#
# Prints the path of the kube-apiserver binary on its last line.
set -euo pipefail

cache="${PRODGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prodguard}"
version="1.20.2"
# The build's identity: change it when the build changes, and the binary is rebuilt.
build_id="kube-apiserver-$version-reflect2-1.0.2"
apiserver="$cache/$build_id/kube-apiserver"
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2

log() { printf 'test-deps: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ ! -x "$apiserver" ]; then
  command -v go >/dev/null || missing+=(golang-go)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
  [ -f "$reflect2/unsafe_map.go" ] || missing+=(golang-github-modern-go-reflect2-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [ ! -x "$apiserver" ]; then
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "adding a deb-src entry for bookworm"
    as_root tee /etc/apt/sources.list.d/bookworm-src.sources >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    as_root apt-get update -qq
  fi
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  log "fetching the kubernetes source package into $work"
  (cd "$work" && apt-get source -qq kubernetes >&2)
  src="$(find "$work" -maxdepth 1 -type d -name 'kubernetes-*' | head -n 1)"
  [ -n "$src" ] || { log "apt-get source kubernetes gave no source tree"; exit 1; }
  log "building kube-apiserver $version from $src (10-15 minutes on 2 cores)"
  started=$SECONDS
  # The GOPATH layout of the package's debian/rules.
  rsync -a --delete --exclude '*_test.go' "$reflect2/" "$src/vendor/github.com/modern-go/reflect2/"
  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  (cd "$src" && env GOPATH="$src/.go" CGO_ENABLED=0 HOME="$work/home" GOCACHE="$work/gocache" \
      PATH="/usr/lib/go/bin:$PATH" make WHAT=cmd/kube-apiserver >&2)
  mkdir -p "$(dirname "$apiserver")"
  cp "$src/_output/bin/kube-apiserver" "$apiserver.tmp"
  mv "$apiserver.tmp" "$apiserver"
  log "built in $((SECONDS - started)) s"
fi

"$apiserver" --version >&2
echo "$apiserver"
