"""The evaluation plot: each policy's cost–quality points and non-decreasing convex hull, single
models as labelled points, the oracle as a star. Quality-only sets (all costs equal) get a bar
chart instead, and two-model sets a second panel: quality against the share of strong calls.
Drawn from the report dict, so a saved JSON can be re-plotted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    two = "two_model" in report
    fig, axes = plt.subplots(1, 2 if two else 1, figsize=(15 if two else 10, 6.5), squeeze=False)
    ax = axes[0, 0]
    if report["cost_mode"] == "uniform":
        _bars(ax, report)
    else:
        _curves(ax, report)
    if two:
        _shares(axes[0, 1], report)
    fig.suptitle(f"{report['dataset']} / {report['split']} — {report['n_queries']} queries", fontsize=12)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(ax, report: dict[str, Any]) -> None:
    ref = report["reference"]
    scale = 1e3  # USD per 1k queries reads better than per query
    for name, r in report["policies"].items():
        xs = [c * scale for c in r["curve"]["cost"]]
        hx, hy = [c * scale for c in r["hull"]["cost"]], r["hull"]["quality"]
        line = ax.plot(hx, hy, "-", lw=1.8, marker=".", ms=4,
                       label=f"{name} (aiq {r['aiq']:.3f})" if r["aiq"] is not None else name)[0]
        if hx and hx[-1] < ref["c_max"] * scale:  # the flat extension AIQ integrates up to c_max
            ax.plot([hx[-1], ref["c_max"] * scale], [hy[-1], hy[-1]], ":", lw=1.2, color=line.get_color())
        ax.scatter(xs, r["curve"]["quality"], s=8, color=line.get_color(), alpha=0.45)
    for model, m in ref["models"].items():
        ax.scatter([m["cost"] * scale], [m["quality"]], marker="s", color="black", s=22, zorder=5)
        ax.annotate(model.split("/")[-1], (m["cost"] * scale, m["quality"]), fontsize=7,
                    xytext=(4, -3), textcoords="offset points")
    o = ref["oracle"]
    ax.scatter([o["cost"] * scale], [o["quality"]], marker="*", s=180, color="gold", edgecolor="black",
               zorder=6, label=f"oracle ({o['quality']:.3f})")
    ax.axvline(ref["c_max"] * scale, color="grey", ls=":", lw=1)
    ax.set_xlabel("mean cost (USD per 1,000 queries)")
    ax.set_ylabel("mean quality")
    ax.set_title("cost–quality: λ sweep points and non-decreasing convex hull")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _bars(ax, report: dict[str, Any]) -> None:
    ref = report["reference"]
    names = list(report["policies"]) + [f"model: {m.split('/')[-1]}" for m in ref["models"]]
    values = [r["quality_at_best_cost"] or 0.0 for r in report["policies"].values()]
    values += [m["quality"] for m in ref["models"].values()]
    colors = ["tab:blue"] * len(report["policies"]) + ["grey"] * len(ref["models"])
    y = range(len(names))
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(ref["best_single"]["quality"], color="black", ls="--", lw=1, label="best single")
    ax.axvline(ref["oracle"]["quality"], color="gold", ls="-", lw=2, label="oracle")
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=7)
    ax.set_xlabel("mean quality (quality-only set: every model costs 1)")
    ax.set_title("accuracy per policy and per single model")
    ax.legend(fontsize=8, loc="lower right")


def _shares(ax, report: dict[str, Any]) -> None:
    tm = report["two_model"]
    for name, r in report["policies"].items():
        if "pgr_curve" in r:
            ax.plot([100 * s for s in r["pgr_curve"]["share"]], r["pgr_curve"]["quality"], lw=1.5,
                    label=f"{name} (apgr {r['apgr']:.3f})" if r.get("apgr") is not None else name)
    ax.axhline(tm["quality_strong"], color="red", ls="--", lw=1, label=f"strong: {tm['strong'].split('/')[-1]}")
    ax.axhline(tm["quality_weak"], color="grey", ls="--", lw=1, label=f"weak: {tm['weak'].split('/')[-1]}")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("mean quality")
    ax.set_title("RouteLLM view: quality vs share of strong calls")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
