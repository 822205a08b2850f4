"""Cascade routing through the real app and the official openai client, against scripted experts
that answer with token logprobs: the step logic, the caps, the ledger rows, fallbacks, streaming.

The cascade artifact is trained on the simulated three-expert matrix (experts small, mid, large,
hashing encoder, the first-token logprob as post-hoc estimator); at λ = 1000 it runs ``small``
first, stops when small's answer is confident and escalates when it is not.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from router.ledger.models import AttemptRow, KeyUsageRow, RequestRow  # noqa: E402
from tests.conftest import make_settings, remote_expert  # noqa: E402
from tests.support import cascade_upstream  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402

MODEL = "expertmux/cascade"
Q = [{"role": "user", "content": "What is the capital of France?"}]
SURE, DOUBT = -0.01, -3.0
ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from policies import create_policy
    from policies.artifacts import save_artifact
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders
    from tests.support import cascade_matrix

    configure_encoders(cache_dir=None)
    df, meta = cascade_matrix.make_frame(n_per_task=150, seed=1)
    data = RoutingData.from_frame(df, meta, name="cascade-sim")
    policy = create_policy("cascade", encoder="hashing", estimator="answer_prob", folds=3).fit(data.subset(data.rows_of("train")))
    return save_artifact(policy, tmp_path_factory.mktemp("artifacts") / "cascade", data=data)


@pytest.fixture(scope="module")
def served(artifact, tmp_path_factory):
    experts = {n: cascade_upstream.Scripted() for n in ("small", "mid", "large")}
    prices = {"small": (0.2, 0.4), "mid": (1.0, 2.0), "large": (6.0, 12.0)}
    with serve_in_thread(cascade_upstream.make_app(experts["small"])) as u1, \
            serve_in_thread(cascade_upstream.make_app(experts["mid"])) as u2, \
            serve_in_thread(cascade_upstream.make_app(experts["large"])) as u3:
        urls = {"small": u1, "mid": u2, "large": u3}
        config = [remote_expert(n, urls[n], input_usd_per_mtok=prices[n][0], output_usd_per_mtok=prices[n][1]) for n in urls]
        policy = {"active": "prior", "lambda": 1000,
                  "options": {"cascade": {"artifact": str(artifact)}, "cascades": {"max_steps": 3}}}
        from api.app import create_app

        settings = make_settings(tmp_path_factory.mktemp("app"), config, policy).model_copy(
            update={"admin_token": SecretStr(ADMIN), "key_cache_ttl_s": 0})
        app = create_app(settings)
        with serve_in_thread(app) as url:
            yield experts, app, url


@pytest.fixture
def cascade(served):
    experts, app, url = served
    for name, s in experts.items():  # every test starts from confident, working experts
        s.answer, s.first_logprob, s.fail_status = f"{name} says Paris", SURE, None
        s.calls.clear()
    options = app.state.service.cascade.options
    saved = options.max_steps
    yield experts, app, openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60)
    options.max_steps = saved


def ledger(app, request_id: str) -> tuple[RequestRow, list[AttemptRow]]:
    ledger = app.state.service.ledger
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        row = s.get(RequestRow, request_id)
        attempts = s.scalars(select(AttemptRow).where(AttemptRow.request_id == request_id).order_by(AttemptRow.attempt_no)).all()
        return row, list(attempts)


def ask(client, **kw):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=Q, max_tokens=64, **kw)
    return raw.parse(), raw.headers["x-expertmux-request-id"]


def test_a_confident_first_answer_stops(cascade):
    experts, app, client = cascade
    resp, rid = ask(client)
    assert resp.choices[0].message.content == "small says Paris"
    assert resp.choices[0].logprobs is None  # asked for the estimator, not shown to a client that did not ask
    trajectory = resp.model_extra["expertmux"]["cascade"]
    assert trajectory["answered_by"] == "small" and trajectory["calls"] == 1 and not trajectory["escalated"]
    assert experts["small"].calls[0]["logprobs"] is True and not experts["mid"].calls
    row, attempts = ledger(app, rid)
    assert row.status == "ok" and row.expert == "small" and row.n_attempts == 1 and row.policy == "cascade"
    step = attempts[0].usage_details["cascade"]
    assert step["step"] == 1 and step["returned"] and step["posthoc"] > 0.5
    assert row.decision["cascade"]["answered_by"] == "small"


def test_a_doubtful_answer_escalates_and_every_step_is_a_row(cascade):
    experts, app, client = cascade
    experts["small"].first_logprob = DOUBT
    resp, rid = ask(client)
    assert resp.choices[0].message.content == "mid says Paris"
    row, attempts = ledger(app, rid)
    assert [(a.expert, a.status) for a in attempts] == [("small", "ok"), ("mid", "ok")]
    small, mid = (a.usage_details["cascade"] for a in attempts)
    assert small["posthoc"] < mid["posthoc"] and not small["returned"] and mid["returned"]
    assert mid["ex_ante"] is not None  # the estimate the policy escalated on
    assert row.expert == "mid" and row.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts))
    assert resp.usage.completion_tokens == row.completion_tokens == sum(a.completion_tokens for a in attempts)
    assert row.decision["cascade"]["escalated"] and row.decision["cascade"]["calls"] == 2


def test_caps_on_steps_and_dollars(cascade):
    experts, app, client = cascade
    experts["small"].first_logprob = DOUBT
    app.state.service.cascade.options.max_steps = 1
    resp, rid = ask(client)
    assert resp.model_extra["expertmux"]["cascade"]["calls"] == 1 and not experts["mid"].calls
    app.state.service.cascade.options.max_steps = 3
    # the request's own cap bounds the sum: small fits it, small + mid does not
    resp, rid = ask(client, extra_body={"expertmux": {"max_cost_usd": 5e-5}})
    row, attempts = ledger(app, rid)
    assert len(attempts) == 1 and row.expert == "small" and not experts["mid"].calls


def test_a_failing_step_falls_back(cascade):
    experts, app, client = cascade
    experts["small"].fail_status = 500
    resp, rid = ask(client)
    row, attempts = ledger(app, rid)
    assert attempts[0].expert == "small" and attempts[0].status == "error"
    assert attempts[-1].status == "ok" and row.status == "ok" and row.expert == attempts[-1].expert != "small"
    assert resp.choices[0].message.content == f"{row.expert} says Paris"
    assert attempts[0].usage_details["cascade"]["status"] == "error"
    for s in experts.values():
        s.fail_status = 502
    with pytest.raises(openai.APIStatusError) as info:
        ask(client)
    assert info.value.status_code == 502


def test_streaming_sends_no_byte_of_a_discarded_step(cascade):
    experts, app, client = cascade
    experts["small"].answer, experts["small"].first_logprob = "DISCARDED draft from the small expert", DOUBT
    experts["mid"].answer = "The capital of France is Paris, as the mid expert says."
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=Q, max_tokens=64, stream=True,
                                                            stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert not any("DISCARDED" in c.model_dump_json() for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris, as the mid expert says."
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason == "stop")
    trajectory = last.model_extra["expertmux"]["cascade"]
    assert trajectory["answered_by"] == "mid" and trajectory["first_byte_ms"] >= trajectory["escalation_ms"] > 0
    row, attempts = ledger(app, raw.headers["x-expertmux-request-id"])
    assert row.stream and row.status == "ok" and row.expert == "mid" and len(attempts) == 2
    assert chunks[-1].usage.completion_tokens == row.completion_tokens
    assert all(not call.get("stream") for s in experts.values() for call in s.calls)  # steps are buffered upstream
    # and the raw bytes say the same: the discarded draft never crossed the wire
    url = str(client.base_url).rstrip("/")
    with httpx.stream("POST", f"{url}/chat/completions", json={"model": MODEL, "messages": Q, "stream": True,
                                                                "max_tokens": 64}, timeout=60) as r:
        body = b"".join(r.iter_bytes())
    assert b"DISCARDED" not in body and b'"answered_by": "mid"' in body.replace(b'":"', b'": "')


def test_a_limited_key_reserves_each_step_and_pays_once(cascade):
    experts, app, client = cascade
    experts["small"].first_logprob = DOUBT
    url = str(client.base_url).rstrip("/").removesuffix("/v1")
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10) as http:
        created = http.post("/admin/keys", json={"name": "cascade-team", "budget_usd_day": 1.0, "rpm_limit": 100})
        assert created.status_code == 201, created.text
        key = created.json()
    user = openai.OpenAI(base_url=f"{url}/v1", api_key=key["key"], max_retries=0, timeout=60)
    raw = user.chat.completions.with_raw_response.create(model=MODEL, messages=Q, max_tokens=64)
    row, attempts = ledger(app, raw.headers["x-expertmux-request-id"])
    assert len(attempts) == 2
    with Session(app.state.service.ledger.engine) as s:
        usage = {u.window: u for u in s.scalars(select(KeyUsageRow).where(KeyUsageRow.key_id == key["id"]))}
    assert usage["day"].spent_usd == pytest.approx(row.cost_usd) and usage["day"].reserved_usd == pytest.approx(0.0, abs=1e-12)
    assert usage["day"].requests == 1 and usage["minute"].requests == 1  # one request, however many steps


class Judge(cascade_upstream.Scripted):
    """A judge expert: rates an answer containing GOOD 9/10, anything else 2/10."""

    @property
    def answer(self) -> str:
        text = self.calls[-1]["messages"][-1]["content"] if self.calls else ""
        return "9" if "GOOD" in text.split("Answer:")[-1] else "2"

    @answer.setter
    def answer(self, value: str) -> None:
        pass


def test_the_judge_estimator_asks_the_configured_judge_about_each_answer(tmp_path):
    """A cascade calibrated on judge verdicts: the router layer asks the judge (an attempt row, paid),
    the policy reads the verdict; a bad verdict escalates, a good one stops."""
    import numpy as np
    import yaml

    from core.settings import Settings
    from policies import create_policy
    from policies.artifacts import save_artifact
    from policies.data import RoutingData
    from tests.support import cascade_matrix

    df, meta = cascade_matrix.make_frame(n_per_task=100, seed=2)
    rng = np.random.default_rng(0)
    for e in ("small", "mid", "large"):  # a judge that mostly tells right from wrong
        df[f"judge::{e}"] = np.clip(np.where(df[f"score::{e}"] > 0, 0.85, 0.2) + rng.normal(0, 0.1, len(df)), 0, 1)
    data = RoutingData.from_frame(df, meta)
    policy = create_policy("cascade", encoder="hashing", estimator="judge", folds=3).fit(data.subset(data.rows_of("train")))
    artifact = save_artifact(policy, tmp_path / "cascade", data=data)
    experts = {n: cascade_upstream.Scripted(answer=f"{n} answer") for n in ("small", "mid", "large")}
    judge = Judge()
    apps = [cascade_upstream.make_app(s) for s in (*experts.values(), judge)]
    with serve_in_thread(apps[0]) as u1, serve_in_thread(apps[1]) as u2, serve_in_thread(apps[2]) as u3, \
            serve_in_thread(apps[3]) as uj:
        urls = {"small": u1, "mid": u2, "large": u3, "judge": uj}
        config = {"experts": [remote_expert(n, u) for n, u in urls.items()],
                  "policy": {"active": "prior", "lambda": 1000, "options": {"cascade": {"artifact": str(artifact)},
                                                                          "cascades": {"judge": True}}},
                  "judge": {"expert": "judge", "sample_rate": 0.0}}
        (tmp_path / "expertmux.yaml").write_text(yaml.safe_dump(config))
        from api.app import create_app

        app = create_app(Settings(config=tmp_path / "expertmux.yaml", data_dir=tmp_path / "var", autostart_experts=False))
        with serve_in_thread(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60)
            experts["small"].answer = "GOOD small answer"
            resp, rid = ask(client)
            assert resp.choices[0].message.content == "GOOD small answer"
            row, attempts = ledger(app, rid)
            assert [a.expert for a in attempts] == ["small", "judge"]
            assert attempts[1].usage_details["cascade"] == {"judge_of": "small"} and row.cost_usd > attempts[0].cost_usd
            experts["small"].answer, experts["mid"].answer = "small answer", "GOOD mid answer"
            resp, rid = ask(client)
            row, attempts = ledger(app, rid)
            assert resp.choices[0].message.content == "GOOD mid answer"
            assert [a.expert for a in attempts] == ["small", "judge", "mid", "judge"]
            assert attempts[0].usage_details["cascade"]["posthoc"] < attempts[2].usage_details["cascade"]["posthoc"]


def test_the_dashboard_counts_escalations_and_what_they_added(cascade):
    """/admin/api/cascades over the rows the cascade wrote: one request stopped, one escalated;
    the escalated one added the first step's cost and time (its answer was not returned)."""
    from datetime import UTC, datetime

    experts, app, client = cascade
    since = datetime.now(UTC).isoformat()
    _, stopped = ask(client)
    experts["small"].first_logprob = DOUBT
    _, rid = ask(client)
    _, attempts = ledger(app, rid)
    _, first = ledger(app, stopped)
    small = attempts[0]
    assert small.expert == "small" and not small.usage_details["cascade"]["returned"]
    base = client.base_url.join("/admin/api/cascades")
    body = httpx.get(str(base), params={"since": since}, headers={"authorization": f"Bearer {ADMIN}"}).json()
    [p] = body["policies"]
    assert (p["policy"], p["requests"], p["escalated"], p["mean_steps"]) == ("cascade", 2, 1, 1.5)
    assert small.cost_usd > 0 and p["added_cost_usd"] == pytest.approx(small.cost_usd)
    assert p["added_latency_p50_ms"] == p["added_latency_p95_ms"] == round(small.latency_ms, 3)
    assert p["cost_usd"] == pytest.approx(sum(a.cost_usd for a in first + attempts))
