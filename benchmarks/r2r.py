"""R2R token routing on held-out prompts: LLM share, speed and agreement with the LLM alone.

For every held-out prompt (the ``test`` split of the routing matrices; the router never saw
them) the same process runs, in a shuffled order:

* the LLM alone and the SLM alone (greedy) — the references;
* the learned router at several thresholds, the SLM-confidence baseline (hand over when the
  SLM's top probability is below τ) at several τ, and random token routing at several rates.

Knobs are set before any held-out prompt is read: each method's threshold for a target LLM
share is the matching quantile of its score over the SLM's own tokens on a few *train* prompts.
Agreement with the LLM alone is measured as the same final answer (``experts.r2r.answers``)
and the token match rate (in LLM tokens); methods are compared at equal LLM-token share by
linear interpolation of their measured (share, agreement) points, with the SLM alone at share 0
and the LLM alone at share 1. Speed is tokens per wall-clock second of generation with the
prompt already cached (decode), and end to end with each model's prompt prefill added (measured
once per prompt and model).

    python -m benchmarks.r2r --json var/bench/r2r.json --markdown var/bench/r2r.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text
from experts.r2r import DEFAULT_ROUTER_DIR
from experts.r2r.answers import final_answer, match_rate, prefix_match
from experts.r2r.engine import LLM, SLM, GenerationStats, R2REngine
from experts.r2r.features import Proposal
from experts.r2r.routers import ConfidenceRouter, LearnedRouter, RandomRouter, Router

REPO = Path(__file__).resolve().parent.parent

SHARES = (0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass(frozen=True, slots=True)
class Config:
    method: str  # llm-only | slm-only | learned | confidence | random
    knob: float | None = None
    target: float | None = None

    @property
    def key(self) -> str:
        return self.method if self.knob is None else f"{self.method}@{self.target:g}"


class Recorder(Router):
    """Never hands over; records what each method would score on the SLM's own tokens."""

    name = "recorder"

    def __init__(self, learned: LearnedRouter) -> None:
        self.learned = learned
        self.needs_hidden = learned.needs_hidden
        self.scores: list[float] = []
        self.top_probs: list[float] = []

    def hand_over(self, p: Proposal) -> bool:
        self.scores.append(self.learned.score(p))
        self.top_probs.append(p.top_prob)
        return False


def drain(gen) -> tuple[list, GenerationStats]:
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def calibrate(engine: R2REngine, learned: LearnedRouter, prompts, targets, random_targets, max_tokens: int) -> list[Config]:
    rec = Recorder(learned)
    for item in prompts:
        drain(engine.generate(item.messages, router=rec, max_tokens=max_tokens))
    scores, probs = np.asarray(rec.scores), np.asarray(rec.top_probs)
    configs = [Config("llm-only"), Config("slm-only")]
    configs += [Config("learned", float(np.quantile(scores, 1 - s)), s) for s in targets]
    configs += [Config("confidence", float(np.quantile(probs, s)), s) for s in targets]
    configs += [Config("random", s, s) for s in random_targets]
    return configs


def router_for(cfg: Config, learned: LearnedRouter, seed: int) -> Router:
    if cfg.method == "learned":
        return LearnedRouter(learned.artifact, threshold=cfg.knob)
    if cfg.method == "confidence":
        return ConfidenceRouter(cfg.knob)
    return RandomRouter(cfg.knob, seed=seed)


def prefill_seconds(engine: R2REngine, messages) -> dict[str, float]:
    """Each model's prompt prefill, timed once; the caches then hold the prompts for every run."""
    out = {}
    for which, lm in ((SLM, engine.slm), (LLM, engine.llm)):
        ids = engine.prompt_ids(which, messages)
        lm.truncate(0)
        t0 = time.perf_counter()
        lm.eval(ids)
        out[which] = time.perf_counter() - t0
    return out


def run(engine: R2REngine, cfg: Config, messages, max_tokens: int, learned: LearnedRouter, seed: int) -> dict:
    if cfg.method in ("llm-only", "slm-only"):
        gen = engine.generate_single(LLM if cfg.method == "llm-only" else SLM, messages, max_tokens=max_tokens)
    else:
        gen = engine.generate(messages, router=router_for(cfg, learned, seed), max_tokens=max_tokens)
    steps, st = drain(gen)
    text = b"".join(s.piece for s in steps).decode("utf-8", errors="replace")
    turns = sum(1 for a, b in zip([None, *steps], steps) if b.writer == LLM and (a is None or a.writer != LLM))
    return {"text": text, "tokens": st.tokens, "llm_tokens": st.llm_tokens, "seconds": st.seconds, "llm_calls": turns,
            "slm_eval_s": st.slm.eval_seconds + st.slm.prompt_seconds, "llm_eval_s": st.llm.eval_seconds + st.llm.prompt_seconds,
            "llm_used": st.llm_tokens > 0, "retokenized": st.slm.retokenized + st.llm.retokenized}


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", action="append", type=Path, default=None,
                   help="routing-matrix folder (repeatable; default ../shared/data/{llmrouter,routerdc})")
    p.add_argument("--n", type=int, default=200, help="held-out prompts")
    p.add_argument("--split", default="test", help="held-out split of the routing matrices")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-prompt-chars", type=int, default=800)
    p.add_argument("--router", type=Path, default=DEFAULT_ROUTER_DIR)
    p.add_argument("--slm", default="smollm2-135m-instruct")
    p.add_argument("--llm", default="gemma3-270m")
    p.add_argument("--targets", default="0.1,0.2,0.35,0.55,0.75", help="LLM shares the learned and confidence knobs aim at")
    p.add_argument("--random-targets", default="0.1,0.3,0.5")
    p.add_argument("--calibration-prompts", type=int, default=12, help="train prompts used to place the knobs")
    p.add_argument("--n-threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=REPO / "var")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--from-json", action="append", type=Path, default=None, metavar="PATH",
                   help="summarise stored runs (their per-prompt records) without generating; repeatable: a later "
                        "run adds the configurations the earlier ones lack, e.g. a threshold extension")
    p.add_argument("--common-prompts", action="store_true",
                   help="with several --from-json: compare on the prompts every run covers")
    return p.parse_args(argv)


def configs_of(stored: dict) -> list[Config]:
    return [Config(v["method"], v["knob"], v["target_share"]) for v in stored["configs"].values()]


def summarise_stored(paths: list[Path], common: bool = False) -> tuple[dict, dict, dict, dict]:
    """(summary, equal-share tables, verdict, meta) of stored runs, merged in order.

    Every run must cover the same held-out prompts (checked by id), or with ``common`` every run
    is cut down to the prompts all of them cover (a partial extension run). Each configuration is
    summarised within its own run, so its speed ratios pair it with the LLM alone of that run.
    """
    runs = [json.loads(Path(path).read_text()) for path in paths]
    sets = [{r["qid"] for r in run["records"] if r["config"] == "llm-only"} for run in runs]
    shared = set.intersection(*sets)
    if not common and any(s != sets[0] for s in sets):
        raise ValueError(f"the held-out prompts of {', '.join(map(str, paths))} differ (--common-prompts compares "
                         "them on the prompts they share)")
    summary: dict[str, dict] = {}
    meta: dict = {}
    first_records: list[dict] = []
    by_config: dict[str, list[dict]] = {}
    for path, stored in zip(paths, runs):
        records = sorted((r for r in stored["records"] if r["qid"] in shared), key=lambda r: r["prompt"])
        first_records = first_records or records
        if meta and stored["meta"].get("router_version") != meta.get("router_version"):
            raise ValueError(f"{path}: router {stored['meta'].get('router_version')} differs from {meta.get('router_version')}")
        for key, value in summarise(records, configs_of(stored)).items():
            if key not in summary:
                summary[key] = {**value, "run": Path(path).name}
                by_config[key] = sorted((r for r in records if r["config"] == key), key=lambda r: r["prompt"])
        meta = meta or dict(stored["meta"])
    meta["runs"] = [Path(p).name for p in paths]
    meta["prompts"] = len(shared)
    order = {"llm-only": 0, "slm-only": 1, "learned": 2, "confidence": 3, "random": 4}
    summary = dict(sorted(summary.items(), key=lambda kv: (order[kv[1]["method"]], kv[1]["target_share"] or 0)))
    equal = {m: at_equal_share(summary, m) for m in ("same_answer", "token_match")}
    meta["speed_bound"] = speed_bound(first_records, summary)
    meta["bootstrap"] = paired_bootstrap(by_config, summary)
    return summary, equal, verdicts(summary, equal["same_answer"]), meta


def main_from_json(args: argparse.Namespace) -> int:
    try:
        summary, equal, verdict, meta = summarise_stored(args.from_json, common=args.common_prompts)
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot summarise {', '.join(map(str, args.from_json))}: {exc}", file=sys.stderr)
        return 2
    print_tables(summary, equal, verdict)
    for line in [*bootstrap_lines(meta["bootstrap"]), "", *bound_lines(meta["speed_bound"])]:
        print(line)
    write_json(args.json, {"meta": meta, "configs": summary, "at_equal_share": equal, "verdict": verdict})
    write_text(args.markdown, markdown(summary, equal, verdict, meta))
    return 0


def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from experts.r2r.datasets import load_prompts
    from experts.r2r.pair import load_local_engine

    args = parse_args(argv)
    if args.from_json:
        return main_from_json(args)
    folders = args.prompts or [REPO.parent / "shared" / "data" / "llmrouter", REPO.parent / "shared" / "data" / "routerdc"]
    missing = [f for f in folders if not (f / "matrix.parquet").is_file()]
    if missing:
        print(f"routing matrices not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    learned = LearnedRouter.load(args.router)
    engine = load_local_engine(args.slm, args.llm, data_dir=args.data_dir, n_threads=args.n_threads, hidden=learned.needs_hidden)
    held_out = load_prompts(folders, split=args.split, n=args.n, seed=args.seed, max_chars=args.max_prompt_chars)
    calib = load_prompts(folders, split="train", n=args.calibration_prompts, seed=args.seed + 1, max_chars=args.max_prompt_chars)
    targets = [float(x) for x in args.targets.split(",") if x.strip()]
    configs = calibrate(engine, learned, calib, targets, [float(x) for x in args.random_targets.split(",") if x.strip()],
                        args.max_tokens)
    rng = random.Random(args.seed)
    records: list[dict] = []
    t_start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn()) as progress:
        task = progress.add_task(f"{len(configs)} runs per prompt", total=len(held_out))
        for i, item in enumerate(held_out):
            prefill = prefill_seconds(engine, item.messages)
            order = list(configs)
            rng.shuffle(order)
            outs = {cfg.key: run(engine, cfg, item.messages, args.max_tokens, learned, seed=args.seed * 100_003 + i)
                    for cfg in order}
            ref = outs["llm-only"]["text"]
            ref_ids = engine.llm.tokenize(ref.encode())
            ref_answer = final_answer(ref)
            for cfg in configs:
                o = outs[cfg.key]
                ids = engine.llm.tokenize(o["text"].encode())
                used = (prefill[SLM] if cfg.method != "llm-only" else 0.0) + (prefill[LLM] if o["llm_used"] else 0.0)
                records.append({"prompt": i, "qid": item.qid, "source": item.source, "task": item.task, "config": cfg.key,
                                **{k: v for k, v in o.items() if k != "text"}, "prefill_used": used,
                                "same_answer": final_answer(o["text"]) == ref_answer,
                                "token_match": match_rate(ref_ids, ids), "prefix_match": prefix_match(ref_ids, ids),
                                "text": o["text"]})
            progress.update(task, advance=1)
            if not progress.console.is_terminal and (i + 1) % 10 == 0:  # logs get a line now and then
                print(f"{i + 1}/{len(held_out)} prompts, {time.perf_counter() - t_start:.0f} s", flush=True)
    summary = summarise(records, configs)
    equal = {m: at_equal_share(summary, m) for m in ("same_answer", "token_match")}
    verdict = verdicts(summary, equal["same_answer"])
    meta = {"prompts": len(held_out), "split": args.split, "sources": [f.name for f in folders], "max_tokens": args.max_tokens,
            "router": str(learned.artifact.path), "router_version": learned.artifact.version,
            "calibration_prompts": len(calib), "slm": args.slm, "llm": args.llm, "n_threads": args.n_threads,
            "seconds": round(time.perf_counter() - t_start, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, n_threads={args.n_threads}"}
    meta["speed_bound"] = speed_bound(records, summary)
    meta["bootstrap"] = paired_bootstrap({c.key: [r for r in records if r["config"] == c.key] for c in configs}, summary)
    print_tables(summary, equal, verdict)
    for line in [*bootstrap_lines(meta["bootstrap"]), "", *bound_lines(meta["speed_bound"])]:
        print(line)
    print(f"{meta['prompts']} prompts × {len(configs)} runs in {meta['seconds']:.0f} s")
    write_json(args.json, {"meta": meta, "configs": summary, "at_equal_share": equal, "verdict": verdict,
                           "records": records})
    write_text(args.markdown, markdown(summary, equal, verdict, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
