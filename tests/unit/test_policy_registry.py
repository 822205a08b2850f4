"""The policy registry: versions, the promotion gate (recorded metrics and benchmark), refusals,
forced promotions, rollback, the recorded history, and a PolicySet following the registry."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.config import PolicyConfig  # noqa: E402
from core.errors import InvalidRequestError, NotFoundError, PolicyError  # noqa: E402
from core.types import ExpertInfo  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from policies.training import train_policy  # noqa: E402
from router.ledger import migrate  # noqa: E402
from router.ledger.db import make_engine  # noqa: E402
from router.lifecycle import registry as reg  # noqa: E402
from router.lifecycle.gate import BenchmarkGate, manifest_gate  # noqa: E402
from router.lifecycle.policy_set import PolicySet  # noqa: E402
from router.lifecycle.sync import RegistrySync  # noqa: E402
from tests.support.routing_matrix import make_frame, write_matrix  # noqa: E402

PARAMS = {"encoder": "hashing", "k": 5}


def _matrix(shuffled: bool) -> RoutingData:
    df = make_frame(n_per_task=40, seed=3)
    if shuffled:  # outcomes of the train rows scrambled: a policy trained on them routes badly
        rng = np.random.default_rng(0)
        train = np.flatnonzero(df["split"].to_numpy() == "train")
        cols = [c for c in df.columns if c.startswith("score::")]
        df.loc[df.index[train], cols] = df.loc[df.index[train], cols].to_numpy()[rng.permutation(len(train))]
        for c in cols:  # and the skills inverted
            df.loc[df.index[train], c] = 1.0 - df.loc[df.index[train], c]
    return RoutingData.from_frame(df, name="synthetic")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    configure_encoders(cache_dir=None)
    root = tmp_path_factory.mktemp("registry")
    good_data, bad_data = _matrix(False), _matrix(True)
    bad = train_policy("knn", bad_data, params=PARAMS, out=root / "knn").path  # v1
    good = train_policy("knn", good_data, params=PARAMS, out=root / "knn").path  # v2
    bad2 = train_policy("knn", bad_data, params={**PARAMS, "k": 10}, out=root / "knn").path  # v3
    matrix = write_matrix(root / "matrix", n_per_task=40, seed=3)  # the good data, as a benchmark set
    return {"bad": bad, "good": good, "bad2": bad2, "matrix": matrix}


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def test_register_list_and_idempotence(engine, trained):
    v = reg.register(engine, "knn", trained["bad"], provenance={"source": "test"}, actor="alice")
    assert v.startswith("v1-") and reg.register(engine, "knn", trained["bad"]) == v
    [row] = reg.list_versions(engine, "knn")
    assert row.version == v and not row.active and row.provenance["source"] == "test"
    assert "aiq" in row.metrics["test"] and row.artifact_path.endswith("v1")
    assert reg.active(engine, "knn") is None
    with pytest.raises(PolicyError, match="holds policy 'knn'"):
        reg.register(engine, "mlp", trained["bad"])
    with pytest.raises(NotFoundError):
        reg.get_version(engine, "knn", "v9-deadbeef")
    assert [e["action"] for e in reg.history(engine, "knn")] == ["register"]


def test_manifest_gate_promote_refuse_force_rollback(engine, trained):
    bad, good, bad2 = (reg.register(engine, "knn", trained[k]) for k in ("bad", "good", "bad2"))
    first = reg.promote(engine, "knn", bad, actor="alice")
    assert first.action == "promote" and first.previous is None and reg.active(engine, "knn").version == bad
    better = reg.promote(engine, "knn", good, actor="bob")
    assert better.action == "promote" and better.previous == bad, better.reason
    assert better.gate["rows"][0]["metric"] == "aiq" and better.gate["rows"][0]["delta"] > 0
    refused = reg.promote(engine, "knn", bad2, actor="carol")
    assert refused.action == "refuse" and "does not beat" in refused.reason
    assert reg.active(engine, "knn").version == good
    with pytest.raises(InvalidRequestError, match="needs a reason"):
        reg.promote(engine, "knn", bad2, force=True)
    with pytest.raises(InvalidRequestError, match="already active"):
        reg.promote(engine, "knn", good)
    forced = reg.promote(engine, "knn", bad2, force=True, reason="incident 42", actor="carol")
    assert forced.action == "promote" and forced.forced and "incident 42" in forced.reason
    # rollback walks back through the promotions, then to the configured artifact
    assert reg.rollback(engine, "knn", actor="dave").version == good
    assert reg.rollback(engine, "knn").version == bad
    last = reg.rollback(engine, "knn")
    assert last.version is None and reg.active(engine, "knn") is None
    with pytest.raises(PolicyError, match="no active"):
        reg.rollback(engine, "knn")
    events = reg.history(engine, "knn")
    assert [e["action"] for e in events[:6]] == ["rollback", "rollback", "rollback", "promote", "refuse", "promote"]
    assert events[3]["forced"] and events[3]["actor"] == "carol" and events[5]["actor"] == "bob"


def test_manifest_gate_without_common_metrics_refuses(engine, trained):
    a = reg.register(engine, "knn", trained["bad"], metrics={})
    b = reg.register(engine, "knn", trained["good"], metrics={"fit_s": 1.0})
    reg.promote(engine, "knn", a)
    out = reg.promote(engine, "knn", b)
    assert out.action == "refuse" and "no evaluation on a common split" in out.reason
    assert manifest_gate(reg.get_version(engine, "knn", b), None).passed


def test_benchmark_gate_evaluates_both_artifacts(engine, trained):
    bad, good = reg.register(engine, "knn", trained["bad"]), reg.register(engine, "knn", trained["good"])
    gate = BenchmarkGate(trained["matrix"], split="test", lambda_=1000.0, fallback_incumbent=trained["bad"])
    # nothing active: compared with the configured artifact (the fallback)
    first = gate(reg.get_version(engine, "knn", good), None)
    assert first.passed and first.details["incumbent_artifact"].endswith("v1")
    metrics = {r["metric"]: r for r in first.rows}
    assert {"aiq", "quality@λ", "utility@λ", "cost@λ"} <= set(metrics) and metrics["aiq"]["delta"] > 0
    reg.promote(engine, "knn", good, gate=gate)
    refused = reg.promote(engine, "knn", bad, gate=gate)
    assert refused.action == "refuse" and "does not beat" in refused.reason and refused.gate["details"]["gate"] == "benchmark"


def test_policy_set_follows_the_registry(engine, trained):
    experts = [ExpertInfo("tiny", 0.05, 0.1), ExpertInfo("mid", 0.5, 0.5), ExpertInfo("huge", 2.0, 2.0)]
    cfg = PolicyConfig.model_validate({"active": "prior", "options": {"knn": {
        "artifact": str(trained["bad"]), "expert_map": {"small": "tiny", "mid": "mid", "large": "huge"}}}})
    policies = PolicySet(cfg, experts)
    sync = RegistrySync(policies, engine, interval_s=0.1)
    start = policies.get("knn").version
    assert sync.sync() == [] and policies.get("knn").version == start  # nothing registered: the configured artifact
    good = reg.register(engine, "knn", trained["good"])
    reg.promote(engine, "knn", good)
    assert sync.sync() == ["knn"] and policies.get("knn").version == good
    assert sync.sync() == []  # unchanged: nothing reloaded
    reg.rollback(engine, "knn")
    assert sync.sync() == ["knn"] and policies.get("knn").version == start


def test_ledger_gate_estimates_both_versions_off_policy(engine, trained):
    """Uniformly explored traffic with outcomes from the matrix: the off-policy estimate prefers
    the version that routes well, and refuses the other."""
    from datetime import UTC, datetime

    from sqlalchemy.orm import Session

    from router.ledger.models import FeedbackRow, RequestRow
    from router.lifecycle.gate import LedgerGate
    from tests.support.routing_matrix import PRICES

    data = RoutingData.load(trained["matrix"])
    ev = data.subset(data.rows_of("test"))
    names = ev.models
    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        for i, prompt in enumerate(ev.prompts * 3):
            j = int(rng.integers(len(names)))
            rid = f"{i:032x}"
            decision = {"expert": names[j], "propensities": {n: 1 / 3 for n in names}, "propensity": 1 / 3,
                        "scores": {n: 0.0 for n in names}, "ranking": names}
            s.add(RequestRow(id=rid, created_at=now, requested_model="expertmux/auto", policy="random", expert=names[j],
                             decision=decision, prompt_text=prompt, status="ok", cost_usd=1e-6, stream=False,
                             n_attempts=1, prompt_tokens=1, completion_tokens=1))
            s.flush()  # the request row before its feedback (foreign key)
            s.add(FeedbackRow(request_id=rid, created_at=now, score=float(ev.scores[i % len(ev), j]), source="user"))
    experts = [ExpertInfo(m, PRICES[m], PRICES[m]) for m in names]
    good, bad = reg.register(engine, "knn", trained["good"]), reg.register(engine, "knn", trained["bad"])
    gate = LedgerGate(engine, experts=experts, method="dr", lambda_=0.0)
    reg.promote(engine, "knn", bad, gate=gate)  # nothing active: first to serve
    result = reg.promote(engine, "knn", good, gate=gate)
    assert result.action == "promote", result.reason
    row = result.gate["rows"][0]
    assert row["metric"] == "ledger_value" and row["delta"] > 0.1 and row["rows"] == 3 * len(ev)
    assert row["candidate_ci"][0] < row["candidate"] < row["candidate_ci"][1]
    refused = reg.promote(engine, "knn", bad, gate=gate)
    assert refused.action == "refuse" and "does not beat" in refused.reason
