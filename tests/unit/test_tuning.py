"""Cost–quality curves of served policies on an evaluation set, and switching the active policy/λ."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.config import PolicyConfig, TuningConfig  # noqa: E402
from core.errors import InvalidRequestError, ModelNotFoundError, PolicyError  # noqa: E402
from core.types import ExpertInfo  # noqa: E402
from policies.registry import create_policy  # noqa: E402
from router.lifecycle.policy_set import PolicySet  # noqa: E402
from router.lifecycle.tuning import TuningService  # noqa: E402
from tests.support.routing_matrix import write_matrix  # noqa: E402

EXPERTS = [ExpertInfo("cheap", 1.0, 2.0, prior_quality=0.3), ExpertInfo("strong", 10.0, 30.0, prior_quality=0.8),
           ExpertInfo("unmapped", 0.01, 0.01, prior_quality=0.99)]


@pytest.fixture(scope="module")
def tuning(tmp_path_factory):
    matrix = write_matrix(tmp_path_factory.mktemp("tuning") / "m", n_per_task=30)
    cfg = TuningConfig(data=str(matrix), expert_map={"small": "cheap", "large": "strong"})
    return TuningService(cfg, EXPERTS)


def test_curve_spans_strong_to_cheap_and_matches_the_matrix(tuning):
    import pandas as pd

    policy = create_policy("prior").fit(None, experts=EXPERTS)
    out = tuning.curve("prior", policy, lambda_=0.0)
    df = pd.read_parquet(tuning._path() / "matrix.parquet")
    test = df[df["split"] == "test"]
    curve = out["curve"]
    assert curve[0]["lambda"] == 0 and curve[0]["share"] == {"strong": 1.0}  # unmapped expert: never a candidate
    assert curve[0]["quality"] == pytest.approx(test["score::large"].mean())
    assert curve[-1]["share"] == {"cheap": 1.0}
    assert curve[-1]["quality"] == pytest.approx(test["score::small"].mean())
    costs = [p["cost_usd"] for p in curve]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1] > 0  # more λ, less cost
    assert curve[0]["cost_per_1k_usd"] == pytest.approx(1000 * costs[0])
    assert {e["expert"] for e in out["experts"]} == {"cheap", "strong"}
    assert out["point"] == curve[0]


def test_point_between_grid_values_and_bad_lambda(tuning):
    policy = create_policy("prior").fit(None, experts=EXPERTS)
    grid = tuning.curve("prior", policy)["lambdas"]
    mid = tuning.point("prior", policy, grid[60])
    assert mid == tuning.curve("prior", policy)["curve"][60]
    with pytest.raises(InvalidRequestError):
        tuning.point("prior", policy, -1.0)
    with pytest.raises(InvalidRequestError):
        tuning.point("prior", policy, float("nan"))


def test_a_new_policy_object_is_predicted_again(tuning):
    first = create_policy("prior").fit(None, experts=EXPERTS)
    tuning.curve("prior", first)
    swapped = create_policy("prior", default_quality=0.5).fit(None, experts=[
        ExpertInfo("cheap", 1.0, 2.0, prior_quality=0.9), EXPERTS[1], EXPERTS[2]])
    assert tuning.curve("prior", swapped)["curve"][0]["share"] == {"cheap": 1.0}  # not the cached strong choice


def test_fixed_lambda_policies_and_missing_evaluation_set(tmp_path):
    strongest = create_policy("strongest").fit(None, experts=EXPERTS)
    assert strongest.fixed_lambda is not None
    missing = TuningService(TuningConfig(data=str(tmp_path / "nope")), EXPERTS)
    assert "does not exist" in missing.unavailable()
    with pytest.raises(PolicyError):
        missing.curve("strongest", strongest)
    assert "no evaluation set" in TuningService(None, EXPERTS).unavailable()
    unmapped = write_matrix(tmp_path / "m", n_per_task=5)
    with pytest.raises(PolicyError, match="expert_map"):
        TuningService(TuningConfig(data=str(unmapped)), EXPERTS).curve("strongest", strongest)


def test_policy_set_tune_switches_active_and_lambda():
    policies = PolicySet(PolicyConfig(active="prior", **{"lambda": 0}), EXPERTS)
    assert policies.tune(active="cheapest", lambda_=12.5) == {"active": "cheapest", "lambda": 12.5}
    assert (policies.active_name, policies.default_lambda) == ("cheapest", 12.5)
    with pytest.raises(ModelNotFoundError):
        policies.tune(active="no-such-policy")
    with pytest.raises(PolicyError):
        policies.tune(lambda_=-1)
    with pytest.raises(PolicyError):
        policies.tune(lambda_=float("inf"))
    assert (policies.active_name, policies.default_lambda) == ("cheapest", 12.5)  # refusals change nothing
    assert np.isclose(policies.tune(lambda_=0.0)["lambda"], 0.0)
