"""Sessions: identity, tool-loop detection, the stay/switch/escalate rule and the state store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from core.config import SessionsConfig
from core.types import Decision, ExpertInfo, SessionView
from router.ledger import migrate
from router.ledger.db import make_engine
from router.request.protocol import parse_chat_request
from router.sessions.identity import session_key, tool_loop
from router.sessions.rule import SessionRule, switch_price_usd, tiers
from router.sessions.state import Outcome, SessionState, advance
from router.sessions.store import SessionStore

EXPERTS = [ExpertInfo("small", 0.1, 0.1, params_b=1), ExpertInfo("mid", 1.0, 2.0, params_b=8),
           ExpertInfo("mid2", 1.0, 2.0, params_b=8), ExpertInfo("large", 10.0, 30.0, params_b=70)]


def _messages(raw: list[dict]):
    import orjson

    return parse_chat_request(orjson.dumps({"model": "m", "messages": raw})).messages


def test_session_ids_prefer_explicit_then_user_then_the_conversation_opening():
    turn1 = _messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "plan a trip"}])
    turn3 = _messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "plan a trip"},
                       {"role": "assistant", "content": "where?"}, {"role": "user", "content": "Rome"}])
    other = _messages([{"role": "user", "content": "plan a trip"}])
    key = lambda **kw: session_key(api_key_id=kw.pop("k", None), explicit=kw.pop("explicit", None),  # noqa: E731
                                   user=kw.pop("user", None), **kw)
    assert key(messages=turn1) == key(messages=turn3)  # every turn repeats the opening
    assert key(messages=turn1) != key(messages=other)
    assert key(messages=turn1) != key(messages=turn1, k="key-2")  # keys never share a session
    assert key(messages=turn1, explicit="run-1") == key(messages=other, explicit="run-1")
    assert key(messages=turn1, user="u") == key(messages=other, user="u") != key(messages=turn1, explicit="u")
    assert key(messages=turn1, user="u", from_user=False) == key(messages=turn1)
    assert key(messages=turn1, from_prefix=False) is None
    assert key(messages=turn1, user="alice@example.com").startswith("s-") and "alice" not in key(messages=turn1, user="alice@example.com")


def _call(args: str, i: int = 0) -> list[dict]:
    return [{"role": "assistant", "content": None,
             "tool_calls": [{"id": f"c{i}", "type": "function", "function": {"name": "search", "arguments": args}}]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": "nothing"}]


def test_tool_loop_counts_the_same_call_repeated_at_the_end():
    user = [{"role": "user", "content": "go"}]
    assert tool_loop(_messages(user)) == 0
    same = user + _call('{"q": "a", "n": 1}', 0) + _call('{"n": 1, "q": "a"}', 1) + _call('{"q":"a","n":1}', 2)
    assert tool_loop(_messages(same)) == 3  # argument order and spacing do not matter
    assert tool_loop(_messages(user + _call('{"q": "b"}') + _call('{"q": "a"}') + _call('{"q": "a"}'))) == 2
    broken = same + [{"role": "assistant", "content": "let me think"}]
    assert tool_loop(_messages(broken)) == 0


def _decision(scores: dict[str, float], pick: str, props: dict[str, float] | None = None) -> Decision:
    ranking = sorted(scores, key=lambda n: (n != pick, -scores[n]))
    return Decision(expert=pick, policy="p", policy_version="v", scores=scores, propensities=props or {pick: 1.0},
                    ranking=ranking, reason="argmax")


def test_stay_unless_the_gain_beats_the_price_of_the_cached_prefix():
    cfg = SessionsConfig()
    rule = SessionRule(cfg, EXPERTS)
    view = SessionView("s", expert="mid", turns=3, prefix_tokens=2000)
    price_large = switch_price_usd(view, EXPERTS[3], cfg)
    assert price_large == pytest.approx(2000 * 10.0 / 1e6)
    lam = 100.0  # switch price in quality points: 100 × 0.02 = 2.0
    d = _decision({"mid": 0.5, "large": 2.4, "small": 0.1}, "large")
    out, ruling = rule.apply(d, view, lam)
    assert ruling.event == "stay" and out.expert == "mid" and out.ranking[0] == "mid" and out.propensities["mid"] == 1.0
    d = _decision({"mid": 0.5, "large": 2.6, "small": 0.1}, "large")
    out, ruling = rule.apply(d, view, lam)
    assert ruling.event == "switch" and out.expert == "large"
    assert out.as_record()["session"]["expert_before"] == "mid"
    # no prefix read yet, or cache pricing off: a switch costs only the penalty
    assert rule.apply(d, SessionView("s", expert="mid"), lam)[1].event == "switch"
    assert SessionRule(SessionsConfig(switch_penalty=5.0), EXPERTS).apply(d, SessionView("s", expert="mid"), lam)[1].event == "stay"
    # an expert that cannot serve this request (not among the feasible candidates) is left
    d = _decision({"large": 1.0, "small": 0.9}, "large")
    assert rule.apply(d, view, lam)[1].event == "switch"


def test_a_stall_moves_one_tier_up_and_sets_the_floor():
    rule = SessionRule(SessionsConfig(), EXPERTS)
    assert tiers(EXPERTS) == {"small": 0, "mid": 1, "mid2": 1, "large": 2}
    d = _decision({"small": 0.9, "mid": 0.2, "mid2": 0.3, "large": 0.1}, "small")
    out, ruling = rule.apply(d, SessionView("s", expert="small", stall="tool_loop"), 0.0)
    assert ruling.event == "escalate" and out.expert == "mid2"  # one tier, the better of its two experts
    # later turns: the policy wants small again, the floor holds the session at mid's tier
    out, ruling = rule.apply(d, SessionView("s", expert="mid2", floor_expert="mid2"), 0.0)
    assert out.expert == "mid2" and ruling.event == "stay"
    top = rule.apply(d, SessionView("s", expert="large", stall="errors"), 0.0)[0]
    assert top.expert == "large"  # nothing above the top tier: stay
    assert SessionRule(SessionsConfig(escalate=False), EXPERTS).apply(
        d, SessionView("s", expert="small", stall="tool_loop"), 0.0)[0].expert == "small"


def test_propensities_follow_a_stochastic_policy_through_the_rule():
    rule = SessionRule(SessionsConfig(), EXPERTS)
    scores = {"small": 0.0, "mid": 0.0, "large": 0.0}
    d = _decision(scores, "large", {"small": 0.5, "mid": 0.25, "large": 0.25})
    out, _ = rule.apply(d, SessionView("s", expert="mid"), 0.0)  # no gain anywhere: always stays
    assert out.expert == "mid" and out.propensities == {"small": 0.0, "mid": 1.0, "large": 0.0}
    out, _ = rule.apply(d, SessionView("s", expert="mid", stall="errors"), 0.0)  # every pick escalates to large
    assert out.propensities["large"] == 1.0


def test_state_advances_with_each_outcome():
    now = datetime.now(UTC)
    s = SessionState(id="s")
    ok = lambda e, ev=None: Outcome("r", True, e, 100, 20, 0.01, ev, now)  # noqa: E731
    s = advance(s, ok("small", "first"))
    assert (s.expert, s.turns, s.switches, s.prefix_tokens) == ("small", 1, 0, 120)
    s = advance(s, ok("large", "escalate"))
    assert (s.expert, s.switches, s.escalations, s.floor_expert) == ("large", 1, 1, "large")
    s = advance(s, Outcome("r2", False, "large", 0, 0, 0.0, "stay", now))
    s = advance(s, Outcome("r3", False, "large", 0, 0, 0.0, "stay", now))
    assert s.failures == 2 and s.turns == 2
    view = s.view(SessionsConfig(max_failures=2), tool_loop=0, prompt_tokens=50)
    assert view.stall == "errors" and view.prefix_tokens == 50  # never more than the request's own prompt
    assert advance(s, ok("large")).failures == 0


def test_the_store_round_trips_through_the_database_and_forgets_idle_sessions(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    clock = [datetime(2026, 1, 1, 12, tzinfo=UTC)]
    cfg = SessionsConfig(cache_ttl_s=0, idle_timeout_s=600, negative_feedback=None)

    async def scenario():
        a = SessionStore(engine, cfg, clock=lambda: clock[0])
        assert (await a.get("s-1")).turns == 0
        a.finish("s-1", Outcome("r1", True, "mid", 300, 50, 0.2, "first", clock[0]))
        assert a.flush()
        b = SessionStore(engine, cfg, clock=lambda: clock[0])  # another replica
        got = await b.get("s-1")
        assert (got.expert, got.turns, got.prefix_tokens, got.cost_usd) == ("mid", 1, 350, pytest.approx(0.2))
        clock[0] += timedelta(seconds=601)
        assert (await b.get("s-1")).turns == 0  # idle too long: starts afresh
        assert a.prune() == 0
        clock[0] += timedelta(days=8)
        assert a.prune() == 1
        # an unreachable store: None (the request is routed alone), and no error
        engine.dispose()
        broken = SessionStore(make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"), cfg)
        assert await broken.get("s-2") is None and broken.read_failures == 1
        assert await broken.get("s-3") is None and broken.read_failures == 1  # not asked again for a while

    asyncio.run(scenario())
