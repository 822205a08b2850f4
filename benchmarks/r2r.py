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
from benchmarks.r2r_report import (
    at_equal_share,
    bootstrap_lines,
    bound_lines,
    markdown,
    paired_bootstrap,
    print_tables,
    speed_bound,
    summarise,
    verdicts,
)
from experts.r2r.answers import final_answer, match_rate, prefix_match
from experts.r2r.artifact import pair_router_dir, train_command
from experts.r2r.engine import LLM, SLM, GenerationStats, R2REngine
from experts.r2r.features import Proposal
from experts.r2r.routers import ConfidenceRouter, LearnedRouter, RandomRouter, Router

REPO = Path(__file__).resolve().parent.parent


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


def router_folder(router: Path | None, data_dir: Path, slm: str, llm: str) -> Path | None:
    """``--router``, else the pair's router trained into the data folder; None, with the command
    that trains it on stderr, when the data folder holds none."""
    if router is not None:
        return router
    folder = pair_router_dir(data_dir, slm, llm)
    if not folder.exists():
        print(f"no R2R router trained for {slm} + {llm} at {folder}; train it on this machine first (about 27 min "
              f"of labelling on 2 cores):\n  {train_command(slm, llm, out=folder)}\nor pass --router", file=sys.stderr)
        return None
    return folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", action="append", type=Path, default=None,
                   help="routing-matrix folder (repeatable; default ../shared/data/{llmrouter,routerdc})")
    p.add_argument("--n", type=int, default=200, help="held-out prompts")
    p.add_argument("--split", default="test", help="held-out split of the routing matrices")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-prompt-chars", type=int, default=800)
    p.add_argument("--router", type=Path, default=None,
                   help="router artifact folder (default: the pair's router trained into --data-dir by `expertmux train r2r`)")
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
    router = router_folder(args.router, args.data_dir, args.slm, args.llm)
    if router is None:
        return 2
    learned = LearnedRouter.load(router)
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
