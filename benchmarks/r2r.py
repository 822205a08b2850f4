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
            "llm_calls_per_token": sum(r["llm_calls"] for r in rs) / max(tokens, 1),
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
                  f"{v['e2e_speedup_vs_llm']:.2f}", f"{v['llm_calls_per_token']:.3f}", f"{v['retokenized_per_100_tokens']:.2f}")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from experts.r2r.datasets import load_prompts
    from experts.r2r.pair import load_local_engine

    args = parse_args(argv)
    folders = args.prompts or [REPO.parent / "shared" / "data" / "llmrouter", REPO.parent / "shared" / "data" / "routerdc"]
    missing = [f for f in folders if not (f / "matrix.parquet").is_file()]
    if missing:
        print(f"routing matrices not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    learned = LearnedRouter.load(args.router)
    engine = load_local_engine(args.slm, args.llm, data_dir=args.data_dir, n_threads=args.n_threads, hidden=learned.needs_hidden)
    held_out = load_prompts(folders, split=args.split, n=args.n, seed=args.seed, max_chars=args.max_prompt_chars)
    calib = load_prompts(folders, split="train", n=args.calibration_prompts, seed=args.seed + 1, max_chars=args.max_prompt_chars)
    targets = [float(x) for x in args.targets.split(",")]
    configs = calibrate(engine, learned, calib, targets, [float(x) for x in args.random_targets.split(",")], args.max_tokens)
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
    print_tables(summary, equal, verdict)
    print(f"{meta['prompts']} prompts × {len(configs)} runs in {meta['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "configs": summary, "at_equal_share": equal, "verdict": verdict,
                                         "records": records}, indent=1))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(summary, equal, verdict, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
