#!/usr/bin/env python3
"""Turn bench/compare.sh's raw per-run CSV into medians with min-max spreads.

  aggregate.py RAW.csv OUT.csv OUT.md [--meta "key: value"]...

OUT.csv has one row per (scenario, proxy) with <metric>_median, <metric>_min, <metric>_max.
OUT.md has one table per scenario, a table of ratios (weir/nginx, weir/haproxy,
weir/ceiling) computed from the medians, and a table of paired ratios: each round's
weir/other ratio (the runs of one round are minutes apart), their median, and in how many
rounds weir came out ahead.  Standard library only.
"""

import csv
import statistics
import sys

PROXY_ORDER = ["weir", "nginx", "haproxy", "ceiling"]

# (column in raw csv, label, format)
THROUGHPUT_METRICS = [
    ("rps", "req/s", "{:,.0f}"),
    ("mib_s", "MiB/s", "{:,.1f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("p999_ms", "p99.9 ms", "{:.2f}"),
    ("errors", "errors", "{:,.0f}"),
    ("cpu_s", "proxy CPU s", "{:.2f}"),
    ("rps_per_cpu_s", "req per CPU-s", "{:,.0f}"),
    ("peak_rss_kib", "peak RSS MiB", None),  # shown in MiB
    ("upstream_cpu_s", "upstream CPU s", "{:.2f}"),
    ("loadgen_cpu_pct", "loadgen CPU %", "{:.0f}"),
]
IDLE_METRICS = [
    ("idle_ok", "conns held", "{:,.0f}"),
    ("rss_before_kib", "RSS before MiB", None),
    ("rss_with_kib", "RSS with conns MiB", None),
    ("bytes_per_conn", "bytes/conn", "{:,.0f}"),
]
LOADGEN_BOUND = 90  # loadgen CPU % from which a row measures the load generator
ALL_METRICS = [m[0] for m in THROUGHPUT_METRICS + IDLE_METRICS]


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def fmt(value, spec, kib=False):
    if value is None:
        return "–"
    if kib:
        return "{:,.1f}".format(value / 1024)
    return spec.format(value)


def main():
    raw, out_csv, out_md = sys.argv[1:4]
    meta = []
    args = sys.argv[4:]
    while args:
        if args[0] == "--meta" and len(args) > 1:
            meta.append(args[1])
            args = args[2:]
        else:
            sys.exit(f"unexpected argument {args[0]!r}")

    with open(raw, newline="") as f:
        rows = list(csv.DictReader(f))

    scenarios = []
    groups = {}
    notes = {}
    by_round = {}  # (scenario, proxy) -> {round: row} for ok runs
    for r in rows:
        key = (r["scenario"], r["proxy"])
        if r["status"] == "ok":
            by_round.setdefault(key, {})[r["round"]] = r
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
        g = groups.setdefault(key, {"ok": 0, "failed": 0, "vals": {m: [] for m in ALL_METRICS}})
        if r["status"] == "ok":
            g["ok"] += 1
            for m in ALL_METRICS:
                v = num(r.get(m))
                if v is not None:
                    g["vals"][m].append(v)
        else:
            g["failed"] += 1
        if r.get("note"):
            tag = "failed" if r["status"] != "ok" else "note"
            notes.setdefault(key, []).append(f"round {r['round']} {tag}: {r['note']}")

    def stat(key, m):
        g = groups.get(key)
        if not g or not g["vals"][m]:
            return None, None, None
        vs = g["vals"][m]
        return statistics.median(vs), min(vs), max(vs)

    # ---- CSV ----
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        header = ["scenario", "proxy", "runs_ok", "runs_failed"]
        for m in ALL_METRICS:
            header += [f"{m}_median", f"{m}_min", f"{m}_max"]
        header.append("notes")
        w.writerow(header)
        for sc in scenarios:
            for p in PROXY_ORDER:
                key = (sc, p)
                if key not in groups:
                    continue
                g = groups[key]
                row = [sc, p, g["ok"], g["failed"]]
                for m in ALL_METRICS:
                    med, lo, hi = stat(key, m)
                    row += ["" if v is None else round(v, 4) for v in (med, lo, hi)]
                row.append(" | ".join(notes.get(key, [])))
                w.writerow(row)

    # ---- Markdown ----
    out = []
    out.append("# weir side-by-side benchmark: latest results\n")
    for line in meta:
        out.append(f"- {line}")
    out.append("")
    out.append("Medians over the rounds; `a–b` is the min–max over the rounds. "
               "Errors are socket errors (connect/read/write/timeout) plus HTTP status >= 400, "
               "summed per run. † marks a row where the load generator used >= 90 % of its core: that row is "
               "bounded by the load generator (wrk/h2load/tlsload), not by the server. Proxy CPU s is utime+stime of all the proxy's processes during the "
               "run; for *ceiling* it is the upstream's own CPU. Loadgen CPU % is the load "
               "generator's CPU time over wall time (100 % = one full core).\n")

    for sc in scenarios:
        idle = sc.startswith("idle")
        metrics = IDLE_METRICS if idle else THROUGHPUT_METRICS
        out.append(f"## {sc}\n")
        cols = ["proxy", "runs ok/failed"] + [label for _, label, _ in metrics]
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join(["---"] * len(cols)) + "|")
        for p in PROXY_ORDER:
            key = (sc, p)
            if key not in groups:
                continue
            g = groups[key]
            cells = [p, f"{g['ok']}/{g['failed']}"]
            for m, _label, spec in metrics:
                med, lo, hi = stat(key, m)
                kib = spec is None
                if med is None:
                    cells.append("–")
                elif lo == hi:
                    cells.append(fmt(med, spec, kib))
                else:
                    cells.append(f"{fmt(med, spec, kib)} ({fmt(lo, spec, kib)}–{fmt(hi, spec, kib)})")
                if m == "rps" and (stat(key, "loadgen_cpu_pct")[0] or 0) >= LOADGEN_BOUND:
                    cells[-1] += " †"
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        for p in PROXY_ORDER:
            for n in notes.get((sc, p), []):
                out.append(f"- {p}, {n}")
        out.append("")

    # ratios
    out.append("## Ratios (from the medians)\n")
    out.append("Throughput ratios > 1 mean weir is faster; p99 and RSS ratios > 1 mean weir is "
               "slower / larger. † on weir/ceiling: the ceiling run was bounded by the load "
               "generator, so the true ceiling is higher and the ratio is flattering. ‡ on a req/s "
               "ratio: weir's own run was bounded by the load generator, so weir could take more "
               "and the ratio understates it (it means nothing when the other run was bounded "
               "too).\n")
    cols = ["scenario", "req/s weir/nginx", "req/s weir/haproxy", "req/s weir/ceiling",
            "req per CPU-s weir/nginx", "req per CPU-s weir/haproxy", "p99 weir/nginx",
            "peak RSS weir/nginx", "bytes/conn weir/nginx"]
    out.append("| " + " | ".join(cols) + " |")
    out.append("|" + "|".join(["---"] * len(cols)) + "|")

    def ratio(sc, m, other):
        a = stat((sc, "weir"), m)[0]
        b = stat((sc, other), m)[0]
        if a is None or b is None or b == 0:
            return "–"
        return f"{a / b:.2f}"

    for sc in scenarios:
        if sc.startswith("idle"):
            cells = [sc, "–", "–", "–", "–", "–", "–", "–", ratio(sc, "bytes_per_conn", "nginx")]
        else:
            weir_bound = (stat((sc, "weir"), "loadgen_cpu_pct")[0] or 0) >= LOADGEN_BOUND
            rps = {}
            for other in ("nginx", "haproxy", "ceiling"):
                rps[other] = ratio(sc, "rps", other)
                if rps[other] == "–":
                    continue
                if other == "ceiling" and (stat((sc, other), "loadgen_cpu_pct")[0] or 0) >= LOADGEN_BOUND:
                    rps[other] += " †"
                if weir_bound:
                    rps[other] += " ‡"
            cells = [sc, rps["nginx"], rps["haproxy"], rps["ceiling"], ratio(sc, "rps_per_cpu_s", "nginx"),
                     ratio(sc, "rps_per_cpu_s", "haproxy"), ratio(sc, "p99_ms", "nginx"),
                     ratio(sc, "peak_rss_kib", "nginx"), "–"]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.extend(paired_table(scenarios, by_round))

    with open(out_md, "w") as f:
        f.write("\n".join(out))


# (metric, other proxy, column label, whether lower is better for weir)
PAIRED = [
    ("rps", "nginx", "req/s weir/nginx", False),
    ("rps", "haproxy", "req/s weir/haproxy", False),
    ("rps_per_cpu_s", "nginx", "req per CPU-s weir/nginx", False),
    ("rps_per_cpu_s", "haproxy", "req per CPU-s weir/haproxy", False),
    ("p99_ms", "nginx", "p99 weir/nginx", True),
    ("p99_ms", "haproxy", "p99 weir/haproxy", True),
]


def paired_table(scenarios, by_round):
    """Per-round ratios: the machine's speed drifts between rounds (all proxies faster in one
    round than in another), and a ratio of medians can pair one proxy's fast round with
    another's slow one; the runs of one round are minutes apart, so their ratio does not."""
    out = ["## Paired ratios (per round)\n",
           "Each cell: the median over the rounds of that round's weir/other ratio, then in how "
           "many rounds weir was ahead (higher throughput, lower p99) out of the rounds both "
           "completed.\n"]
    cols = ["scenario"] + [label for _, _, label, _ in PAIRED]
    out.append("| " + " | ".join(cols) + " |")
    out.append("|" + "|".join(["---"] * len(cols)) + "|")
    for sc in scenarios:
        if sc.startswith("idle"):
            continue
        cells = [sc]
        for m, other, _label, lower_better in PAIRED:
            weir = by_round.get((sc, "weir"), {})
            them = by_round.get((sc, other), {})
            ratios = []
            for rnd, wr in weir.items():
                a, b = num(wr.get(m)), num(them.get(rnd, {}).get(m))
                if a is not None and b:
                    ratios.append(a / b)
            if not ratios:
                cells.append("–")
                continue
            ahead = sum(1 for x in ratios if (x < 1 if lower_better else x > 1))
            cells.append(f"{statistics.median(ratios):.2f} ({ahead}/{len(ratios)})")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


if __name__ == "__main__":
    main()
