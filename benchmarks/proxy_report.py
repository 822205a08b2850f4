"""The proxy-overhead benchmark's report: percentiles, ratios, and the tables and notes built from the JSON document."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.proxy_services import Target

TARGET_P50_RATIO = 0.5  # expertmux's added p50 at most half of LiteLLM proxy's
TARGET_RPS_RATIO = 2.0  # expertmux's sustained req/s at least twice LiteLLM proxy's


def percentile(hist: list[list[int]] | list[tuple[int, int]], p: float) -> int:
    """Nearest-rank percentile of a sorted [value, count] histogram."""
    total = sum(c for _, c in hist)
    if not total:
        return 0
    rank, seen = max(1, math.ceil(p / 100 * total)), 0
    for value, count in hist:
        seen += count
        if seen >= rank:
            return value
    return hist[-1][0]


def merge_hists(runs: list[dict]) -> list[tuple[int, int]]:
    counts: dict[int, int] = {}
    for run in runs:
        for value, count in run["hist"]:
            counts[value] = counts.get(value, 0) + count
    return sorted(counts.items())


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def summarize(targets: list[Target]) -> dict:
    by = {t.key: t for t in targets if t.available}
    out: dict[str, Any] = {}
    lite = by.get("litellm")
    for key in ("expertmux", "expertmux_expert"):
        mux = by.get(key)
        if not mux or not lite:
            continue
        r: dict[str, float | None] = {}
        for mode in ("nonstream", "stream"):
            for p in ("p50", "p99"):
                a = mux.results.get("latency", {}).get(mode, {}).get(f"added_{p}_ms")
                b = lite.results.get("latency", {}).get(mode, {}).get(f"added_{p}_ms")
                r[f"added_{p}_ms_{mode}"] = ratio(a, b)
        r["max_sustained_rps"] = ratio(mux.results.get("throughput", {}).get("max_sustained_rps"),
                                       lite.results.get("throughput", {}).get("max_sustained_rps"))
        out[f"{key}/litellm"] = r
    return out


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def report_tables(doc: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables, built from the JSON document alone."""
    live = [(k, t) for k, t in doc["targets"].items() if t["available"] and "latency" in t]
    ratios = doc["ratios"].get("expertmux/litellm", {})
    ratio_col = "expertmux auto / LiteLLM"

    header = ["added latency, ms", *(t["label"] for _, t in live), ratio_col]
    rows = []
    for mode, mode_label in (("nonstream", "non-streaming"), ("stream", "streaming, last byte")):
        for p in ("p50", "p99"):
            row = [f"{mode_label} {p}"]
            for key, t in live:
                m = t["latency"].get(mode)
                if not m:
                    row.append("–")
                elif key == "direct":
                    row.append(f"({m[f'{p}_ms']:.3f} abs)")
                else:
                    row.append(f"{m[f'added_{p}_ms']:.2f}")
            row.append(_fmt(ratios.get(f"added_{p}_ms_{mode}")))
            if any(c != "–" for c in row[1:-1]):
                rows.append(row)
    n = {key: t["latency"].get("nonstream", {}).get("n") for key, t in live}
    rows.append(["sequential requests (non-streaming)", *(str(n[k]) for k, _ in live), ""])
    tables = [("Added latency at concurrency 1: proxy minus direct at the same percentile", header, rows)]

    header = ["req/s at concurrency", *(t["label"] for _, t in live), ratio_col]
    rows = []
    for i, c in enumerate(doc["settings"]["concurrency"]):
        row, rates = [str(c)], {}
        for key, t in live:
            levels = t.get("throughput", {}).get("levels", [])
            lv = levels[i] if i < len(levels) else None
            if lv is None:
                row.append("–")
                continue
            rates[key] = lv["rps"]
            row.append(f"{lv['rps']:.0f}" + (f" ({100 * lv['error_rate']:.1f}% err)" if lv["error_rate"] else ""))
        row.append(_fmt(ratio(rates.get("expertmux"), rates.get("litellm"))))
        rows.append(row)
    best, cpu = ["highest sustained (errors < 1%)"], ["proxy CPU ms per request, at that level"]
    cpu_of: dict[str, float | None] = {}
    for key, t in live:
        tp = t.get("throughput")
        if not tp or tp.get("at_concurrency") is None:
            best.append("–")
            cpu.append("–")
            continue
        best.append(f"{tp['max_sustained_rps']:.0f} (c={tp['at_concurrency']})")
        lv = next(lv for lv in tp["levels"] if lv["concurrency"] == tp["at_concurrency"])
        cpu_of[key] = lv.get("cpu_ms_per_request") if key != "direct" else None
        cpu.append(_fmt(cpu_of[key]))
    best.append(_fmt(ratios.get("max_sustained_rps")))
    cpu.append(_fmt(ratio(cpu_of.get("expertmux"), cpu_of.get("litellm"))))
    rows += [best, cpu]
    tables.append((f"Throughput, non-streaming, closed loop, {doc['settings']['duration_s']:g} s per level", header, rows))
    tables.append(_tail_table(doc, live))
    return tables


def _tail_table(doc: dict, live: list) -> tuple[str, list[str], list[list[str]]]:
    """Per level and proxy: latency p50 / p99 over all its rounds, p99 ÷ p50, and failed requests by kind."""
    header = ["concurrency", *(t["label"] for key, t in live if key != "direct")]
    rows = []
    for i, c in enumerate(doc["settings"]["concurrency"]):
        row = [str(c)]
        for key, t in live:
            if key == "direct":
                continue
            levels = t.get("throughput", {}).get("levels", [])
            lv = levels[i] if i < len(levels) else None
            if lv is None or lv.get("p99_ms") is None:
                row.append("–")
                continue
            failed = {k: v for k, v in (lv.get("errors") or {}).items() if v}
            lag = lv.get("loop_lag")
            lag_txt = (f"; loop lag > 0.1 s in {100 * lag['over_100ms']:.1f} % of ticks" if lag else "")
            row.append(f"{lv['p50_ms']:.0f} / {lv['p99_ms']:.0f} ms (×{lv['p99_ms'] / max(lv['p50_ms'], 1e-9):.1f}); "
                       + (", ".join(f"{v} {k}" for k, v in failed.items()) or "0 failed") + lag_txt)
        rows.append(row)
    return "Latency under load: p50 / p99 (p99 ÷ p50) and failed requests", header, rows


def report_notes(doc: dict) -> list[str]:
    notes = []
    for key, t in doc["targets"].items():
        if key == "direct":
            continue
        status = f"ledger: {t['ledger']}" if t["available"] else f"NOT MEASURED: {t['note']}"
        start = f", ready {t['startup_s']:.1f} s after start" if t.get("startup_s") is not None else ""
        notes.append(f"{t['label']} (model {t['model']}){start}; {status}")
    if doc.get("ledger_rows"):
        sent = doc.get("requests_completed", {}).get("expertmux", 0)
        notes.append(f"expertmux ledger rows after the run: {doc['ledger_rows']}; requests completed through expertmux "
                     f"by the load generator: {sent} (the ledger also has the checks and the requests cut off at the "
                     "end of each timed run)")
    ratios = doc["ratios"].get("expertmux/litellm", {})
    if ratios:
        p50, rps = ratios.get("added_p50_ms_nonstream"), ratios.get("max_sustained_rps")
        notes.append(f"targets: added p50 expertmux/LiteLLM {_fmt(p50)} (wanted <= {TARGET_P50_RATIO}: "
                     f"{'met' if p50 is not None and p50 <= TARGET_P50_RATIO else 'NOT met'}); sustained req/s "
                     f"expertmux/LiteLLM {_fmt(rps)} (wanted >= {TARGET_RPS_RATIO}: "
                     f"{'met' if rps is not None and rps >= TARGET_RPS_RATIO else 'NOT met'})")
    m = doc["machine"]
    auth = doc["settings"].get("auth")
    if auth:
        notes.append("API keys: " + ("an expertmux key and LiteLLM's master key checked on every request" if auth == "on"
                                     else "off on both proxies"))
    notes.append(f"load generator: {m['load_generator']}; CPU pinning: {m['pinning']}; "
                 f"load average before/after: {m['loadavg_before']} / {m['loadavg_after']}")
    return notes


def print_report(doc: dict) -> None:
    """Rich tables when rich is installed (it is in the project's virtualenv), plain text otherwise."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        Console = None  # noqa: N806
    for title, header, rows in report_tables(doc):
        if Console is None:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            print(f"\n{title}")
            for r in [header, *rows]:
                print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
            continue
        table = Table(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            table.add_row(*r)
        console = Console()
        (console if console.is_terminal else Console(width=160)).print(table)
    for note in report_notes(doc):
        print(note)


def markdown_report(doc: dict) -> str:
    out = []
    for title, header, rows in report_tables(doc):
        out.append(f"**{title}**\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        out += ["| " + " | ".join(r) + " |" for r in rows]
        out.append("")
    out += [f"- {note}" for note in report_notes(doc)]
    return "\n".join(out) + "\n"
