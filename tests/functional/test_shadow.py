"""Shadow evaluation through the real app (fake upstream experts): the candidate's logged decisions
are exactly its offline decisions on the same prompts, its expert is called where it differs and
both answers are rated blind by the judge, within the shadow budget."""

from __future__ import annotations

import random
import time

import httpx
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.settings import Settings
from core.types import RouteRequest
from router.ledger.models import RequestRow, ShadowDecisionRow
from tests.conftest import remote_expert
from tests.support.servers import serve_in_thread

LAMBDA = 50.0  # prior at this λ: short prompts to strong, long ones (≳ 1,300 characters) to cheap


def judge_app() -> Starlette:
    """Rates 9/10 an answer from the strong expert, 3/10 anything else (it sees no labels)."""
    async def chat(request: Request):
        prompt = (await request.json())["messages"][-1]["content"]
        rating = "9" if "strong answer here" in prompt else "3"
        return JSONResponse({"id": "j", "object": "chat.completion", "created": 0, "model": "judge",
                             "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": rating}}]})

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def _app(tmp_path, upstreams, judge_url, shadow: dict):
    from api.app import create_app

    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3, params_b=1.0),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8, params_b=70.0,
                             input_usd_per_mtok=10.0, output_usd_per_mtok=30.0),
               remote_expert("judge", judge_url, input_usd_per_mtok=0.0, output_usd_per_mtok=0.0, prior_quality=0.0)]
    cfg = {"experts": experts, "policy": {"active": "fixed", "lambda": LAMBDA, "options": {"fixed": {"expert": "cheap"}}},
           "judge": {"expert": "judge", "sample_rate": 0.0}, "shadow": shadow}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return create_app(Settings(config=tmp_path / "c.yaml", data_dir=tmp_path / "var", autostart_experts=False))


def _wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_shadow_log_is_the_candidates_offline_decisions_and_judged_blind(tmp_path, upstreams):
    from policies import create_policy

    rng = random.Random(3)
    prompts = [" ".join(["lorem"] * rng.randint(10, 600)) + f" #{i}" for i in range(40)]
    with serve_in_thread(judge_app()) as judge_url:
        app = _app(tmp_path, upstreams, judge_url, {"policy": "prior", "call_experts": True, "budget_usd_day": 1.0, "seed": 1})
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            for p in prompts:
                r = http.post("/v1/chat/completions", json={"model": "expertmux/auto", "messages": [{"role": "user", "content": p}]})
                assert r.status_code == 200 and r.headers["x-expertmux-expert"] == "cheap"  # the served policy serves
            runner = app.state.service.over_time.shadow
            _wait_for(lambda: runner.counts["logged"] == len(prompts))
            summary = http.get(f"{url}/admin/api/shadow")  # admin API is off without a token: not found or refused
            assert summary.status_code in (401, 403, 404)
            assert app.state.service.ledger.flush(10)
            with Session(app.state.service.ledger.engine) as s:
                rows = {r.request_id: r for r in s.scalars(select(ShadowDecisionRow))}
                requests = {r.id: r for r in s.scalars(select(RequestRow))}
    assert len(rows) == len(prompts) and set(rows) == set(requests)
    # offline: the same policy, the same experts, the same prompts and λ
    candidate = create_policy("prior").fit(None, experts=app.state.service.experts.infos())
    experts_seen = set()
    for rid, row in rows.items():
        text = requests[rid].prompt_text
        offline = candidate.decide(RouteRequest(prompt=text, prompt_tokens=len(text) // 4 + 1, max_completion_tokens=256),
                                   lambda_=LAMBDA)
        assert row.expert == offline.expert and row.decision["scores"] == offline.scores
        assert row.served_expert == "cheap" and row.agrees == (offline.expert == "cheap") and row.lambda_ == LAMBDA
        experts_seen.add(row.expert)
    assert experts_seen == {"cheap", "strong"}  # the candidate disagrees on some requests, not all
    judged = [r for r in rows.values() if r.status == "judged"]
    assert judged and len(judged) == sum(not r.agrees for r in rows.values())
    assert all(r.score > r.served_score and r.cost_usd > 0 for r in judged)  # the judge preferred strong's answers
    assert all(r.status == "decided" and r.cost_usd is None for r in rows.values() if r.agrees)


def test_the_shadow_budget_bounds_the_candidates_calls(tmp_path, upstreams):
    upstreams["strong"][0].answer = " ".join(["word"] * 200)  # a $0.006 bill per call
    with serve_in_thread(judge_app()) as judge_url:
        app = _app(tmp_path, upstreams, judge_url,
                   {"policy": "strongest", "call_experts": True, "judge": False, "budget_usd_day": 0.03})
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10) as http:
            for i in range(12):
                http.post("/v1/chat/completions", json={"model": "expertmux/auto", "messages": [{"role": "user", "content": f"q{i}"}]})
            runner = app.state.service.over_time.shadow
            _wait_for(lambda: runner.counts["logged"] == 12)
            with Session(app.state.service.ledger.engine) as s:
                statuses = [r.status for r in s.scalars(select(ShadowDecisionRow))]
    # a call is let through while its worst case (~$0.0077: a 256-token answer at $30/Mtok) fits beside the real
    # bills so far ($0.006 each): four fit in $0.03, the rest are skipped
    assert statuses.count("called") == 4 and statuses.count("skipped_budget") == 8
    assert 0.024 <= runner.spent_today <= 0.03
