"""The evaluation report as rich tables and as Markdown (for the README)."""

from __future__ import annotations

from typing import Any


def _f(v: Any, digits: int = 3, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    text = f"{100 * v:.1f}%" if pct else f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.%") else text  # no "-0.000"


def _beats(r: dict[str, Any]) -> str:
    """yes / no, with the paired gain over the best single model ± 2 standard errors."""
    d, se = r.get("delta_vs_best_single"), r.get("delta_se")
    if d is None:
        return _f(r["beats_best_single"])
    verdict = "no" if not r["beats_best_single"] else ("yes" if r["significant"] else "within noise")
    return f"{verdict} ({d:+.3f} ± {2 * se:.3f})"


def _cost(v: float | None, uniform: bool) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if uniform else f"${v * 1e3:.4f}/1k"


def columns(report: dict[str, Any]) -> list[str]:
    cols = ["policy", "aiq", "quality@best-cost", "cost→best-quality", "gap closed", "beats best single"]
    if "two_model" in report:
        cols += ["apgr", "cpt50", "cpt80"]
    return cols + ["fit s", "ms/query", "decide() ms"]


def policy_rows(report: dict[str, Any]) -> list[list[str]]:
    two = "two_model" in report
    rows = []
    for name, r in report["policies"].items():
        row = [name, _f(r["aiq"], 4), _f(r["quality_at_best_cost"]), _f(r["cost_to_best_quality"], pct=True),
               _f(r["gap_closed"], 3), _beats(r)]
        if two:
            row += [_f(r.get("apgr")), _f(r.get("cpt50"), pct=True), _f(r.get("cpt80"), pct=True)]
        row += [f"{r['fit_s']:.2f}", _f(r["decision_ms_per_query"], 4), _f(r.get("decide_single_ms"), 2)]
        rows.append(row)
    return rows


def reference_rows(report: dict[str, Any]) -> list[list[str]]:
    ref, uniform = report["reference"], report["cost_mode"] == "uniform"
    out = []
    for key in ("best_single", "cheapest", "random", "oracle"):
        r = ref[key]
        out.append([key, r.get("model", "—"), _f(r["quality"]), _cost(r["cost"], uniform)])
    return out


def per_task_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Quality per task of the best single model and of each policy at its best-cost point."""
    pols = [n for n in report["policies"]]
    best = report["reference"]["best_single"]
    head = ["task", f"best single ({best['model'].split('/')[-1]})", *pols]
    rows = []
    for task, q in best.get("per_task", {}).items():
        rows.append([task, _f(q), *[_f(report["policies"][n]["per_task"].get(task)) for n in pols]])
    return head, rows


def headline(report: dict[str, Any]) -> str:
    how = f"{report['n_folds']}-fold CV grouped by prompt" if report["cross_validated"] else f"train {report['n_train']} rows"
    cost = "quality-only (every model costs 1)" if report["cost_mode"] == "uniform" else "cost in USD per query"
    return (f"{report['dataset']} / {report['split']}: {report['n_queries']} queries, {report['n_models']} models, "
            f"{how}, {cost}, λ grid {report['lambda_grid']['n']} points, encoder {report['encoder']}")


def print_report(report: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal and console.width < 160:  # a log file or pipe: keep the columns whole
        console = Console(file=console.file, width=160)
    console.print(f"[bold]{headline(report)}[/]")
    ref = Table(title="reference points (evaluation rows)", show_lines=False)
    for c in ("reference", "model", "quality", "mean cost"):
        ref.add_column(c)
    for row in reference_rows(report):
        ref.add_row(*row)
    console.print(ref)
    tab = Table(title="policies")
    for c in columns(report):
        tab.add_column(c, justify="left" if c == "policy" else "right")
    for row in policy_rows(report):
        tab.add_row(*row)
    console.print(tab)
    if "two_model" in report:
        tm = report["two_model"]
        console.print(f"two-model figures: strong = {tm['strong']} ({tm['quality_strong']:.3f}), "
                      f"weak = {tm['weak']} ({tm['quality_weak']:.3f}), on {tm['n_queries']} queries")
    head, rows = per_task_table(report)
    if rows:
        tt = Table(title="quality per task (each policy at its best operating point within the best single model's cost)")
        for i, c in enumerate(head):
            tt.add_column(c, justify="left" if i == 0 else "right")
        for row in rows:
            tt.add_row(*row)
        console.print(tt)
    t = report["timing"]
    console.print(f"embedding: {t['texts_encoded']} texts encoded in {t['embed_s']:.1f} s; total {t['total_s']:.1f} s")


def markdown(report: dict[str, Any]) -> str:
    """The same two tables in Markdown."""
    lines = [f"**{headline(report)}**", "", "| reference | model | quality | mean cost |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in reference_rows(report)]
    cols = columns(report)
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in policy_rows(report)]
    head, rows = per_task_table(report)
    if rows:
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
