#!/usr/bin/env bash
# Continuous batching: aggregate decode throughput of 8 concurrent greedy streams against one
# stream, on the same daemon, in one run. Prints the ratio. Not a test: run it by hand.
#
# Usage: bench/batching.sh [MAX_TOKENS]   (builds nothing: run scripts/demo.sh or cargo build first)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-128}
MODEL=$(scripts/fetch-model.sh)
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/appld.toml" <<TOML
[server]
listen = ""
socket = "$dir/appld.sock"
[limits]
max_tokens_cap = 4096
[[models]]
id = "demo"
path = "$MODEL"
slots = 8
ctx_per_slot = 1024
chat_template = "gemma"
TOML
target/debug/appld --config "$dir/appld.toml" 2>"$dir/log" &
pid=$!
for _ in $(seq 100); do [[ -S $dir/appld.sock ]] && break; sleep 0.2; done
ctl() { target/debug/applctl --socket "$dir/appld.sock" "$@"; }
until ctl health >/dev/null 2>&1; do sleep 0.2; done

gen() { ctl generate "Story number $1: Once upon a time" --max-tokens "$N" --temperature 0 >/dev/null; }
gen 0 # warm up
t0=$(date +%s.%N); gen 1; t1=$(date +%s.%N)
gens=()
for i in $(seq 8); do gen "$i" & gens+=($!); done
wait "${gens[@]}"
t2=$(date +%s.%N)
python3 - "$t0" "$t1" "$t2" "$N" <<'PY'
import sys
t0, t1, t2, n = map(float, sys.argv[1:])
one = n / (t1 - t0)
eight = 8 * n / (t2 - t1)
print(f"1 stream : {one:7.1f} tok/s ({n:.0f} tokens in {t1-t0:.2f} s)")
print(f"8 streams: {eight:7.1f} tok/s aggregate ({8*n:.0f} tokens in {t2-t1:.2f} s)")
print(f"ratio    : {eight/one:.2f}x")
PY
ctl status
