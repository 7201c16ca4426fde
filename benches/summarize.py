#!/usr/bin/env python3
"""Summarize a benches/compare.sh run: one markdown table per scenario and worker count.

Usage: benches/summarize.py OUT_DIR      (prints the tables and writes OUT_DIR/summary.md)

Reads OUT_DIR/runs.tsv (one line per measurement, written by compare.sh) and the sg-load JSON
file each line names. Every cell is the median over the rounds; req/s also shows the min-max
spread over the rounds. CPU us/req = proxy process tree user+sys CPU time over the measured
run (from /proc/PID/stat, in clock ticks) / requests completed in that run. For the lb-* scenarios (three backends) it
also gives how each target spread the backends' CPU time over the three (runs.tsv column
backend_ticks_each).
"""

import csv
import json
import os
import statistics
import sys

TARGET_ORDER = ["direct", "shardgate", "nginx", "haproxy"]
SCENARIO_TEXT = {
    "small-ka": "small response, keep-alive",
    "newconn": "small response, new connection per request",
    "16k": "16 KiB response, keep-alive",
    "1m": "1 MiB response, keep-alive",
    "tls-ka": "HTTPS, small response, keep-alive",
    "tls-newconn": "HTTPS, small response, new connection per request (full handshake)",
    "tls-resume": "HTTPS, small response, new connection per request (resumed session)",
    "tls-1m": "HTTPS, 1 MiB response, keep-alive",
    "lb-rr": "round robin over 3 backends, keep-alive",
    "lb-leastconn": "least connections over 3 backends, keep-alive",
    "lb-chash": "consistent hash over 3 backends, keep-alive",
    "lb-ewma": "EWMA over 3 backends, keep-alive",
    "wrk-ka": "small response, keep-alive; wrk as load generator, nginx as backend",
    "wrk-newconn": "small response, new connection per request; wrk as load generator, "
    "nginx as backend",
}
# What each proxy runs in the lb-* scenarios, printed under the table.
LB_DIRECT = (
    "direct: the load generator talks to backend 1 alone (no balancing): the ceiling of one "
    "backend instance."
)
SCENARIO_NOTES = {
    "lb-rr": [
        "Balancing: Shardgate `type = \"roundrobin\"`; nginx default round robin; "
        "HAProxy `balance roundrobin`.",
        LB_DIRECT,
    ],
    "lb-leastconn": [
        "Balancing: Shardgate `type = \"least_conn\"`; nginx `least_conn`; "
        "HAProxy `balance leastconn`.",
        LB_DIRECT,
    ],
    "lb-chash": [
        "Balancing: Shardgate `type = \"chash\"`, `hash_on = \"vars\"`, "
        "`key = \"request_uri\"`; nginx `hash $request_uri consistent`; "
        "HAProxy `balance uri` + `hash-type consistent`.",
        "sg-load sends one URI (`/bench`; it has no option to vary the path), so every request "
        "hashes to the same backend for every proxy: this measures the per-request cost of "
        "hashing, not how evenly keys spread.",
        LB_DIRECT,
    ],
    "lb-ewma": [
        "Balancing: Shardgate `type = \"ewma\"` (peak EWMA of latency); **nginx `least_conn` "
        "and HAProxy `balance leastconn` stand in**: open-source nginx and HAProxy have no "
        "EWMA balancer, and least connections is their nearest load-aware one.",
        LB_DIRECT,
    ],
}


def fmt_int(x):
    return "n/a" if x is None else f"{x:,.0f}"


def fmt_us(x):
    if x is None:
        return "n/a"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def fmt_cpu(x):
    return "n/a" if x is None else f"{x:.2f}"


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}×"


def size_text(n):
    n = int(n)
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} B"


def fmt_share(each):
    """each: per-round lists of per-backend ticks -> "34/33/33 %" (median share per backend)"""
    each = [e for e in each if e and sum(e) > 0]
    if not each or len({len(e) for e in each}) != 1:
        return None
    shares = [[100.0 * x / sum(e) for x in e] for e in each]
    return "/".join(f"{statistics.median(col):.0f}" for col in zip(*shares)) + " %"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load_runs(out):
    path = os.path.join(out, "runs.tsv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    runs = []
    for row in rows:
        jpath = os.path.join(out, row["json"])
        try:
            with open(jpath) as jf:
                res = json.load(jf)
        except (OSError, ValueError) as e:
            print(f"warning: {jpath}: {e}; measurement left out", file=sys.stderr)
            continue
        requests = int(res.get("requests", 0))
        clk = float(row["clk_tck"])

        def per_req(ticks):
            if ticks in ("", "NA") or requests <= 0:
                return None
            return int(ticks) / clk * 1e6 / requests

        runs.append(
            {
                **row,
                "rps": float(res.get("rps", 0.0)),
                "p50": res.get("p50_us"),
                "p99": res.get("p99_us"),
                "p999": res.get("p999_us"),
                "requests": requests,
                "errors": int(res.get("errors", 0)),
                "errors_by_kind": res.get("errors_by_kind", {}),
                "cpu": per_req(row["proxy_ticks"]),
                "backend_cpu": per_req(row["backend_ticks"]),
                "backend_each": [
                    int(x) for x in (row.get("backend_ticks_each") or "").split("/") if x
                ],
            }
        )
    return runs


def table(group):
    """group: list of runs of one scenario and worker count. Returns markdown lines."""
    by_target = {}
    for r in group:
        by_target.setdefault(r["target"], []).append(r)
    targets = [t for t in TARGET_ORDER if t in by_target] + sorted(
        t for t in by_target if t not in TARGET_ORDER
    )
    stats = {}
    for t in targets:
        rs = by_target[t]
        rps = [r["rps"] for r in rs]
        stats[t] = {
            "rps": median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50": median([r["p50"] for r in rs]),
            "p99": median([r["p99"] for r in rs]),
            "p999": median([r["p999"] for r in rs]),
            "cpu": median([r["cpu"] for r in rs]),
            "backend_cpu": median([r["backend_cpu"] for r in rs]),
            "backend_share": fmt_share([r["backend_each"] for r in rs]),
            "rounds": len(rs),
            "errors": sum(r["errors"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
        }
    ref = stats.get("nginx")
    lines = [
        "| target | req/s (median, min–max) | p50 µs | p99 µs | p99.9 µs | CPU µs/req "
        "| req/s vs nginx | CPU/req vs nginx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for t in targets:
        s = stats[t]
        rps_ratio = s["rps"] / ref["rps"] if ref and ref["rps"] else None
        cpu_ratio = (
            s["cpu"] / ref["cpu"] if ref and ref["cpu"] and s["cpu"] is not None else None
        )
        name = t + (" †" if s["errors"] else "")
        lines.append(
            f"| {name} | {fmt_int(s['rps'])} ({fmt_int(s['rps_min'])}–{fmt_int(s['rps_max'])}) "
            f"| {fmt_us(s['p50'])} | {fmt_us(s['p99'])} | {fmt_us(s['p999'])} "
            f"| {fmt_cpu(s['cpu'])} | {fmt_ratio(rps_ratio)} | {fmt_ratio(cpu_ratio)} |"
        )
        if s["errors"]:
            kinds = {}
            for r in by_target[t]:
                for k, v in (r["errors_by_kind"] or {}).items():
                    kinds[k] = kinds.get(k, 0) + int(v)
            notes.append(
                f"† {t}: {s['errors']:,} errors in {s['requests']:,} requests over "
                f"{s['rounds']} rounds {kinds if kinds else ''}".rstrip()
            )
    backend = ", ".join(
        f"{t} {fmt_cpu(stats[t]['backend_cpu'])}"
        for t in targets
        if stats[t]["backend_cpu"] is not None
    )
    if backend:
        notes.append(
            f"Backend CPU µs/req, for reference (same backend(s) for every target; it does less "
            f"work per request when requests arrive in bigger batches): {backend}."
        )
    shares = ", ".join(
        f"{t} {stats[t]['backend_share']}"
        for t in targets
        if stats[t]["backend_share"] and "/" in stats[t]["backend_share"]
    )
    if shares:
        notes.append(
            "Backend CPU time split over backends 1/2/3 (median share per round; shows how each "
            f"target spread the requests): {shares}."
        )
    rounds = sorted({s["rounds"] for s in stats.values()})
    notes.append(f"Rounds per target: {', '.join(map(str, rounds))}.")
    return lines, notes


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    runs = load_runs(out)
    if not runs:
        print("no measurements found", file=sys.stderr)
        return 1

    md = ["# Shardgate comparison", ""]
    env = os.path.join(out, "env.txt")
    if os.path.exists(env):
        with open(env) as f:
            md += ["```", f.read().rstrip(), "```", ""]

    groups = {}
    for r in runs:
        groups.setdefault((r["scenario"], int(r["workers"])), []).append(r)
    scen_order = list(SCENARIO_TEXT)
    for key in sorted(
        groups,
        key=lambda k: (scen_order.index(k[0]) if k[0] in scen_order else 99, k[0], k[1]),
    ):
        scen, workers = key
        g = groups[key]
        first = g[0]
        title = SCENARIO_TEXT.get(scen) or partial_title(scen)
        md.append(f"## {scen}: {title} ({size_text(first['size'])}), workers = {workers}")
        md.append("")
        md.append(
            f"Cores: proxy {first['proxy_cpus']}, backend {first['backend_cpus']}, "
            f"load generator {first['load_cpus']}."
            + (
                " **Contended:** the proxy shares a core with the load generator and the "
                "backend; compare CPU µs/req rather than req/s."
                if first["contended"] == "1"
                else ""
            )
        )
        md.append("")
        for note in SCENARIO_NOTES.get(scen, []):
            md.append(note + "  ")
        if scen in SCENARIO_NOTES:
            md.append("")
        lines, notes = table(g)
        md += lines
        md.append("")
        md += [n + "  " for n in notes]
        md.append("")

    md += [
        "CPU µs/req: user+sys CPU of the proxy's processes over the measured run "
        "(/proc/PID/stat), divided by the requests completed; n/a for direct. "
        "Ratios are against nginx's medians (req/s: higher is better; CPU/req: lower is better).",
        "",
    ]
    text = "\n".join(md)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def partial_title(scen):
    """Titles of the partial-* scenarios' runs (compare.sh measure_partial)."""
    base, _, pct = scen.partition("@")
    sat = base.endswith("-sat")
    base = base.removesuffix("-sat")
    closed = {"partial-ka": "small-ka", "partial-newconn": "newconn"}.get(base)
    if closed is None:
        return scen
    kind = SCENARIO_TEXT[closed]
    if sat:
        return f"nginx at saturation (closed loop), {kind}: the rate the open-loop runs scale"
    return f"open loop at {pct} of nginx's saturated rate, {kind}"


if __name__ == "__main__":
    sys.exit(main())
