"""Summaries of R2R benchmark records: per-configuration statistics, comparison at equal LLM share,
paired bootstrap, speed bound, and the tables and Markdown that show them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from benchmarks.r2r import Config

SHARES = (0.1, 0.2, 0.3, 0.4, 0.5)


def _per_token(r: dict, e2e: bool) -> float:
    return (r["seconds"] + (r["prefill_used"] if e2e else 0.0)) / max(r["tokens"], 1)


def summarise(records: list[dict], configs: list[Config]) -> dict[str, dict]:
    """Per configuration: share, agreement, and speed against the LLM alone.

    Speed ratios are the median over prompts of the paired ratio (LLM alone's seconds per token on
    that prompt / this run's), so a burst of load from other processes that hits a few runs does
    not swing the figure; the totals-based tokens/s are kept in the JSON as well.
    """
    out = {}
    by_prompt: dict[int, dict[str, dict]] = {}
    for r in records:
        by_prompt.setdefault(r["prompt"], {})[r["config"]] = r
    for cfg in configs:
        rs = [r for r in records if r["config"] == cfg.key]
        pairs = [(p["llm-only"], p[cfg.key]) for p in by_prompt.values() if p[cfg.key]["tokens"] and p["llm-only"]["tokens"]]
        decode = [_per_token(a, False) / _per_token(b, False) for a, b in pairs]
        e2e = [_per_token(a, True) / _per_token(b, True) for a, b in pairs]
        tokens = sum(r["tokens"] for r in rs)
        seconds = sum(r["seconds"] for r in rs)
        out[cfg.key] = {
            "method": cfg.method, "knob": cfg.knob, "target_share": cfg.target, "prompts": len(rs),
            "llm_share": sum(r["llm_tokens"] for r in rs) / max(tokens, 1),
            "same_answer": float(np.mean([r["same_answer"] for r in rs])),
            "token_match": float(np.mean([r["token_match"] for r in rs])),
            "prefix_match": float(np.mean([r["prefix_match"] for r in rs])),
            "decode_speedup_vs_llm": float(np.median(decode)),
            "decode_speedup_iqr": [float(x) for x in np.percentile(decode, [25, 75])],
            "e2e_speedup_vs_llm": float(np.median(e2e)),
            "ms_per_token": 1000 * float(np.median([_per_token(r, False) for r in rs])),
            "decode_tok_s_total": tokens / seconds if seconds else 0.0,
            "slm_ms_per_token": 1000 * sum(r["slm_eval_s"] for r in rs) / max(tokens, 1),
            "llm_ms_per_token": 1000 * sum(r["llm_eval_s"] for r in rs) / max(tokens, 1),
            # runs recorded before LLM turns were counted lack ``llm_calls``: n/a rather than a guess
            "llm_calls_per_token": (sum(r["llm_calls"] for r in rs) / max(tokens, 1)
                                    if all("llm_calls" in r for r in rs) else None),
            "retokenized_per_100_tokens": 100 * sum(r["retokenized"] for r in rs) / max(tokens, 1),
            "mean_tokens": tokens / max(len(rs), 1),
        }
    return out


def at_equal_share(summary: dict[str, dict], metric: str) -> dict[str, dict[str, float | None]]:
    """Each method's ``metric`` interpolated at the shares in ``SHARES`` (None outside its measured range)."""
    ends = [(0.0, summary["slm-only"][metric]), (1.0, 1.0)]  # the SLM alone; the LLM alone agrees with itself
    out: dict[str, dict[str, float | None]] = {}
    for method in ("learned", "confidence", "random"):
        pts = sorted([(v["llm_share"], v[metric]) for v in summary.values() if v["method"] == method] + ends)
        xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        measured = [p[0] for p in pts if 0.0 < p[0] < 1.0]
        out[method] = {f"{s:g}": (float(np.interp(s, xs, ys)) if measured and min(measured) - 0.05 <= s <= max(measured) + 0.05
                                  else None) for s in SHARES}
    return out


def speed_bound(records: list[dict], summary: dict[str, dict], target: float = 1.2, faithful: float = 0.8) -> dict:
    """How fast R2R can be on this pair, from the measured per-token costs (medians over prompts).

    Every position costs one SLM step (c_s); a share s of them also costs an LLM step (c_l), so
    at best (free hand-overs, free router) R2R runs at c_l / (c_s + s·c_l) of the LLM's speed. The
    measured variant adds what the runs show on top: the router and bookkeeping per token, and the
    LLM's catch-up on the SLM's tokens per LLM token. ``share_for_faithful`` is the least LLM share
    at which the learned router matches the LLM's final answer on ``faithful`` of the prompts.
    """
    def med(values: list[float]) -> float:
        return float(np.median(values)) if values else float("nan")

    c_s = med([r["slm_eval_s"] / r["tokens"] for r in records if r["config"] == "slm-only" and r["tokens"]])
    c_l = med([r["llm_eval_s"] / r["tokens"] for r in records if r["config"] == "llm-only" and r["tokens"]])
    learned = [r for r in records if r["config"].startswith("learned@") and r["tokens"]]
    overhead = med([(r["seconds"] - r["slm_eval_s"] - r["llm_eval_s"]) / r["tokens"] for r in learned])
    c_l_turn = med([r["llm_eval_s"] / r["llm_tokens"] for r in learned if r["llm_tokens"]])
    c_s_mix = med([r["slm_eval_s"] / r["tokens"] for r in learned])
    pts = sorted([(v["llm_share"], v["same_answer"]) for v in summary.values() if v["method"] == "learned"]
                 + [(0.0, summary["slm-only"]["same_answer"]), (1.0, 1.0)])
    grid = np.linspace(0, 1, 1001)
    agree = np.interp(grid, [p[0] for p in pts], [p[1] for p in pts])
    share = float(grid[np.argmax(agree >= faithful)])

    def free(x: float) -> float:
        return c_l / (c_s + x * c_l)

    def measured(x: float) -> float:
        return c_l / (c_s_mix + overhead + x * c_l_turn)

    return {"slm_ms_per_token": 1000 * c_s, "llm_ms_per_token": 1000 * c_l, "slm_speed_ratio": c_l / c_s,
            "slm_ms_per_token_in_r2r": 1000 * c_s_mix, "router_overhead_ms_per_token": 1000 * overhead,
            "llm_ms_per_llm_token_in_r2r": 1000 * c_l_turn, "share_for_faithful": share, "faithful": faithful,
            "target": target, "bound_free_at_share": free(share), "bound_measured_at_share": measured(share),
            "max_share_for_target_free": max(0.0, (c_l / target - c_s) / c_l),
            "max_share_for_target_measured": max(0.0, (c_l / target - c_s_mix - overhead) / c_l_turn),
            "slm_ratio_needed_free": 1 / (1 / target - share)}


def bound_lines(b: dict) -> list[str]:
    return [
        f"Per-token costs (median over prompts): SLM {b['slm_ms_per_token']:.1f} ms, LLM {b['llm_ms_per_token']:.1f} ms "
        f"(the SLM is {b['slm_speed_ratio']:.2f}× faster). Inside R2R runs: SLM {b['slm_ms_per_token_in_r2r']:.1f} ms on every "
        f"token, router and bookkeeping {b['router_overhead_ms_per_token']:.2f} ms per token, LLM "
        f"{b['llm_ms_per_llm_token_in_r2r']:.1f} ms per LLM token (catch-up included).",
        f"Learned router: ≥ {b['faithful']:.0%} same answer needs an LLM share of {b['share_for_faithful']:.1%}. There the "
        f"speed bound is {b['bound_free_at_share']:.2f}× LLM-only with free hand-overs, "
        f"{b['bound_measured_at_share']:.2f}× with the measured overheads. {b['target']:g}× allows at most "
        f"{b['max_share_for_target_free']:.1%} LLM share (free) or {b['max_share_for_target_measured']:.1%} (measured); "
        f"at {b['share_for_faithful']:.1%} it needs an SLM ≥ {b['slm_ratio_needed_free']:.2f}× faster than the LLM.",
    ]


def paired_bootstrap(by_config: dict[str, list[dict]], summary: dict[str, dict], n: int = 2000, seed: int = 0) -> dict:
    """How sure the learned router's lead is: resample prompts (the same ones for every method),
    recompute every configuration's share and same-answer rate, interpolate at equal share.

    Per share: the 95 % interval of learned − baseline (points of same answer) and the share of
    resamples in which the learned router is ahead; None where a method was not measured there.
    """
    keys = [k for k in summary if k in by_config]
    n_prompts = len(by_config["llm-only"])
    tokens = {k: np.array([r["tokens"] for r in by_config[k]], float) for k in keys}
    llm = {k: np.array([r["llm_tokens"] for r in by_config[k]], float) for k in keys}
    same = {k: np.array([r["same_answer"] for r in by_config[k]], float) for k in keys}
    rng = np.random.default_rng(seed)
    diffs: dict[str, dict[str, list[float]]] = {b: {f"{x:g}": [] for x in SHARES} for b in ("confidence", "random")}
    for _ in range(n):
        idx = rng.integers(0, n_prompts, n_prompts)
        boot = {k: {"method": summary[k]["method"], "llm_share": llm[k][idx].sum() / max(tokens[k][idx].sum(), 1),
                    "same_answer": same[k][idx].mean()} for k in keys}
        eq = at_equal_share(boot, "same_answer")
        for b in diffs:
            for x, v in eq["learned"].items():
                if v is not None and eq[b][x] is not None:
                    diffs[b][x].append(v - eq[b][x])
    out: dict = {}
    for b, per_share in diffs.items():
        out[b] = {x: None if len(d) < n // 2 else {"lead": [100 * float(q) for q in np.percentile(d, [2.5, 97.5])],
                                                   "p_ahead": float(np.mean(np.asarray(d) > 0))}
                  for x, d in per_share.items()}
    return out


def bootstrap_lines(boot: dict) -> list[str]:
    lines = ["Paired bootstrap over prompts (2,000 resamples): learned − baseline, points of same answer, 95 % interval "
             "(share of resamples with the learned router ahead):", "",
             "| vs | " + " | ".join(f"{s:.0%}" for s in SHARES) + " |", "|---|" + "---:|" * len(SHARES)]
    for b, per_share in boot.items():
        cells = []
        for x in SHARES:
            v = per_share[f"{x:g}"]
            cells.append("–" if v is None else f"{v['lead'][0]:+.1f} to {v['lead'][1]:+.1f} ({v['p_ahead']:.0%})")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines


def verdicts(summary: dict[str, dict], equal: dict) -> dict:
    beats = {}
    for s in SHARES:
        k = f"{s:g}"
        learned, conf, rnd = equal["learned"][k], equal["confidence"][k], equal["random"][k]
        beats[k] = None if None in (learned, conf, rnd) else bool(learned > conf and learned > rnd)
    def fast(metric: str) -> list[str]:
        return [k for k, v in summary.items() if v["method"] == "learned" and v[metric] >= 1.2 and v["same_answer"] >= 0.8]

    return {"learned_beats_both_at": beats, "learned_beats_both_10_to_50": all(v is True for v in beats.values()),
            "fast_and_faithful_decode": fast("decode_speedup_vs_llm"), "fast_and_faithful_e2e": fast("e2e_speedup_vs_llm")}


def markdown(summary: dict, equal: dict, verdict: dict, meta: dict) -> str:
    lines = [f"Held-out prompts: {meta['prompts']} · max {meta['max_tokens']} tokens · {meta['machine']}", "",
             *([f"Runs merged (each configuration paired with the LLM alone of its own run): {', '.join(meta['runs'])}", ""]
               if len(meta.get("runs", [])) > 1 else []),
             "| run | knob | LLM share | same answer | token match | ms/token | ×LLM decode (IQR) | ×LLM end to end |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, v in summary.items():
        knob = "" if v["knob"] is None else f"{v['knob']:.3g}"
        lo, hi = v["decode_speedup_iqr"]
        lines.append(f"| {key} | {knob} | {v['llm_share']:.1%} | {v['same_answer']:.1%} | {v['token_match']:.1%} | "
                     f"{v['ms_per_token']:.1f} | {v['decode_speedup_vs_llm']:.2f} ({lo:.2f}–{hi:.2f}) | "
                     f"{v['e2e_speedup_vs_llm']:.2f} |")
    for metric, title in (("same_answer", "same final answer"), ("token_match", "token match rate")):
        lines += ["", f"At equal LLM-token share ({title}, interpolated):", "",
                  "| LLM share | " + " | ".join(f"{s:.0%}" for s in SHARES) + " |", "|---|" + "---:|" * len(SHARES)]
        for method in ("learned", "confidence", "random"):
            vals = equal[metric][method]
            lines.append(f"| {method} | " + " | ".join("–" if vals[f'{s:g}'] is None else f"{vals[f'{s:g}']:.1%}"
                                                         for s in SHARES) + " |")
    lines += ["", f"Learned router beats both baselines at every share 10–50 %: {verdict['learned_beats_both_10_to_50']}",
              f"Learned configs ≥ 1.2× LLM-only (decode) with ≥ 80 % same answer: {verdict['fast_and_faithful_decode'] or 'none'}",
              f"Learned configs ≥ 1.2× LLM-only (end to end) with ≥ 80 % same answer: {verdict['fast_and_faithful_e2e'] or 'none'}"]
    if meta.get("bootstrap"):
        lines += ["", *bootstrap_lines(meta["bootstrap"])]
    if meta.get("speed_bound"):
        lines += ["", *bound_lines(meta["speed_bound"])]
    return "\n".join(lines) + "\n"


def print_tables(summary: dict, equal: dict, verdict: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    t = Table(title="R2R on held-out prompts (references and threshold sweeps)")
    for col in ("run", "knob", "LLM share", "same answer", "token match", "ms/token", "×LLM decode", "×LLM e2e",
                "LLM turns/token", "re-tokenised/100"):
        t.add_column(col, justify="left" if col == "run" else "right")
    for key, v in summary.items():
        t.add_row(key, "" if v["knob"] is None else f"{v['knob']:.3g}", f"{v['llm_share']:.1%}", f"{v['same_answer']:.1%}",
                  f"{v['token_match']:.1%}", f"{v['ms_per_token']:.1f}", f"{v['decode_speedup_vs_llm']:.2f}",
                  f"{v['e2e_speedup_vs_llm']:.2f}",
                  "n/a" if v["llm_calls_per_token"] is None else f"{v['llm_calls_per_token']:.3f}",
                  f"{v['retokenized_per_100_tokens']:.2f}")
    console.print(t)
    for metric in ("same_answer", "token_match"):
        e = Table(title=f"{metric} at equal LLM-token share (interpolated)")
        e.add_column("method")
        for s in SHARES:
            e.add_column(f"{s:.0%}", justify="right")
        for method in ("learned", "confidence", "random"):
            e.add_row(method, *("–" if equal[metric][method][f"{s:g}"] is None else f"{equal[metric][method][f'{s:g}']:.1%}"
                                for s in SHARES))
        console.print(e)
    console.print(f"learned beats both baselines at every share 10–50 %: {verdict['learned_beats_both_10_to_50']}  "
                  f"{verdict['learned_beats_both_at']}")
    for kind in ("decode", "e2e"):
        console.print(f"learned configs ≥ 1.2× faster than the LLM alone ({kind}) with ≥ 80 % same answer: "
                      f"{verdict['fast_and_faithful_' + kind] or 'none'}")
