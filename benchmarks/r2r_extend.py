"""Extend a stored R2R benchmark run with more threshold settings, on the same held-out prompts.

The knobs are placed exactly as in the stored run (quantiles of each method's score over the
SLM's own tokens on the same ``train`` calibration prompts), only for target shares it lacks, so
nothing is tuned on held-out prompts. Agreement is scored against the stored run's LLM-alone
text (greedy decoding is deterministic; ``--check-reference`` re-generates it on a few prompts
to prove it). Prompts are visited in a seeded shuffled order and each one's records are appended
to a checkpoint (JSON lines) at once, so a run cut short still leaves a representative sample
and a second call resumes it. The result is a run file ``--from-json`` merges; its speed columns
are not comparable (no LLM-alone run of its own): judge the extension by share and agreement.

    python -m benchmarks.r2r_extend var/bench/r2r.json --targets 0.55,0.75 --out var/bench/r2r_ext.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from benchmarks.r2r import REPO, calibrate, drain, router_folder, run
from experts.r2r.answers import final_answer, match_rate, prefix_match
from experts.r2r.engine import LLM


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stored", type=Path, help="the run to extend (benchmarks.r2r --json output, with records)")
    p.add_argument("--targets", default="0.55,0.75", help="LLM shares the learned and confidence knobs aim at")
    p.add_argument("--methods", default="learned,confidence")
    p.add_argument("--out", type=Path, required=True, help="run file to write (a .jsonl checkpoint sits next to it)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this long (the sample stays usable)")
    p.add_argument("--check-reference", type=int, default=3, help="prompts whose LLM-alone text is re-generated and compared")
    p.add_argument("--router", type=Path, default=None,
                   help="the stored run's router (default: the pair's router trained into --data-dir by `expertmux train r2r`)")
    p.add_argument("--max-prompt-chars", type=int, default=800, help="as in the stored run")
    p.add_argument("--calibration-prompts", type=int, default=12, help="as in the stored run")
    p.add_argument("--n-threads", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=REPO / "var")
    p.add_argument("--seed", type=int, default=0, help="as in the stored run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from experts.r2r.datasets import load_prompts
    from experts.r2r.pair import load_local_engine
    from experts.r2r.routers import LearnedRouter

    args = parse_args(argv)
    stored = json.loads(args.stored.read_text())
    meta = stored["meta"]
    router = router_folder(args.router, args.data_dir, meta["slm"], meta["llm"])
    if router is None:
        return 2
    learned = LearnedRouter.load(router)
    if learned.artifact.version != meta["router_version"]:
        print(f"router {learned.artifact.version} is not the stored run's {meta['router_version']}", file=sys.stderr)
        return 2
    folders = [REPO.parent / "shared" / "data" / name for name in meta["sources"]]
    held_out = load_prompts(folders, split=meta["split"], n=meta["prompts"], seed=args.seed, max_chars=args.max_prompt_chars)
    refs = {r["prompt"]: r for r in stored["records"] if r["config"] == "llm-only"}
    if [item.qid for item in held_out] != [refs[i]["qid"] for i in range(len(held_out))]:
        print("the held-out prompts differ from the stored run's (check --seed / --max-prompt-chars)", file=sys.stderr)
        return 2
    engine = load_local_engine(meta["slm"], meta["llm"], data_dir=args.data_dir, n_threads=args.n_threads,
                               hidden=learned.needs_hidden)
    calib = load_prompts(folders, split="train", n=args.calibration_prompts, seed=args.seed + 1, max_chars=args.max_prompt_chars)
    targets = [float(x) for x in args.targets.split(",") if x.strip()]
    methods = set(args.methods.split(","))
    configs = [c for c in calibrate(engine, learned, calib, targets, [], meta["max_tokens"])
               if c.method in methods and c.key not in stored["configs"]]
    print("extending with " + ", ".join(f"{c.key} (knob {c.knob:.3g})" for c in configs), flush=True)

    order = list(range(len(held_out)))
    random.Random(args.seed).shuffle(order)
    for i in order[: args.check_reference]:
        steps, _ = drain(engine.generate_single(LLM, held_out[i].messages, max_tokens=meta["max_tokens"]))
        if b"".join(s.piece for s in steps).decode("utf-8", errors="replace") != refs[i]["text"]:
            print(f"prompt {i}: the LLM alone no longer writes the stored text; the extension would not be comparable",
                  file=sys.stderr)
            return 2
    checkpoint = args.out.with_suffix(".jsonl")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in checkpoint.read_text().splitlines()] if checkpoint.exists() else []
    done_prompts = {r["prompt"] for r in done}
    t0 = time.perf_counter()
    with checkpoint.open("a") as sink:
        for n, i in enumerate(p for p in order if p not in done_prompts):
            if args.max_minutes is not None and time.perf_counter() - t0 > 60 * args.max_minutes:
                break
            item, ref = held_out[i], refs[i]["text"]
            ref_ids, ref_answer = engine.llm.tokenize(ref.encode()), final_answer(ref)
            for cfg in configs:
                o = run(engine, cfg, item.messages, meta["max_tokens"], learned, seed=args.seed * 100_003 + i)
                ids = engine.llm.tokenize(o["text"].encode())
                rec = {"prompt": i, "qid": item.qid, "source": item.source, "task": item.task, "config": cfg.key,
                       **{k: v for k, v in o.items() if k != "text"}, "prefill_used": 0.0,
                       "same_answer": final_answer(o["text"]) == ref_answer, "token_match": match_rate(ref_ids, ids),
                       "prefix_match": prefix_match(ref_ids, ids), "text": o["text"]}
                sink.write(json.dumps(rec) + "\n")
                done.append(rec)
            sink.flush()
            if (n + 1) % 10 == 0:
                print(f"{len({r['prompt'] for r in done})}/{len(held_out)} prompts, {time.perf_counter() - t0:.0f} s", flush=True)
    covered = sorted({r["prompt"] for r in done})
    # the references of the covered prompts come from the stored run (agreement is scored against them)
    copied = [r for r in stored["records"] if r["config"] in ("llm-only", "slm-only") and r["prompt"] in set(covered)]
    out_configs = {k: v for k, v in stored["configs"].items() if k in ("llm-only", "slm-only")}
    out_configs.update({c.key: {"method": c.method, "knob": c.knob, "target_share": c.target} for c in configs})
    out_meta = {**meta, "prompts": len(covered), "extension_of": args.stored.name, "n_threads": args.n_threads,
                "seconds": round(time.perf_counter() - t0, 1)}
    args.out.write_text(json.dumps({"meta": out_meta, "configs": out_configs,
                                    "records": sorted(copied + done, key=lambda r: (r["prompt"], r["config"]))}, indent=1))
    print(f"{len(covered)} of {len(held_out)} prompts → {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
