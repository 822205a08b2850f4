"""Routing matrices: loading, NaN outcomes, quality-only sets, splits and grouped CV folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.errors import PolicyError
from policies.costs import CostModel
from policies.data import RoutingData
from tests.support.routing_matrix import make_frame, write_matrix


def test_load_folder_with_costs_and_prices(tmp_path):
    data = RoutingData.load(write_matrix(tmp_path / "set"))
    assert data.name == "set" and data.models == ["small", "mid", "large"]
    assert data.has_costs and data.scores.shape == (180, 3) and set(data.splits) == {"train", "test"}
    experts = {e.name: e for e in data.experts()}
    assert experts["large"].input_usd_per_mtok == 2.0 and experts["large"].params_b == 70.0
    sub = data.select_models(["large", "small"])
    assert sub.models == ["large", "small"]
    assert np.array_equal(sub.scores[:, 1], data.scores[:, 0], equal_nan=True)
    with pytest.raises(PolicyError, match="no outcomes for"):
        data.select_models(["nope"])


def test_nan_outcomes_are_not_candidates(tmp_path):
    data = RoutingData.load(write_matrix(tmp_path / "s", nan_fraction=0.3))
    assert (~data.known).sum() > 0
    assert np.array_equal(data.known, ~np.isnan(data.scores))


def test_quality_only_set_costs_one(tmp_path):
    data = RoutingData.load(write_matrix(tmp_path / "q", costs=False))
    assert not data.has_costs and data.costs is None
    assert (data.cost_matrix() == 1).all()
    model = CostModel.fit(data.prompts, data.costs, data.experts())
    assert model.kind == "uniform" and (model.predict(["x", "yy"]) == 1).all()


def test_missing_costs_are_filled_per_model():
    df = make_frame(n_per_task=3)
    df.loc[0, "cost_usd::mid"] = np.nan
    data = RoutingData.from_frame(df)
    cm = data.cost_matrix()
    assert np.isfinite(cm).all()
    assert cm[0, 1] == pytest.approx(np.nanmean(data.costs[:, 1]))


def test_learned_cost_model_recovers_the_price_formula(tmp_path):
    data = RoutingData.load(write_matrix(tmp_path / "s"))
    model = CostModel.fit(data.prompts, data.costs, data.experts())
    assert model.kind == "learned"
    pred = model.predict(data.prompts)
    assert np.allclose(pred, data.costs, rtol=0.05)  # ceil(chars/4) is almost linear in chars


def test_grouped_folds_keep_identical_prompts_together():
    data = RoutingData.from_frame(make_frame(n_per_task=20, splits=("test",), duplicate_prompts=10))
    folds = data.grouped_folds(5, seed=1)
    seen = np.concatenate([te for _, te in folds])
    assert sorted(seen.tolist()) == list(range(len(data)))  # every row evaluated exactly once
    prompts = np.asarray(data.prompts, dtype=object)
    for tr, te in folds:
        assert not set(prompts[tr]) & set(prompts[te])
        assert abs(len(te) - len(data) / 5) <= 3  # balanced


def test_evaluation_plan_with_and_without_train(tmp_path):
    data = RoutingData.load(write_matrix(tmp_path / "s"))
    plan = data.evaluation_plan("test")
    assert not plan.cross_validated and len(plan.folds) == 1
    (tr, te), = plan.folds
    assert set(data.split[tr]) == {"train"} and set(data.split[te]) == {"test"}
    with pytest.raises(PolicyError, match="no rows in split 'ood_test'"):
        data.evaluation_plan("ood_test")
    nosplit = RoutingData.from_frame(make_frame(splits=("test",)))
    cv = nosplit.evaluation_plan("test")
    assert cv.cross_validated and len(cv.folds) == 5 and len(cv.eval_rows) == len(nosplit)
    other = RoutingData.from_frame(make_frame(splits=("dev",)))
    assert other.evaluation_plan("test").split == "all"


def test_from_frame_rejects_a_frame_without_scores():
    with pytest.raises(PolicyError, match="no 'score::"):
        RoutingData.from_frame(pd.DataFrame({"prompt": ["a"]}))
