"""Budget pacing through the real app (fake upstream experts): a key near its daily budget is served
by the cheapest fitting expert instead of being refused; the hard cap still refuses at the cap,
and spend never passes the budget."""

from __future__ import annotations

import httpx
import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.settings import Settings
from router.ledger.models import KeyUsageRow, RequestRow
from tests.conftest import remote_expert
from tests.support.servers import serve_in_thread

BUDGET = 0.03
WORDS = " ".join(["word"] * 200)  # 200-token answers: a strong one costs $0.006, a cheap one $0.0004


def _run(tmp_path, upstreams, *, pacing: dict | None, n: int = 30) -> tuple[list[tuple[int, str | None]], object]:
    from api.app import create_app

    upstreams["cheap"][0].answer = upstreams["strong"][0].answer = WORDS
    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3, params_b=1.0),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8, params_b=70.0,
                             input_usd_per_mtok=10.0, output_usd_per_mtok=30.0)]
    cfg = {"experts": experts, "policy": {"active": "prior", "lambda": 0}}
    if pacing is not None:
        cfg["pacing"] = pacing
    tmp_path.mkdir()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    settings = Settings(config=tmp_path / "c.yaml", data_dir=tmp_path / "var", autostart_experts=False, require_api_keys=True,
                        key_cache_ttl_s=0)
    app = create_app(settings)
    out = []
    with serve_in_thread(app) as url:
        _, secret = app.state.service.keys.create(name="team", budget_usd_day=BUDGET)
        with httpx.Client(base_url=url, timeout=10, headers={"authorization": f"Bearer {secret}"}) as http:
            for i in range(n):
                r = http.post("/v1/chat/completions", json={"model": "expertmux/auto", "max_tokens": 250,
                                                            "messages": [{"role": "user", "content": f"question {i}"}]})
                out.append((r.status_code, r.headers.get("x-expertmux-expert")))
        assert app.state.service.ledger.flush(10)
        with Session(app.state.service.ledger.engine) as s:
            spent = s.scalar(select(KeyUsageRow.spent_usd).where(KeyUsageRow.window == "day"))
            total = s.scalar(select(func.sum(RequestRow.cost_usd)))
            decisions = [d for d in s.scalars(select(RequestRow.decision).order_by(RequestRow.created_at)) if d]
    return out, (spent, total, decisions)


def test_near_the_cap_the_cheapest_expert_serves_before_any_refusal(tmp_path, upstreams):
    off, (spent_off, _, _) = _run(tmp_path / "off", upstreams, pacing=None)
    on, (spent_on, total_on, decisions) = _run(tmp_path / "on", upstreams, pacing={"update_s": 3600})
    answered_off = [e for code, e in off if code == 200]
    first_429_off = next(i for i, (code, _) in enumerate(off) if code == 429)
    # hard cap only: the strong expert until its worst case no longer fits, then refusals
    assert set(answered_off) == {"strong"} and first_429_off < 10
    # pacing: the same key keeps being answered, by the cheap expert, long after
    first_429_on = next((i for i, (code, _) in enumerate(on) if code == 429), len(on))
    assert first_429_on > 3 * first_429_off
    served = [e for code, e in on if code == 200]
    assert served[0] == "strong" and "cheap" in served
    assert all(code == 200 for code, _ in on[:first_429_on])
    assert any(d.get("pacing", {}).get("downgrade") for d in decisions)
    # the hard cap still holds: refused at the cap, never more spent than the budget, and nearly all of it used
    assert first_429_on < len(on) and all(code == 429 for code, _ in on[first_429_on:])
    assert spent_on <= BUDGET + 1e-12 and total_on <= BUDGET + 1e-12 and spent_off <= BUDGET + 1e-12
    assert spent_on > BUDGET - 0.001 > spent_off
