#!/usr/bin/env bash
# Runs the whole test suite: installs missing build packages, fetches the demo model, then checks
# formatting and lints, and runs every unit and end-to-end test against the real daemon and model.
# CI (.ci/run) runs this, then packaging/test-packages.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --packaging
APPL_TEST_MODEL=$(scripts/fetch-model.sh)
export APPL_TEST_MODEL

cargo fmt --all -- --check
# Build every target first: some end-to-end tests run the applctl binary, which `cargo test`
# alone does not build. Same features as the test build, so llama.cpp is compiled once.
cargo build --workspace --all-targets --locked
# Clippy's check build shares llama.cpp with the build above: [profile.dev.build-override] in
# Cargo.toml gives build scripts the same profile in both, so llama-cpp-sys-2 is not rebuilt.
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
