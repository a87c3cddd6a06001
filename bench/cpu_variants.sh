#!/usr/bin/env bash
# What the CPU variant is worth to appld: prefill and decode speed of the same packaged appld
# with each llama.cpp CPU variant forced (APPL_CPU_VARIANT), on the demo model, one slot, one
# request at a time, one llama.cpp thread. Speed is measured per second of appld's own CPU time
# (utime + stime from /proc), which a busy shared machine does not distort the way it distorts
# wall time; wall-time speeds are printed too. Every prompt starts differently, so no cached
# prefix is reused. Rounds go variant after variant. Not a test: run it by hand.
#
# Usage: bench/cpu_variants.sh [APPLD] [VARIANT ...]
#   APPLD     a package build's appld beside its lib/appl (default: the staged one that
#             packaging/build-packages.sh leaves in target/packaging/stage/usr/bin/appld);
#             the word `builtin` means the dev build target/debug/appld (AVX2 linked in).
#   VARIANTs  default: haswell skylakex icelake zen4 sapphirerapids
# Environment: ROUNDS (default 5), THREADS (llama.cpp threads, default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
appld=${1:-target/packaging/stage/usr/bin/appld}
shift || true
variants=("$@")
((${#variants[@]})) || variants=(haswell skylakex icelake zen4 sapphirerapids)
rounds=${ROUNDS:-5}
threads=${THREADS:-1}
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
# Prompts of about 500 tokens, each opening with its own number so that no prefix is reused.
prompt() { python3 -c 'import sys; n = sys.argv[1]; print(f"Report {n}. " + " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40)))' "$1"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
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
n=0
for r in $(seq "$rounds"); do
  for v in "${variants[@]}"; do
    start "$v"
    gen "warm up" --max-tokens 4 >/dev/null
    # Prefill: 4 fresh prompts, 1 token each. Record: prompt tokens, CPU ticks, wall ms.
    t0=$(cpu_ticks); w0=$(date +%s%N); toks=0
    for _ in 1 2 3 4; do
      n=$((n + 1))
      line=$(gen "$(prompt "$n")" --max-tokens 1)
      toks=$((toks + $(sed -E 's/.*prompt_tokens=([0-9]+).*/\1/' <<<"$line")))
    done
    echo "$toks $(($(cpu_ticks) - t0)) $((($(date +%s%N) - w0) / 1000000))" >> "$dir/pp-$v"
    # Decode: 129 tokens after a short prompt; the decode rate from the usage line, and CPU ticks.
    n=$((n + 1))
    t0=$(cpu_ticks)
    line=$(gen "Story $n: once upon a time" --max-tokens 129)
    echo "$(sed -E 's/.*completion_tokens=([0-9]+).*/\1/' <<<"$line") $(($(cpu_ticks) - t0)) $(sed -E 's/.*tok\/s=([0-9.]+).*/\1/' <<<"$line")" >> "$dir/tg-$v"
    stop
  done
  echo "round $r of $rounds done (load $(cut -d' ' -f1 /proc/loadavg))" >&2
done

python3 - "$dir" "$(getconf CLK_TCK)" "${variants[@]}" <<'PY'
import statistics, sys
d, hz, variants = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def rows(path):
    return [tuple(map(float, l.split())) for l in open(path) if l.strip()]
out = []
for v in variants:
    pp = rows(f"{d}/pp-{v}")
    tg = rows(f"{d}/tg-{v}")
    pp_cpu = statistics.median(t / (c / hz) for t, c, _ in pp)
    pp_wall = statistics.median(t / (w / 1e3) for t, _, w in pp)
    tg_cpu = statistics.median(t / (c / hz) for t, c, _ in tg)
    tg_wall = statistics.median(r for _, _, r in tg)
    out.append((v, pp_cpu, tg_cpu, pp_wall, tg_wall, len(pp)))
b = out[0]
print(f"| variant | prefill tok per CPU-s | vs {b[0]} | decode tok per CPU-s | vs {b[0]} | prefill tok/s wall | decode tok/s wall | rounds |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for v, pc, tc, pw, tw, n in out:
    print(f"| {v} | {pc:.0f} | {pc/b[1]:.2f}x | {tc:.1f} | {tc/b[2]:.2f}x | {pw:.0f} | {tw:.1f} | {n} |")
PY
