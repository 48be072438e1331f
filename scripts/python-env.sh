#!/usr/bin/env bash
# The tests' Python: a venv with tests/deploy/requirements.txt (helm-python-sdk, which bundles
# Helm as a library; pytest; PyYAML), cached and remade when the requirements change. Prints the
# path of its python.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${PRODGUARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/prodguard}"
requirements=tests/deploy/requirements.txt
venv="$cache/venv-$(sha256sum "$requirements" | cut -c1-12)"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  printf 'python-env: making %s\n' "$venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
  touch "$venv/.complete"
fi
printf '%s\n' "$venv/bin/python"
