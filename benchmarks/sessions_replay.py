"""Sessions on vs off: replayed conversations on a routing matrix, and a scripted agent loop.

**Conversations.** The matrix's test prompts become conversations of ``--turns`` turns (prompts
of one task, shuffled with a seed: a thread on one subject). Each turn is routed by a learned
policy (``--policy``, fitted on the train split) from its own prompt, with the conversation so
far as the request's prompt tokens — as the service prices a request — and then, with sessions
on, by the production session rule (``router.sessions.rule`` and ``router.sessions.state``) on
top. A turn's quality is the matrix's score of the expert that serves it; its bill counts the
history as a prefix-cache hit (``--cache-discount`` off the input price) when the expert served
the previous turn, at the full input price otherwise, plus ``--answer-tokens`` of output that
join the history. The λ sweep traces cost against quality for both, so cost is compared at
equal quality.

**Agent loop.** A scripted agent that repeats the same tool call runs through the real app
against fake upstream experts (cheap and strong); the table shows the expert of each turn and
the turn at which the stall moved the session one tier up.

    python -m benchmarks.sessions_replay --data ../shared/data/llmrouter --json var/bench/sessions.json \
        --markdown var/bench/sessions.md
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.output import write_json, write_text

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def conversations(data, rows: np.ndarray, turns: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    tasks = np.asarray(data.task)[rows]
    for task in sorted(set(tasks)):
        mine = rows[tasks == task]
        mine = mine[rng.permutation(len(mine))]
        out += [mine[i: i + turns] for i in range(0, len(mine) - turns + 1, turns)]
    return out


def replay(convs, quality_hat, scores, prompt_tokens, experts, *, lam: float, sessions: bool, cfg, answer_tokens: int,
           cache_discount: float) -> dict[str, float]:
    from core.types import Decision
    from router.sessions.rule import SessionRule
    from router.sessions.state import Outcome, SessionState, advance

    rule = SessionRule(cfg, experts)
    names = [e.name for e in experts]
    p_in = np.array([e.input_usd_per_mtok for e in experts]) / 1e6
    p_out = np.array([e.output_usd_per_mtok for e in experts]) / 1e6
    now = datetime.now(UTC)
    total_q = total_c = 0.0
    n_turns = switches = 0
    for conv in convs:
        state, history, prev = SessionState(id="s"), 0, None
        for row in conv:
            full = history + prompt_tokens[row]
            utility = quality_hat[row] - lam * (full * p_in + answer_tokens * p_out)  # the base rule, as decide() prices it
            pick = int(np.argmax(utility))
            d = Decision(expert=names[pick], policy="p", policy_version="v", propensities={names[pick]: 1.0},
                         scores={n: float(u) for n, u in zip(names, utility)},
                         ranking=[names[i] for i in sorted(range(len(names)), key=lambda i: (i != pick, -utility[i]))])
            event = None
            if sessions:
                view = state.view(cfg, tool_loop=0, prompt_tokens=full)
                d, ruling = rule.apply(d, view, lam)
                event = ruling.event
            e = names.index(d.expert)
            cached = history if prev == e else 0
            cost = (full - cached * cache_discount) * p_in[e] + answer_tokens * p_out[e]
            total_q += float(np.nan_to_num(scores[row, e]))
            total_c += cost
            switches += prev is not None and prev != e
            n_turns += 1
            state = advance(state, Outcome("r", True, d.expert, full, answer_tokens, cost, event, now))
            history, prev = full + answer_tokens, e
    return {"lambda": lam, "quality": total_q / n_turns, "cost_per_1k_turns": 1000 * total_c / n_turns,
            "switches_per_session": switches / len(convs)}


def cost_at_equal_quality(off: list[dict], on: list[dict]) -> list[dict]:
    """For each point of the 'off' curve, the 'on' curve's cost at the same quality (interpolated on
    the on-curve's lower envelope: the cheapest way it reaches that quality)."""
    pts = sorted((p["quality"], p["cost_per_1k_turns"]) for p in on)
    out = []
    for p in off:
        q = p["quality"]
        reach = [c for qq, c in pts if qq >= q - 1e-12]
        below = [(qq, c) for qq, c in pts if qq < q]
        if not reach:
            continue
        c_hi = min(reach)
        q_hi = min(qq for qq, c in pts if c == c_hi and qq >= q - 1e-12)
        c = c_hi
        if below and q_hi > q:  # interpolate between the best point below and the cheapest point above
            q_lo, c_lo = max(below)
            c = c_lo + (c_hi - c_lo) * (q - q_lo) / (q_hi - q_lo) if c_hi > c_lo else c_hi
        out.append({"lambda": p["lambda"], "quality": q, "cost_off": p["cost_per_1k_turns"], "cost_on": c,
                    "saving": 1 - c / p["cost_per_1k_turns"] if p["cost_per_1k_turns"] else 0.0})
    return out


def agent_loop(turns: int, loop_repeats: int) -> list[dict]:
    """A scripted agent repeating one tool call, through the real app against fake upstream experts."""
    import tempfile

    import httpx
    import yaml

    from api.app import create_app
    from core.settings import Settings
    from tests.support import fake_openai
    from tests.support.servers import serve_in_thread

    cheap, strong = fake_openai.Behaviour(answer="calling search"), fake_openai.Behaviour(answer="done: 18 °C")
    rows = []
    with serve_in_thread(fake_openai.make_app(cheap)) as cu, serve_in_thread(fake_openai.make_app(strong)) as su:
        tmp = Path(tempfile.mkdtemp())
        experts = [{"name": n, "backend": "remote", "model": "fake", "endpoint": f"{u}/v1", "input_usd_per_mtok": pi,
                    "output_usd_per_mtok": po, "params_b": b} for n, u, pi, po, b in
                   (("cheap", cu, 0.1, 0.2, 1.0), ("strong", su, 3.0, 15.0, 70.0))]
        cfg = {"experts": experts, "policy": {"active": "fixed", "options": {"fixed": {"expert": "cheap"}}},
               "sessions": {"loop_repeats": loop_repeats}}
        (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
        app = create_app(Settings(config=tmp / "c.yaml", data_dir=tmp / "var", autostart_experts=False))
        tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as http:
            for i in range(turns):
                r = http.post("/v1/chat/completions", json={"model": "expertmux/auto", "messages": messages, "tools": tools,
                                                            "expertmux": {"session_id": "agent-1"}})
                rows.append({"turn": i + 1, "repeated_calls": i, "expert": r.headers["x-expertmux-expert"]})
                call = {"id": f"c{i}", "type": "function", "function": {"name": "search", "arguments": '{"q": "Paris"}'}}
                messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": f"c{i}", "content": "error: timeout"}]
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/llmrouter"))
    ap.add_argument("--policy", default="knn")
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=200)
    ap.add_argument("--cache-discount", type=float, default=0.9, help="share of the input price a prefix-cache hit saves")
    ap.add_argument("--switch-penalty", type=float, default=0.0)
    ap.add_argument("--lambdas", default="0,30,100,200,300,500,700,1000,1500,2000,3000,5000,10000")
    ap.add_argument("--loop-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", type=Path, default=Path("var/bench/cache"), help="the policy's predictions, reused")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)

    from core.config import SessionsConfig
    from policies import create_policy
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders

    configure_encoders(cache_dir=Path("var/cache/embeddings"))
    t0 = time.perf_counter()
    data = RoutingData.load(args.data)
    train = data.subset(data.rows_of("train"))
    test_rows = data.rows_of("test")
    experts = train.experts()
    cache = args.cache_dir / f"q_hat-{args.data.name}-{args.policy}.npy" if args.cache_dir else None
    if cache is not None and cache.exists():
        q_hat = np.load(cache)
    else:  # fit and predict once: the replays only need the predictions
        policy = create_policy(args.policy).fit(train)
        q_hat = np.full((len(data.prompts), len(experts)), np.nan)
        q_hat[test_rows] = policy.predict_quality([data.prompts[i] for i in test_rows])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, q_hat)
    scores = data.select_models([e.name for e in experts]).scores
    prompt_tokens = np.array([len(p) // 4 + 1 for p in data.prompts])
    convs = conversations(data, test_rows, args.turns, args.seed)
    cfg = SessionsConfig(cache_discount=args.cache_discount, switch_penalty=args.switch_penalty)
    lams = [float(x) for x in args.lambdas.split(",")]
    curves = {mode: [replay(convs, q_hat, scores, prompt_tokens, experts, lam=lam, sessions=mode == "on", cfg=cfg,
                            answer_tokens=args.answer_tokens, cache_discount=args.cache_discount) for lam in lams]
              for mode in ("off", "on")}
    equal = cost_at_equal_quality(curves["off"], curves["on"])
    loop = agent_loop(args.turns, args.loop_repeats)
    result = {"data": str(args.data), "policy": args.policy, "conversations": len(convs), "turns": args.turns,
              "cache_discount": args.cache_discount, "answer_tokens": args.answer_tokens, "curves": curves,
              "equal_quality": equal, "agent_loop": loop, "loop_repeats": args.loop_repeats,
              "seconds": round(time.perf_counter() - t0, 1)}
    md = render(result)
    print(md)
    write_json(args.json, result)
    write_text(args.markdown, md)
    return result


def render(r: dict) -> str:
    lines = [f"Sessions off vs on: {r['conversations']} conversations of {r['turns']} turns ({Path(r['data']).name} test, "
             f"policy {r['policy']}, prefix-cache discount {r['cache_discount']:.0%}, {r['answer_tokens']}-token answers)", "",
             "| λ | quality off | quality on | cost/1k turns off | cost/1k turns on | switches/session off | switches/session on |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for off, on in zip(r["curves"]["off"], r["curves"]["on"]):
        lines.append(f"| {off['lambda']:g} | {off['quality']:.4f} | {on['quality']:.4f} | ${off['cost_per_1k_turns']:.4f} | "
                     f"${on['cost_per_1k_turns']:.4f} | {off['switches_per_session']:.2f} | {on['switches_per_session']:.2f} |")
    lines += ["", "Cost at equal quality (sessions on, interpolated on its curve, vs each point of sessions off):", "",
              "| λ (off) | quality | cost/1k off | cost/1k on | saving |", "|---:|---:|---:|---:|---:|"]
    for e in r["equal_quality"]:
        lines.append(f"| {e['lambda']:g} | {e['quality']:.4f} | ${e['cost_off']:.4f} | ${e['cost_on']:.4f} | {e['saving']:+.1%} |")
    esc = next((x["turn"] for x in r["agent_loop"] if x["expert"] != r["agent_loop"][0]["expert"]), None)
    lines += ["", f"Agent loop (loop_repeats = {r['loop_repeats']}): escalated at turn {esc}", "",
              "| turn | identical calls so far | expert |", "|---:|---:|---|"]
    lines += [f"| {x['turn']} | {x['repeated_calls']} | {x['expert']} |" for x in r["agent_loop"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
