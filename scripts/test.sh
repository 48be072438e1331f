#!/usr/bin/env bash
# The test command: installs what the tests need (etcd, kubectl, a cached kube-apiserver
# 1.20.2 built once, a cached Python venv with Helm's library), then runs every test, the
# end-to-end suite against the real API server included, of the workspace's crates (prodguard,
# loadbench, xtask), then the CEL floor through Kubernetes' own admission code
# (scripts/k8s-admission.sh), then the deploy tests: the container image (built with `cargo
# xtask image`, run from its own root file system) and the Helm chart (scripts/deploy-tests.sh).
# Arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh >/dev/null
cargo test --locked --workspace "$@"
scripts/k8s-admission.sh
scripts/deploy-tests.sh
