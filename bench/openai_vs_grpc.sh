#!/usr/bin/env bash
# appld's OpenAI-compatible HTTP API against its gRPC API, side by side (bench/RESULTS.md,
# "OpenAI-compatible API"). Not a test. One appld (dev build: `cargo build --workspace
# --all-targets` first) with gRPC on 127.0.0.1:18051 and the HTTP API on 127.0.0.1:18080
# (plaintext, anonymous inference role: local only), 4 slots, 1 llama.cpp thread; six pairs of
# `applctl bench` runs (4 streams, 8 requests, 48 tokens each), the order alternating, each
# pair on two prompt files of 8 distinct ~63-token prompts swapped between the targets (so no
# run reuses another's cached prefix); appld's CPU time (utime + stime) per run. Reports go to
# $BENCH_DIR (default: a new temporary folder), one summary line per run to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_DIR=${BENCH_DIR:-$(mktemp -d)}
model=$(scripts/fetch-model.sh)
cat > "$BENCH_DIR/bench.toml" <<TOML
[server]
listen = "127.0.0.1:18051"
socket = "$BENCH_DIR/appld.sock"
[openai]
listen = "127.0.0.1:18080"
[tls]
insecure_plaintext = true
[auth]
anonymous_roles = ["inference"]
[log]
filter = "warn"
[audit]
dir = "$BENCH_DIR/audit"
[[models]]
id = "gemma-3-270m"
path = "$model"
slots = 4
ctx_per_slot = 512
threads = 1
chat_template = "gemma"
TOML
BENCH_DIR=$BENCH_DIR python3 - <<'PY'
import os, random
words = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when if "
         "so what out up said into them no can more only time could some these two may first then "
         "do any like my now over such our man me even most made after also did many before must "
         "through back years where much your way well down should because each just those people "
         "how too little state good very make world still own see men work long get here between "
         "both life being under never day same another know while last might us great old year "
         "off come since against go came right used take three").split()
rng = random.Random(7)
for f in range(1, 7):
    with open(os.path.join(os.environ["BENCH_DIR"], f"prompts-{f}.txt"), "w") as out:
        for i in range(8):
            out.write(f"Note {f}-{i}: " + " ".join(rng.choice(words) for _ in range(56)) + "\n")
PY
target/debug/appld --config "$BENCH_DIR/bench.toml" > "$BENCH_DIR/appld.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 15
cpu() { awk '{print $14+$15}' "/proc/$PID/stat"; }
run() { # pair target prompt-file
  local k=${2%%:*} c0
  c0=$(cpu)
  target/debug/applctl bench --target "$2" -c 4 -n 8 --max-tokens 48 \
    --prompt-file "$BENCH_DIR/prompts-$3.txt" --json > "$BENCH_DIR/run-$1-$k.json"
  echo "$1 $k cpu_ticks=$(( $(cpu) - c0 )) load=$(cut -d' ' -f1 /proc/loadavg) file=$3"
}
G=grpc://127.0.0.1:18051
O=openai://127.0.0.1:18080
run 1 $G 1; run 1 $O 2
run 2 $O 1; run 2 $G 2
run 3 $G 3; run 3 $O 4
run 4 $O 3; run 4 $G 4
run 5 $G 5; run 5 $O 6
run 6 $O 5; run 6 $G 6
echo "reports in $BENCH_DIR"
