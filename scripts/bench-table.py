"""Prints scripts/bench.sh's table from its raw results (one JSON object a line).

    python3 scripts/bench-table.py RESULTS.jsonl
"""

import json
import sys


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(header, rows):
    rows = [[fmt(c) if not isinstance(c, str) else c for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print()


def verdict(ok):
    return "met" if ok else "NOT met"


def latency_cells(row, key="latency_ms"):
    p = row.get(key) or {}
    return [p.get("p50"), p.get("p90"), p.get("p99"), p.get("p99_9"), p.get("max")]


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = lambda scenario: [r for r in rows if r["scenario"] == scenario]
    find = lambda scenario, name: next((r for r in by(scenario) if r.get("row") == name), None)
    lat_header = ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]

    if by("gateway"):
        print("### gateway (req/s or records/s; latency from send, open loop from the scheduled send)")
        out = []
        for c in (32, 64, 256):
            p, g = find("gateway", f"producer c={c}"), find("gateway", f"gateway c={c}")
            if p:
                out.append([f"plain producer c={c}", f"{p['ok']}/{p['events']}", p["throughput"], *latency_cells(p), "", ""])
            if g:
                ratio = g["throughput"] / p["throughput"] if p and p["throughput"] else None
                out.append([f"gateway c={c}", f"{g['ok']}/{g['events']}", g["throughput"], *latency_cells(g),
                            fmt(ratio, 3), f"≥ 0.80 {verdict(ratio is not None and ratio >= 0.8)}"])
        o = find("gateway", "gateway open 1000/s")
        if o:
            p99 = (o.get("latency_ms") or {}).get("p99")
            out.append([f"gateway open 1000/s ({o['skipped']} skipped, {o['late']} late)", f"{o['ok']}/{o['events']}",
                        o["throughput"], *latency_cells(o), "", f"p99 < 50 ms {verdict(p99 is not None and p99 < 50)}"])
        table(["run", "2xx / sent", "throughput", *lat_header, "ratio", "target"], out)

    if by("enricher"):
        print("### enricher (records/s draining the same backlog of stripe.events)")
        base = find("enricher", "consume-decode-produce baseline")
        out = []
        for name in ("plain consumer group (read only)", "consume-decode-produce baseline", "enricher"):
            r = find("enricher", name)
            if not r:
                continue
            ratio = r["throughput"] / base["throughput"] if base and name == "enricher" else None
            target = f"≥ 0.70 {verdict(ratio >= 0.7)}" if ratio is not None else ""
            out.append([name, r["done"], r["elapsed_s"], r["throughput"], fmt(ratio, 3) if ratio else "", target])
        table(["reader", "records", "seconds", "records/s", "ratio to baseline", "target"], out)

    if by("sink"):
        print("### sink (changes/s into the limited emulator)")
        seed, sink = find("sink", "seed writer"), find("sink", "sink-dataverse")
        m, c = find("sink", "sink-metrics") or {}, find("sink", "ceiling")
        out = []
        ceiling = None
        if c:
            lat = c["latency_ms"] / 1000.0
            per_s = 1000.0 / c["window_ms"]
            ceilings = {
                "execution": c["max_execution_time_ms"] * per_s / 1000.0 / lat,
                "requests": c["max_requests"] * per_s * c["batch_size"],
                "concurrency": c["max_concurrent"] / lat,
            }
            ceiling = min(ceilings.values())
            print("ceiling changes/s = min(execution budget/s ÷ op latency = {execution:.1f}, "
                  "requests/s × batch size = {requests:.1f}, max_concurrent ÷ op latency = {concurrency:.1f})"
                  " = {0:.1f} (one operation per change; batch size {1})".format(ceiling, c["batch_size"], **ceilings))
        if seed:
            out.append(["seed writer (PATCH per change, sequential)", seed["done"], seed["elapsed_s"], seed["throughput"],
                        fmt(seed.get("throttled_seconds", 0) / seed["elapsed_s"]), "", "", ""])
        writing = find("sink", "sink-dataverse (writing)")
        for name, r in (("sink-dataverse, from its start", sink), ("sink-dataverse, from its first write", writing)):
            if not r:
                continue
            frac = m.get("throttled_seconds", 0) / r["elapsed_s"] if r["elapsed_s"] else None
            to_ceiling = r["throughput"] / ceiling if ceiling else None
            to_seed = r["throughput"] / seed["throughput"] if seed and seed["throughput"] else None
            out.append([name, r["done"], r["elapsed_s"], r["throughput"], fmt(frac),
                        f"{fmt(to_ceiling, 3)} (≥ 0.9 {verdict(to_ceiling is not None and to_ceiling >= 0.9)})",
                        f"{fmt(to_seed)} (≥ 6 {verdict(to_seed is not None and to_seed >= 6)})",
                        f"{m.get('throttled', '-')} × 429"])
        table(["writer", "changes", "seconds", "changes/s", "time throttled", "ratio to ceiling", "ratio to seed", "429s"], out)

    if by("e2e"):
        print("### e2e (open loop; HTTP latency from the scheduled send, e2e from the 2xx to the contact)")
        out = []
        for r in by("e2e"):
            if "e2e_ms" not in r:
                continue
            out.append([f"{r['row']} http", f"{r['ok']}/{r['events']}", r["throughput"], *latency_cells(r), ""])
            p99 = r["e2e_ms"].get("p99")
            out.append([f"{r['row']} 2xx→contact ({r['e2e_missing']} missing)", r["e2e_acked"], "", *latency_cells(r, "e2e_ms"),
                        f"p99 < 1000 ms {verdict(p99 is not None and p99 < 1000 and r['e2e_missing'] == 0)}"])
        table(["run", "events", "throughput", *lat_header, "target"], out)

    rss = [r for r in rows if r.get("row") == "rss"]
    if rss:
        print("### peak RSS (VmHWM just before stopping)")
        stages = {"gateway", "enricher", "sink-dataverse"}
        out = []
        for r in rss:
            mib = r["kib"] / 1024.0
            target = ""
            if r["scenario"] == "e2e" and r["process"] in stages:
                target = f"< 100 MiB {verdict(mib < 100)}"
            out.append([r["scenario"], r["process"], mib, target])
        table(["scenario", "process", "MiB", "target"], out)


if __name__ == "__main__":
    main(sys.argv[1])
