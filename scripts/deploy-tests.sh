#!/usr/bin/env bash
# The deploy tests: the container image (cargo xtask image, built twice) and the Helm chart,
# with Helm's own code (helm-python-sdk) and skopeo. Run by scripts/test.sh after the cargo tests,
# whose debug binary they use. Installs what it needs: skopeo from Debian, and a Python venv
# with tests/deploy/requirements.txt, cached beside the other test dependencies; and promtool for
# the alerts, taken out of Debian's prometheus package without installing it (whose server would
# start and listen).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${PRODGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prodguard}"
log() { printf 'deploy-tests: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The image test runs the image's root file system in a mount namespace of its own (unshare,
# chroot): that needs root.
[ "$(id -u)" -eq 0 ] || { log "needs root (the image's root file system is run with unshare and chroot)"; exit 1; }

missing=()
command -v skopeo >/dev/null || missing+=(skopeo)
command -v unshare >/dev/null || missing+=(util-linux)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# promtool checks and unit-tests the alerts (tests/deploy/test_monitoring.py).
tools="$cache/tools/bin"
if ! "$tools/promtool" --version >/dev/null 2>&1; then
  log "extracting promtool from Debian's prometheus package"
  work="$(mktemp -d)"
  (cd "$work" && apt-get download -qq prometheus >&2 || { as_root apt-get update -qq && apt-get download -qq prometheus >&2; })
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p "$tools"
  install -m 0755 "$work/root/usr/bin/promtool" "$tools/promtool"
  rm -rf "$work"
fi
export PATH="$tools:$PATH"

python="$(scripts/python-env.sh)"

target_dir="$(cargo metadata --format-version 1 --no-deps --offline | "$python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
export PRODGUARD_BIN="$target_dir/debug/prodguard"
[ -x "$PRODGUARD_BIN" ] || cargo build --locked --bin prodguard

log "building the image (the release binary, statically linked), twice"
export PRODGUARD_IMAGE_DIR="$target_dir/image"
export PRODGUARD_IMAGE_DIR_AGAIN="$target_dir/image-again"
cargo xtask image --out "$PRODGUARD_IMAGE_DIR"
cargo xtask image --out "$PRODGUARD_IMAGE_DIR_AGAIN" >/dev/null
rm -rf "$PRODGUARD_IMAGE_DIR_AGAIN/copied"

"$python" -m pytest -p no:cacheprovider -q tests/deploy "$@"
