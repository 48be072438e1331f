#!/usr/bin/env bash
# A test of scripts/test-deps.sh itself: it must build (or find cached) kube-apiserver with
# Debian's Go whatever Go comes first on PATH and whatever the Go environment says, and it must
# refuse an etcd or kubectl it cannot use, saying which and why.
#
#   scripts/test-deps-check.sh           with the cache as it is (cheap once it is warm; CI runs this)
#   scripts/test-deps-check.sh --fresh   with an empty cache: a full build (about 7 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."

fake="$(mktemp -d)"
trap 'rm -rf "$fake"' EXIT
passed=0
failed=0
check() {
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}

# A foreign Go first on PATH that cannot build anything, and an environment that would lead a
# Go build astray.
mkdir -p "$fake/go-bin"
for tool in go gofmt; do
  printf '#!/bin/sh\necho "foreign %s: must not be used" >&2\nexit 1\n' "$tool" > "$fake/go-bin/$tool"
  chmod +x "$fake/go-bin/$tool"
done
cache_env=()
if [ "${1:-}" = "--fresh" ]; then
  cache_env=(PRODGUARD_CACHE_DIR="$fake/cache")
fi

foreign_go() {
  local out started=$SECONDS
  if ! out="$(env "${cache_env[@]}" PATH="$fake/go-bin:$PATH" GOFLAGS=-mod=mod GOROOT="$fake/goroot" \
      GOTOOLCHAIN=go1.99.0 GO111MODULE=on GOPATH="$fake/gopath" scripts/test-deps.sh 2>"$fake/log")"; then
    echo "FAIL: test-deps.sh with a foreign Go first on PATH and GOFLAGS=-mod=mod:" >&2
    tail -n 30 "$fake/log" >&2
    return 1
  fi
  local apiserver
  apiserver="$(printf '%s\n' "$out" | tail -n 1)"
  if ! "$apiserver" --version | grep -q 'v1.20.2'; then
    echo "FAIL: $apiserver is not kube-apiserver v1.20.2" >&2
    return 1
  fi
  echo "ok: foreign Go on PATH and a hostile Go environment: $apiserver ($((SECONDS - started)) s)"
}

# A tool on PATH whose version does not fit: the script must stop and name it.
refused() {
  local tool="$1" version_line="$2" expected="$3"
  mkdir -p "$fake/$tool-bin"
  printf '#!/bin/sh\necho "%s"\n' "$version_line" > "$fake/$tool-bin/$tool"
  chmod +x "$fake/$tool-bin/$tool"
  if env PATH="$fake/$tool-bin:$PATH" scripts/test-deps.sh >/dev/null 2>"$fake/log"; then
    echo "FAIL: test-deps.sh accepted $tool reporting '$version_line'" >&2
    return 1
  fi
  if ! grep -q "$expected" "$fake/log"; then
    echo "FAIL: test-deps.sh refused $tool without saying why ('$expected'):" >&2
    cat "$fake/log" >&2
    return 1
  fi
  echo "ok: $tool reporting '$version_line' is refused: $(tail -n 1 "$fake/log")"
}

check foreign_go
check refused etcd "etcd Version: 2.3.8" "needs etcd 3.4 or a later 3.x"
check refused kubectl "Client Version: v1.16.0" "needs kubectl 1.19 or later"
echo "test-deps checks: $passed of $((passed + failed)) passed"
[ "$failed" -eq 0 ]
