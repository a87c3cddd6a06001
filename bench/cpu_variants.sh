#!/usr/bin/env bash
# What the CPU variant is worth to appld: prefill and decode speed of the same packaged appld
# with each llama.cpp CPU variant forced (APPL_CPU_VARIANT), on the demo model, one slot, one
# request at a time. Rounds go variant after variant, so a change in the machine's load hits all
# of them alike. Not a test: run it by hand.
#
# Usage: bench/cpu_variants.sh [APPLD] [VARIANT ...]
#   APPLD     a package build's appld beside its lib/appl (default: the staged one that
#             packaging/build-packages.sh leaves in target/packaging/stage/usr/bin/appld);
#             the word `builtin` means the dev build target/debug/appld (AVX2 linked in).
#   VARIANTs  default: haswell skylakex icelake zen4 sapphirerapids
# Environment: ROUNDS (default 5), THREADS (llama.cpp threads, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
appld=${1:-target/packaging/stage/usr/bin/appld}
shift || true
variants=("$@")
((${#variants[@]})) || variants=(haswell skylakex icelake zen4 sapphirerapids)
rounds=${ROUNDS:-5}
threads=${THREADS:-2}
model=$(scripts/fetch-model.sh)
applctl=target/debug/applctl
[[ -x $applctl ]] || applctl=target/release/applctl

dir=$(mktemp -d)
pid=
trap '[[ -n $pid ]] && kill $pid 2>/dev/null; rm -rf "$dir"' EXIT
cat > "$dir/appld.toml" <<TOML
[server]
listen = ""
socket = "$dir/appld.sock"
metrics_listen = ""
[audit]
dir = "$dir/audit"
[[models]]
id = "demo"
path = "$model"
slots = 1
ctx_per_slot = 2048
batch_tokens = 512
threads = $threads
chat_template = "gemma"
TOML
# A prompt of about 500 tokens: prefill speed is prompt tokens over time to first token.
prompt=$(python3 -c 'print(" ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40)))')

start() { # variant
  local bin=$appld
  if [[ $1 == builtin ]]; then bin=target/debug/appld; fi
  APPL_CPU_VARIANT=$1 "$bin" --config "$dir/appld.toml" 2>"$dir/log-$1" &
  pid=$!
  until "$applctl" --socket "$dir/appld.sock" health >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { cat "$dir/log-$1" >&2; exit 1; }
    sleep 0.2
  done
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }
gen() { "$applctl" --socket "$dir/appld.sock" generate "$@" --temperature 0 -v 2>&1 >/dev/null | tail -n 1; }

for v in "${variants[@]}"; do : > "$dir/pp-$v"; : > "$dir/tg-$v"; done
for r in $(seq "$rounds"); do
  for v in "${variants[@]}"; do
    start "$v"
    gen "$prompt" --max-tokens 1 >/dev/null # warm up
    gen "$prompt" --max-tokens 1 >> "$dir/pp-$v"
    gen "Once upon a time" --max-tokens 65 >> "$dir/tg-$v"
    stop
  done
  echo "round $r of $rounds done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done

python3 - "$dir" "${variants[@]}" <<'PY'
import re, statistics, sys
d, variants = sys.argv[1], sys.argv[2:]
def field(line, k):
    return float(re.search(rf"{k}=([0-9.]+)", line).group(1))
rows = []
for v in variants:
    pp = [field(l, "prompt_tokens") / (field(l, "ttft_ms") / 1e3) for l in open(f"{d}/pp-{v}")]
    tg = [field(l, "tok/s") for l in open(f"{d}/tg-{v}")]
    rows.append((v, statistics.median(pp), statistics.median(tg), len(pp)))
base = rows[0]
print(f"| variant | prefill tok/s (median) | vs {base[0]} | decode tok/s (median) | vs {base[0]} | runs |")
print("|---|---:|---:|---:|---:|---:|")
for v, pp, tg, n in rows:
    print(f"| {v} | {pp:.0f} | {pp/base[1]:.2f}x | {tg:.1f} | {tg/base[2]:.2f}x | {n} |")
PY
