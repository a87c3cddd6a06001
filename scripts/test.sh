#!/usr/bin/env bash
# Runs the whole test suite: installs missing build packages, fetches the demo model, then runs
# every unit and end-to-end test against the real daemon and model. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
APPL_TEST_MODEL=$(scripts/fetch-model.sh)
export APPL_TEST_MODEL

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
