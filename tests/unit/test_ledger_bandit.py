"""The logged data set from a real SQLite ledger: rows written by the ledger writer, feedback by
the feedback service, read back with ``load_logged``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy.orm import Session

from core.types import Decision
from policies.logged import training_data
from router.learning.bandit import expert_info, load_logged
from router.learning.feedback import FeedbackService
from router.ledger.db import make_engine
from router.ledger.migrate import upgrade
from router.ledger.writer import LedgerWriter
from router.request.trace import RequestTrace

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _decision(expert: str, props: dict[str, float] | None) -> Decision:
    scores = {"alpha": 0.4, "beta": 0.6, "gamma": 0.1}
    return Decision(expert=expert, policy="knn", policy_version="v3-abc", scores=scores, propensities=props or {},
                    ranking=[expert] + [e for e in scores if e != expert])


def _record(decision, *, minutes: int, prompt: str | None, status: str = "ok", cost: float = 0.002):
    trace = RequestTrace(id=uuid.uuid4().hex, created_at=T0 + timedelta(minutes=minutes))
    trace.decision = decision
    trace.set_prompt(prompt or "hidden", "full" if prompt else "hash")
    attempt = trace.start_attempt(decision.expert)
    attempt.cost_usd, attempt.status = cost, "ok" if status == "ok" else "error"
    trace.status = status
    return trace.id, trace.to_record()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
    upgrade(url)
    engine = make_engine(url)
    writer = LedgerWriter(engine)
    writer.start()
    ids = {}
    rows = {
        "explored": (_decision("beta", {"alpha": 0.8, "beta": 0.15, "gamma": 0.05}), 10, "what is 2+2?", "ok"),
        "old": (_decision("alpha", None), 5, "capital of France?", "ok"),  # written before propensities were logged
        "failed": (_decision("alpha", {"alpha": 1.0}), 11, "boom", "error"),
        "silent": (_decision("gamma", {"alpha": 0.5, "gamma": 0.5}), 12, "no feedback here", "ok"),
        "early": (_decision("alpha", {"alpha": 0.9, "beta": 0.1}), -600, "too early", "ok"),
        "hashed": (_decision("gamma", {"beta": 0.5, "gamma": 0.5}), 13, None, "ok"),
    }
    for name, (d, minutes, prompt, status) in rows.items():
        ids[name], record = _record(d, minutes=minutes, prompt=prompt, status=status)
        writer.submit(record)
    assert writer.flush()
    writer.close()
    fb = FeedbackService(engine=engine, ledger=writer, keys=None, auth_required=False)
    for name, score, source in [("explored", 1.0, "user"), ("explored", 0.0, "judge"), ("explored", 0.5, "judge"),
                                ("old", 0.25, "auto"), ("failed", 1.0, "user"), ("early", 1.0, "user"),
                                ("hashed", 0.75, "auto")]:
        fb.record(request_id=ids[name], score=score, source=source)
    yield url, engine, ids
    engine.dispose()


def _row(data, rid):
    (i,) = np.flatnonzero(data.request_id == rid)
    return i


def test_rows_rewards_and_propensities(ledger):
    url, _, ids = ledger
    data = load_logged(url)
    assert set(data.request_id) == {ids["explored"], ids["old"], ids["early"], ids["hashed"]}  # ok + feedback
    assert data.experts == ["alpha", "beta", "gamma"]
    assert np.all(np.diff(data.created_at.astype("int64")) >= 0)  # oldest first
    i = _row(data, ids["explored"])
    assert data.reward[i] == pytest.approx(0.5) and data.n_feedback[i] == 3  # mean of 1.0, 0.0, 0.5
    assert data.experts[data.action[i]] == "beta" and data.propensity[i] == pytest.approx(0.15) and data.logged[i]
    assert data.propensities[i].tolist() == pytest.approx([0.8, 0.15, 0.05]) and data.candidates[i].all()
    assert data.prompts[i] == "what is 2+2?" and data.cost[i] == pytest.approx(0.002)
    assert data.policy[i] == "knn" and data.policy_version[i] == "v3-abc"
    j = _row(data, ids["old"])  # no propensities logged: deterministic, p = 1, said so
    assert data.propensity[j] == 1.0 and not data.logged[j]
    assert data.propensities[j].tolist() == [1.0, 0.0, 0.0] and data.candidates[j].all()
    h = _row(data, ids["hashed"])
    assert data.prompts[h] is None and not data.candidates[h, 0]
    assert len(data.with_prompts()) == 3
    stats = data.stats()
    assert stats["rows"] == 4 and stats["propensity"]["logged_share"] == 0.75 and stats["with_prompt"] == 3
    assert stats["propensity"]["deterministic_share"] == 0.25 and stats["policies"] == ["knn"]


def test_filters(ledger):
    url, engine, ids = ledger
    since = load_logged(engine, since=T0)
    assert ids["early"] not in set(since.request_id) and len(since) == 3
    assert since.query["since"] == "2026-03-01 12:00:00"
    assert len(load_logged(url, since="2026-03-01T12:11:00+00:00")) == 1  # ISO string, aware
    assert len(load_logged(url, until=T0.date())) == 0 and len(load_logged(url, until="2026-03-02")) == 4
    only_user = load_logged(url, sources=["user"])
    i = _row(only_user, ids["explored"])
    assert only_user.reward[i] == 1.0 and only_user.n_feedback[i] == 1 and len(only_user) == 2
    assert set(load_logged(url, min_feedback=2).request_id) == {ids["explored"]}
    everything = load_logged(url, min_feedback=0)  # requests without feedback too (reward NaN), never failed ones
    assert ids["silent"] in set(everything.request_id) and ids["failed"] not in set(everything.request_id)
    assert np.isnan(everything.reward[_row(everything, ids["silent"])]) and len(everything.with_reward()) == 4
    with Session(engine) as session:
        assert len(load_logged(session, policies=["knn"])) == 4 and len(load_logged(session, policies=["mlp"])) == 0
    with pytest.raises(ValueError, match="unknown feedback sources"):
        load_logged(url, sources=["users"])


def test_expert_info_and_training_matrix(ledger):
    url, _, ids = ledger
    assert expert_info(url) == {}  # no experts synced in this ledger
    data = load_logged(url).with_prompts()
    observed = training_data(data, target="observed")
    assert observed.scores.shape == (3, 3) and np.isfinite(observed.scores).sum() == 3
    ipw = training_data(data, target="ipw", clip=50)
    # the explored row (p = 0.15) outweighs the two p ≈ 1 rows of other experts; nothing is dropped
    counts = {rid: int((ipw.qid == rid).sum()) for rid in data.request_id}
    assert min(counts.values()) >= 1 and len(ipw) >= 3
    q_hat = np.full((3, 3), 0.5)
    dr = training_data(data, target="dr", q_hat=q_hat)
    i = _row(data, ids["explored"])
    assert dr.scores[i, 1] == pytest.approx(0.5 + (0.5 - 0.5) / 0.15) and dr.scores[i, 0] == 0.5
    with pytest.raises(Exception, match="prompt text"):
        training_data(load_logged(url), target="observed")
