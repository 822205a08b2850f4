"""Shadow evaluation: the candidate from the registry, a queue that never waits, the log's summary
and the promotion gate reading it as evidence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.config import ShadowConfig  # noqa: E402
from core.errors import PolicyError  # noqa: E402
from core.types import Decision, RouteRequest  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from policies.training import train_policy  # noqa: E402
from router.ledger import migrate  # noqa: E402
from router.ledger.db import make_engine  # noqa: E402
from router.ledger.models import ShadowDecisionRow  # noqa: E402
from router.lifecycle import registry as reg  # noqa: E402
from router.lifecycle.gate import GateResult  # noqa: E402
from router.shadow.candidate import load_candidate, registered_artifact  # noqa: E402
from router.shadow.evidence import ShadowEvidenceGate, summary  # noqa: E402
from router.shadow.runner import ShadowItem, ShadowRunner  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def test_the_candidate_is_the_registered_version_else_the_served_policy(engine, tmp_path):
    configure_encoders(cache_dir=None)
    data = RoutingData.from_frame(make_frame(n_per_task=20, seed=1), name="synthetic")
    path = train_policy("knn", data, params={"encoder": "hashing", "k": 5}, out=tmp_path / "knn").path
    version = reg.register(engine, "knn", path)
    experts = data.experts()
    cand = load_candidate(engine, policy="knn", version=None, experts=experts, options={}, root=tmp_path, served=None)
    assert cand.version == version and cand.expert_names == [e.name for e in experts]
    prompt = data.prompts[0]
    d = cand.decide(RouteRequest(prompt=prompt, prompt_tokens=10, max_completion_tokens=50), lambda_=0.0)
    assert d.policy == "knn" and d.policy_version == version
    assert registered_artifact(engine, "knn", version) == (version, str(path))
    with pytest.raises(PolicyError, match="no registered version"):
        registered_artifact(engine, "knn", "v9-nope")
    served = object()
    assert load_candidate(engine, policy="prior", version=None, experts=experts, options={}, root=tmp_path,
                          served=lambda name: served) is served  # nothing registered: the policy as served


class _Candidate:
    name, version = "cand", "v1"

    def decide(self, rr, *, lambda_, unavailable):
        return Decision(expert="b", policy=self.name, policy_version=self.version, scores={"a": 0.1, "b": 0.2},
                        propensities={"b": 1.0}, ranking=["b", "a"])


def _item(i: int) -> ShadowItem:
    served = Decision(expert="a", policy="served", policy_version="v0", scores={"a": 1.0}, propensities={"a": 1.0}, ranking=["a"])
    return ShadowItem(request_id=f"r{i}", route_request=RouteRequest("p", 1, 10), lambda_=2.0, unavailable=frozenset(),
                      served=served, served_expert="a", served_cost_usd=0.001)


def test_submit_never_waits_and_a_full_queue_skips(engine):
    async def scenario():
        runner = ShadowRunner(ShadowConfig(policy="cand", max_pending=2), _Candidate(), engine=engine)
        assert [runner.submit(_item(i)) for i in range(4)] == [True, True, False, False]
        assert runner.counts["skipped_full"] == 2
        task = asyncio.create_task(runner.run())
        assert await runner.drain(5.0)
        task.cancel()
        return runner

    runner = asyncio.run(scenario())
    assert runner.counts["decided"] == 2
    stats = summary(engine)[0]
    assert stats["decisions"] == 2 and stats["agreement"] == 0.0 and stats["judged"] == 0
    sampled = ShadowRunner(ShadowConfig(policy="cand", sample_rate=0.0), _Candidate(), engine=engine)
    assert not sampled.submit(_item(9)) and sampled.counts["submitted"] == 0


def _judged(engine, version: str, pairs: list[tuple[float, float]]) -> None:
    rows = [{"request_id": f"q{i}", "created_at": datetime.now(UTC), "policy": "knn", "policy_version": version,
             "served_policy": "knn", "served_version": "v1", "served_expert": "a", "expert": "b", "agrees": False,
             "decision": {}, "lambda": 0.0, "status": "judged", "served_cost_usd": 0.001, "cost_usd": 0.002, "latency_ms": 5.0,
             "served_score": s, "score": c, "error": None} for i, (c, s) in enumerate(pairs)]
    with engine.begin() as conn:
        conn.execute(ShadowDecisionRow.__table__.insert(), rows)


def test_the_gate_reads_the_shadow_record_as_evidence(engine):
    _judged(engine, "v2", [(0.2, 0.8)] * 7 + [(0.5, 0.5)] * 2 + [(0.9, 0.1)])  # wins 1 + 2 halves of 10
    candidate = SimpleNamespace(policy="knn", version="v2")
    passing = lambda c, i: GateResult(True, "aiq beats", [{"metric": "aiq", "delta": 0.01}])  # noqa: E731
    shown_only = ShadowEvidenceGate(engine, ShadowConfig(policy="knn"), passing)(candidate, None)
    assert shown_only.passed  # gate_min_judged = 0: the record is shown, not decisive
    by = {r["metric"]: r for r in shown_only.rows}
    assert by["shadow_win_share"]["candidate"] == pytest.approx(0.2) and by["shadow_judged"]["candidate"] == 10
    assert by["shadow_cost"]["candidate"] == pytest.approx(0.02) and by["shadow_cost"]["higher_is_better"] is False
    strict = ShadowEvidenceGate(engine, ShadowConfig(policy="knn", gate_min_judged=10), passing)(candidate, None)
    assert not strict.passed and "won 20% of 10 blind judgements" in strict.reason
    too_few = ShadowEvidenceGate(engine, ShadowConfig(policy="knn", gate_min_judged=11), passing)(candidate, None)
    assert too_few.passed
    other = ShadowEvidenceGate(engine, ShadowConfig(policy="knn", gate_min_judged=1), passing)(
        SimpleNamespace(policy="knn", version="v3"), None)
    assert other.passed and {"metric": "shadow_decisions", "candidate": 0, "incumbent": None, "delta": None,
                             "higher_is_better": True} in other.rows
