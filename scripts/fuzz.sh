#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer). The targets live in fuzz/ (not a workspace member) and
# their seed corpora in fuzz/corpus/<target>/ (small, in the repo).
#
#   scripts/fuzz.sh build            build every target (what CI does)
#   scripts/fuzz.sh run TARGET SECS  fuzz one target for SECS seconds, niced
#   scripts/fuzz.sh smoke SECS       each target for SECS seconds (CI: a few)
#   scripts/fuzz.sh seeds            rewrite the seed corpora (cargo run --bin make_seeds)
#
# Targets: request_validation, config_parse, gguf_header, audit_export_verify.
# cargo-fuzz needs nightly compiler features; with a stable toolchain RUSTC_BOOTSTRAP=1 enables
# them (set here). New inputs found while fuzzing go to fuzz/target/corpus-new/, not into the
# repo's corpus; crashes to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
TARGETS=(request_validation config_parse gguf_header audit_export_verify)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

case "${1:-}" in
  build)
    cargo fuzz build --fuzz-dir fuzz
    ;;
  run)
    t=$2 secs=$3
    mkdir -p "fuzz/target/corpus-new/$t"
    nice -n 19 cargo fuzz run --fuzz-dir fuzz "$t" "fuzz/target/corpus-new/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
    ;;
  smoke)
    for t in "${TARGETS[@]}"; do "$0" run "$t" "${2:-5}"; done
    ;;
  seeds)
    (cd fuzz/seeds && cargo run --release)
    ;;
  *)
    echo "usage: $0 build | run TARGET SECS | smoke SECS | seeds" >&2
    exit 2
    ;;
esac
