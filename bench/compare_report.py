"""Turns the raw results of bench/compare-llama-server into the comparison section of
bench/RESULTS.md and PNG plots.

    compare_report.py RAW_DIR RESULTS_MD PLOTS_DIR

RAW_DIR holds meta.json and one folder per server (appld, anchor, samelib) with one
`applctl bench --json` report per workload (plus `load_avg_1m`) and llama-bench's JSON.
Everything between the markers below is replaced; the rest of RESULTS.md is kept.
"""

import json
import os
import sys

BEGIN = "<!-- compare-llama-server:begin -->"
END = "<!-- compare-llama-server:end -->"
SERVERS = ["anchor", "samelib", "appld"]
NAMES = {
    "anchor": "llama-server (its own llama.cpp)",
    "samelib": "llama-server (appld's llama.cpp)",
    "appld": "appld",
}


def load(raw):
    meta = json.load(open(os.path.join(raw, "meta.json")))
    res = {}
    for s in SERVERS:
        d = os.path.join(raw, s)
        if not os.path.isdir(d):
            continue
        res[s] = {}
        for f in os.listdir(d):
            if f.endswith(".json"):
                try:
                    res[s][f[:-5]] = json.load(open(os.path.join(d, f)))
                except ValueError:
                    pass
    return meta, res


def get(res, server, workload, *path):
    v = res.get(server, {}).get(workload)
    for k in path:
        if v is None:
            return None
        v = v.get(k) if isinstance(v, dict) else None
    return v


def fmt(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def present(res):
    return [s for s in SERVERS if s in res]


def load_range(res):
    loads = [
        r.get("load_avg_1m")
        for s in res.values()
        for r in s.values()
        if isinstance(r, dict) and r.get("load_avg_1m") is not None
    ]
    return (min(loads), max(loads)) if loads else (None, None)


def concurrencies(res, kind):
    cs = set()
    for s in res.values():
        for w in s:
            if w.startswith(kind + "-c"):
                cs.add(int(w.split("-c")[1]))
    return sorted(cs)


def baseline(res):
    """The llama-server that shares appld's llama.cpp when there is one, else the anchor."""
    return "samelib" if "samelib" in res else "anchor"


def throughput_table(res, kind):
    servers = present(res)
    llama = [s for s in servers if s != "appld"]
    head = ["concurrency"] + [f"{NAMES[s]} tok/s" for s in servers]
    head += [f"appld ÷ {s}" for s in llama] + ["TTFT p99 appld ÷ " + baseline(res), "load"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for c in concurrencies(res, kind):
        w = f"{kind}-c{c}"
        a = get(res, "appld", w, "aggregate_tok_s")
        cells = [str(c)] + [fmt(get(res, s, w, "aggregate_tok_s")) for s in servers]
        cells += [f"**{fmt(ratio(a, get(res, s, w, 'aggregate_tok_s')), 2)}**" for s in llama]
        b = baseline(res)
        cells.append(
            fmt(ratio(get(res, "appld", w, "ttft_ms", "p99"), get(res, b, w, "ttft_ms", "p99")), 2)
        )
        loads = [get(res, s, w, "load_avg_1m") for s in servers]
        loads = [x for x in loads if x is not None]
        cells.append(f"{min(loads):.1f}–{max(loads):.1f}" if loads else "—")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ttft_table(res, kind):
    servers = present(res)
    head = ["concurrency"]
    for s in servers:
        head += [f"{NAMES[s]} p50 ms", "p99 ms"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for c in concurrencies(res, kind):
        w = f"{kind}-c{c}"
        cells = [str(c)]
        for s in servers:
            cells += [fmt(get(res, s, w, "ttft_ms", "p50"), 0), fmt(get(res, s, w, "ttft_ms", "p99"), 0)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def interactive_table(res):
    rows = [
        "| server | probes | idle TTFT p50 ms | loaded TTFT p50 ms | loaded p90 ms | loaded ÷ idle (p50) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in present(res):
        idle = get(res, s, "interactive-idle", "ttft_ms", "p50")
        loaded = get(res, s, "interactive-loaded", "ttft_ms", "p50")
        p90 = get(res, s, "interactive-loaded", "ttft_ms", "p90")
        n = get(res, s, "interactive-loaded", "sent")
        rows.append(
            f"| {NAMES[s]} | {n if n is not None else '—'} | {fmt(idle, 0)} | {fmt(loaded, 0)} | "
            f"{fmt(p90, 0)} | **{fmt(ratio(loaded, idle), 2)}** |"
        )
    return "\n".join(rows)


def prefix_table(res):
    b = baseline(res)
    rows = [
        "| burst | server | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | cached prompt tokens (mean) | appld ÷ " + b + " |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for w, label in [("prefix-cold", "cold"), ("prefix-warm", "warm")]:
        a = get(res, "appld", w, "aggregate_tok_s")
        for s in present(res):
            r = "" if s != "appld" else f"**{fmt(ratio(a, get(res, b, w, 'aggregate_tok_s')), 2)}**"
            rows.append(
                f"| {label} | {NAMES[s]} | {fmt(get(res, s, w, 'aggregate_tok_s'))} | "
                f"{fmt(get(res, s, w, 'ttft_ms', 'p50'), 0)} | {fmt(get(res, s, w, 'ttft_ms', 'p99'), 0)} | "
                f"{fmt(get(res, s, w, 'cached_prompt_tokens_mean'), 0)} | {r} |"
            )
    return "\n".join(rows)


def llama_bench(res, server, test):
    rows = res.get(server, {}).get("llama-bench")
    if not isinstance(rows, list):
        return None
    for r in rows:
        if test == "tg" and r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0:
            return r.get("avg_ts")
        if test == "pp" and r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0:
            return r.get("avg_ts")
    return None


def single_stream(res):
    rows = [
        "| | tok/s | appld ÷ this |",
        "|---|---:|---:|",
    ]
    a = get(res, "appld", "short-c1", "per_stream_decode_tok_s", "mean")
    rows.append(f"| appld, 1 stream, decode (mean per request) | {fmt(a)} | |")
    for s in ["anchor", "samelib"]:
        tg = llama_bench(res, s, "tg")
        if tg is not None:
            rows.append(f"| llama-bench tg64, {NAMES[s]} | {fmt(tg)} | **{fmt(ratio(a, tg), 3)}** |")
        d = get(res, s, "short-c1", "per_stream_decode_tok_s", "mean")
        if d is not None:
            rows.append(f"| {NAMES[s]}, 1 stream, decode | {fmt(d)} | {fmt(ratio(a, d), 3)} |")
    return "\n".join(rows)


def predictions_table(res):
    rows = [
        "| streams | predicted tok/s per stream | measured (mean) | measured ÷ predicted | within ±25% |",
        "|---:|---:|---:|---:|---|",
    ]
    for c in concurrencies(res, "short"):
        w = f"short-c{c}"
        p = get(res, "appld", w, "prediction", "per_stream_tok_s")
        m = get(res, "appld", w, "per_stream_decode_tok_s", "mean")
        r = ratio(m, p)
        ok = "—" if r is None else ("yes" if 0.75 <= r <= 1.25 else "**no**")
        rows.append(f"| {c} | {fmt(p)} | {fmt(m)} | {fmt(r, 2)} | {ok} |")
    return "\n".join(rows)


def server_table(res):
    workloads = [w for w in ["short-c8", "long-c1", "long-c8", "prefix-cold", "prefix-warm"]
                 if any(w in res.get(s, {}) for s in res)]
    head = ["workload"]
    for s in present(res):
        head += [f"{NAMES[s]} llama_decode calls / request", "prompt tokens evaluated / request"]
    rows = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for w in workloads:
        cells = [w]
        for s in present(res):
            sent = get(res, s, w, "sent")
            calls = get(res, s, w, "server", "decode_calls")
            prompt = get(res, s, w, "server", "prompt_tokens")
            cells += [fmt(ratio(calls, sent)), fmt(ratio(prompt, sent), 0)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def targets(res):
    b = baseline(res)
    out = []

    def line(name, value, goal, ok):
        mark = "—" if value is None else ("met" if ok(value) else "**not met**")
        out.append(f"| {name} | {fmt(value, 2)} | {goal} | {mark} |")

    line("8 streams, short prompts: appld ÷ " + b,
         ratio(get(res, "appld", "short-c8", "aggregate_tok_s"), get(res, b, "short-c8", "aggregate_tok_s")),
         "≥ 1.05", lambda v: v >= 1.05)
    line("8 streams, ~1k prompts: appld ÷ " + b,
         ratio(get(res, "appld", "long-c8", "aggregate_tok_s"), get(res, b, "long-c8", "aggregate_tok_s")),
         "≥ 1.0", lambda v: v >= 1.0)
    line("8 streams, ~1k prompts: TTFT p99 appld ÷ " + b,
         ratio(get(res, "appld", "long-c8", "ttft_ms", "p99"), get(res, b, "long-c8", "ttft_ms", "p99")),
         "≤ 1.0", lambda v: v <= 1.0)
    tg = llama_bench(res, "samelib", "tg") or llama_bench(res, "anchor", "tg")
    line("1 stream decode ÷ llama-bench tg64",
         ratio(get(res, "appld", "short-c1", "per_stream_decode_tok_s", "mean"), tg),
         "≥ 0.98", lambda v: v >= 0.98)
    line("interactive TTFT under load ÷ idle (appld)",
         ratio(get(res, "appld", "interactive-loaded", "ttft_ms", "p50"),
               get(res, "appld", "interactive-idle", "ttft_ms", "p50")),
         "≤ 2", lambda v: v <= 2.0)
    line("cold shared-prefix burst: appld ÷ " + b,
         ratio(get(res, "appld", "prefix-cold", "aggregate_tok_s"), get(res, b, "prefix-cold", "aggregate_tok_s")),
         "≥ 1.5", lambda v: v >= 1.5)
    return "| target | measured | goal | |\n|---|---:|---:|---|\n" + "\n".join(out)


def plots(res, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, title in [(axes[0], "short", "short prompts"), (axes[1], "long", "~1k-token prompts")]:
        cs = concurrencies(res, kind)
        for s in present(res):
            ys = [get(res, s, f"{kind}-c{c}", "aggregate_tok_s") for c in cs]
            ax.plot(cs, [y or 0 for y in ys], marker="o", label=NAMES[s])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("aggregate tok/s")
        ax.set_title(title)
        ax.set_xticks(cs)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "throughput.png"), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind, title in [(axes[0], "short", "short prompts"), (axes[1], "long", "~1k-token prompts")]:
        cs = concurrencies(res, kind)
        for s in present(res):
            p50 = [get(res, s, f"{kind}-c{c}", "ttft_ms", "p50") or 0 for c in cs]
            p99 = [get(res, s, f"{kind}-c{c}", "ttft_ms", "p99") or 0 for c in cs]
            (line,) = ax.plot(cs, p50, marker="o", label=f"{NAMES[s]} p50")
            ax.plot(cs, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{NAMES[s]} p99")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("time to first token, ms")
        ax.set_title(title)
        ax.set_xticks(cs)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ttft.png"), dpi=110)
    plt.close(fig)


def section(meta, res):
    lo, hi = load_range(res)
    b = baseline(res)
    quick = " (quick run: concurrency 1 and 8 only)" if meta.get("quick") else ""
    return f"""{BEGIN}
## Comparison with llama-server

Generated by `bench/compare-llama-server`{quick} on {meta['date']}; do not edit by hand. Every
figure was measured side by side in one run: each workload on a fresh server, the servers one
after the other, all driven by `applctl bench` (release build) with distinct prompts, greedy,
{meta['max_tokens']} tokens per request. Ratios are appld ÷ llama-server: above 1 is better for
throughput, below 1 is better for time to first token. Absolute figures move with the machine's
load (the `load` column, 1-minute load average); the ratios are what to read.

- Machine: {meta['cores']} cores, `{meta['cpu']}`, {meta['mem_gib']} GiB; load average
  {fmt(lo)}–{fmt(hi)} during the run (the machine is shared).
- Model `{meta['model']}`, {meta['threads']} threads, {meta['slots']} slots × {meta['ctx_per_slot']}
  tokens of context on every server; llama-server with `-np {meta['slots']} -c {meta['slots'] * meta['ctx_per_slot']} -b 2048 -ub 512`
  and its other defaults. Prompts: short {meta['short_prompt']} tokens, long
  {meta['long_prompt']} tokens.
- CPU variant, the same on every side (read from appld's own build): `{meta['variant'].strip()}`.
- appld: commit `{meta['appld_commit']}`, release build, llama.cpp from `{meta['appld_llama']}`
  ({meta['appld_version']}).
- llama-server (its own llama.cpp): llama-cpp-python {meta['llama_cpp_python']} sdist,
  llama.cpp commit `{meta['anchor_commit']}` ({meta['anchor_version']}), Release build.
- llama-server (appld's llama.cpp): the same server and `common` code, built over the
  llama.cpp library and ggml sources that appld links ({meta['appld_version']}), so the
  difference between the two llama-server columns is the llama.cpp version, and the difference
  between this column and appld is the engine's own.

### Targets (against {NAMES[b]})

{targets(res)}

### Throughput, short prompts ({meta['short_prompt']} tokens)

{throughput_table(res, 'short')}

### Throughput, ~1k-token prompts ({meta['long_prompt']} tokens)

{throughput_table(res, 'long')}

![aggregate throughput against concurrency](plots/throughput.png)

### Time to first token

Short prompts:

{ttft_table(res, 'short')}

~1k-token prompts:

{ttft_table(res, 'long')}

![time to first token against concurrency](plots/ttft.png)

### Interactive request under batch load

An interactive request (16-token prompt, 8 tokens) on an idle server, then while 8 batch streams
hold every slot. llama-server has no priorities: its request waits for a slot.

{interactive_table(res)}

### Eight requests sharing a {meta['shared_prefix']}-token system prompt

A cold burst (the prefix in no cache), then a warm one (same prefix, new questions).

{prefix_table(res)}

### One stream against llama-bench

{single_stream(res)}

### Speed predictions

`applctl check --measure` timed decode steps on this machine before the run; each appld run
printed the prediction beside its measurement (short prompts, per-stream decode rate).

{predictions_table(res)}

### What the servers did

From each server's own counters (appld's `Admin.Status`, llama-server's `/metrics`), per
request. Warm-up requests are not counted.

{server_table(res)}
{END}"""


def main():
    raw, results, plots_dir = sys.argv[1:4]
    meta, res = load(raw)
    text = section(meta, res)
    old = open(results).read() if os.path.exists(results) else "# Benchmark results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    open(results, "w").write(new)
    plots(res, plots_dir)


if __name__ == "__main__":
    main()
