#!/usr/bin/env bash
# Installs what the end-to-end tests need and builds kube-apiserver 1.20.2 once.
#
# kube-apiserver comes from Debian bookworm's `kubernetes` source package, which carries the
# whole Kubernetes 1.20.2 tree with its Go dependencies vendored, so it builds offline with
# Debian's golang-go. The binary is cached outside the checkout (4 to 7 minutes to build
# on 2 cores) and rebuilt only when it is missing. etcd comes from Debian's etcd-server.
#
# The vendored github.com/modern-go/reflect2 1.0.1 of Kubernetes 1.20 faults under Go >= 1.18
# (json-iterator's map encoding, hit whenever a mutating webhook returns a patch), so it is
# replaced by Debian's reflect2 1.0.2 before building.
#
# The build uses Debian's own Go (golang-go, at /usr/lib/go/bin), called by its path, whatever
# other Go comes first on PATH, with the Go environment variables that would lead it astray
# (GOROOT, GOFLAGS, GOTOOLCHAIN, GOPATH, GO111MODULE) cleared or set for the build. The
# toolchain's version is checked before the build starts, and so are etcd's and kubectl's.
#
# Prints the path of the kube-apiserver binary on its last line.
set -euo pipefail

cache="${PRODGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prodguard}"
version="1.20.2"
# The build's identity: change it when the build changes, and the binary is rebuilt.
build_id="kube-apiserver-$version-reflect2-1.0.2"
apiserver="$cache/$build_id/kube-apiserver"
reflect2=/usr/share/gocode/src/github.com/modern-go/reflect2
# Debian's Go, whatever else PATH holds.
debian_go=/usr/lib/go/bin

log() { printf 'test-deps: %s\n' "$*" >&2; }
fail() { log "$*"; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# "1.19.8" from "go version go1.19.8 linux/amd64", "3.4.23" from "etcd Version: 3.4.23".
version_of() { grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1; }
# Whether version $1 (major.minor[.patch]) is at least $2 and, with $3, below $3.
version_in() {
  local v="$1" low="$2" high="${3:-}"
  [ "$(printf '%s\n%s\n' "$low" "$v" | sort -V | head -n 1)" = "$low" ] || return 1
  [ -z "$high" ] || [ "$(printf '%s\n%s\n' "$v" "$high" | sort -V | head -n 1)" = "$v" ] && [ "$v" != "$high" ]
}

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ ! -x "$apiserver" ]; then
  [ -x "$debian_go/go" ] && [ -x "$debian_go/gofmt" ] || missing+=(golang-go)
  command -v rsync >/dev/null || missing+=(rsync)
  command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
  [ -f "$reflect2/unsafe_map.go" ] || missing+=(golang-github-modern-go-reflect2-dev)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# etcd: kube-apiserver 1.20 speaks etcd's v3 API; Debian bookworm has 3.4.
etcd_version="$(etcd --version 2>/dev/null | version_of || true)"
if [ -z "$etcd_version" ] || ! version_in "$etcd_version" 3.4 4.0; then
  fail "etcd on PATH ($(command -v etcd)) reports version '${etcd_version:-none}'; the e2e suite needs etcd 3.4 or a later 3.x (Debian's etcd-server)"
fi
# kubectl: the suite drives kube-apiserver 1.20 with it and renders deploy/ with its kustomize;
# 1.19 or later does both (the suite runs with Debian's 1.20 and with 1.32).
kubectl_version="$(kubectl version --client 2>/dev/null | version_of || true)"
if [ -z "$kubectl_version" ] || ! version_in "$kubectl_version" 1.19; then
  fail "kubectl on PATH ($(command -v kubectl)) reports version '${kubectl_version:-none}'; the e2e suite needs kubectl 1.19 or later (Debian's kubernetes-client)"
fi

if [ ! -x "$apiserver" ]; then
  # Debian's Go 1.19 builds Kubernetes 1.20 with the reflect2 fix below; an older one cannot
  # (the reflect2 1.0.2 it needs), and a newer one is not what this build was proven with.
  go_version="$("$debian_go/go" version 2>/dev/null | sed 's/.*go\([0-9][0-9.]*\).*/\1/' || true)"
  if [ -z "$go_version" ] || ! version_in "$go_version" 1.19 1.22; then
    fail "Debian's Go at $debian_go/go reports version '${go_version:-none}'; building kube-apiserver $version needs Go 1.19 to 1.21 (bookworm's golang-go)"
  fi
  log "building with Debian's Go $go_version ($debian_go), not $(command -v go || echo 'no go') on PATH"
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
  log "building kube-apiserver $version from $src (4 to 7 minutes on 2 cores)"
  started=$SECONDS
  # The GOPATH layout of the package's debian/rules.
  rsync -a --delete --exclude '*_test.go' "$reflect2/" "$src/vendor/github.com/modern-go/reflect2/"
  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  # Only Debian's Go on the build's PATH before the system's directories, and none of the Go
  # variables of the caller's environment: GOROOT would point the toolchain elsewhere, GOFLAGS
  # (-mod=mod) and GO111MODULE would change how the vendored tree is read, GOTOOLCHAIN could
  # switch to a downloaded toolchain.
  (cd "$src" && env -u GOROOT -u GOFLAGS -u GO111MODULE -u GOBIN -u GOENV \
      GOTOOLCHAIN=local GOPATH="$src/.go" CGO_ENABLED=0 HOME="$work/home" GOCACHE="$work/gocache" \
      GOENV=off PATH="$debian_go:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      make WHAT=cmd/kube-apiserver >&2)
  mkdir -p "$(dirname "$apiserver")"
  cp "$src/_output/bin/kube-apiserver" "$apiserver.tmp"
  mv "$apiserver.tmp" "$apiserver"
  log "built in $((SECONDS - started)) s"
fi

"$apiserver" --version >&2
echo "$apiserver"
