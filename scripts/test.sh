#!/usr/bin/env bash
# The test command: installs what the tests need (etcd, kubectl, a cached kube-apiserver
# 1.20.2 built once), then runs every test, the end-to-end suite against the real API server
# included, of both crates of the workspace (prodguard and loadbench). Arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh >/dev/null
cargo test --locked --workspace "$@"
