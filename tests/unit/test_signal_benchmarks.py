"""The statistics behind the signal benchmarks: bootstrap APGR, sweep metrics, pairs, subsamples."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from benchmarks.routing_stats import (  # noqa: E402
    Rows,
    apgr_distribution,
    apgr_point,
    interval,
    parse_sample,
    resample_weights,
    subsample,
    sweep_distribution,
    sweep_priority,
)
from benchmarks.two_expert import CV_SPLIT, anonymous, pick_pair, train_only  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402


def _pair(n=600, seed=0):
    rng = np.random.default_rng(seed)
    strong = (rng.random(n) < 0.7).astype(float)
    weak = (rng.random(n) < 0.4).astype(float)
    return strong, weak


def test_apgr_perfect_advantage_beats_random_with_intervals():
    strong, weak = _pair()
    W = resample_weights(len(strong), 300, seed=1)
    perfect = apgr_distribution(strong - weak, strong, weak, W)
    blind = apgr_distribution(np.zeros(len(strong)), strong, weak, W)
    lo, _ = interval(perfect)
    blo, bhi = interval(blind)
    assert lo > 0.9  # knowing the advantage recovers far more than half the gap
    assert blo < 0.5 < bhi  # no opinion: random routing, an interval around 0.5
    inverted = apgr_point(weak - strong, strong, weak)
    assert inverted < 0.2


def test_sweep_priority_orders_rows_by_strong_calls():
    choices = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 1]])  # 3 λ × 3 rows; strong = column 0
    assert sweep_priority(choices, 0).tolist() == [2.0, 1.0, 0.0]


def test_sweep_distribution_of_the_oracle_closes_the_gap():
    rng = np.random.default_rng(0)
    scores = (rng.random((400, 3)) < [0.3, 0.5, 0.6]).astype(float)
    costs = np.tile([1.0, 2.0, 3.0], (400, 1))
    oracle = np.where(scores.max(axis=1, keepdims=True) == scores, costs, np.inf).argmin(axis=1)
    choices = np.stack([oracle, np.full(400, 2)])  # λ = 0: the oracle; then the best single model
    d = sweep_distribution(choices, Rows(scores, costs, True), resample_weights(400, 100, seed=0))
    assert np.allclose(d["gap_closed"], 1.0)
    assert (d["cost_to_best_quality"] < 1.0).all() and (d["aiq"] > 0).all()


def test_interval_counts_never_reached_as_infinite():
    values = np.r_[np.full(90, 0.3), np.full(10, np.nan)]
    lo, hi = interval(values, nan_as_inf=True)
    assert lo == pytest.approx(0.3) and hi == np.inf
    assert interval(values) == (pytest.approx(0.3), pytest.approx(0.3))


def test_pick_pair_subsample_and_anonymous():
    data = RoutingData.from_frame(make_frame(n_per_task=40, seed=2), {"models": {
        "small": {"params_b": 1, "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1},
        "mid": {"params_b": 8, "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.5},
        "large": {"params_b": 70, "input_usd_per_mtok": 2, "output_usd_per_mtok": 2}}})
    strong, cheap = pick_pair(data)
    train = data.subset(data.rows_of("train"))
    assert strong == data.models[int(np.nanargmax(np.nanmean(train.scores, axis=0)))]
    assert cheap == "small" and strong != cheap
    sub = subsample(data, parse_sample("train=30"))
    again = subsample(data, {"train": 30})
    assert len(sub.rows_of("train")) == 30 and len(sub.rows_of("test")) == len(data.rows_of("test"))
    assert list(sub.qid) == list(again.qid)  # the same rows every time
    anon = anonymous(data.select_models([strong, cheap]))
    assert anon.models == ["expert-a", "expert-b"] and anon.model_info == {"expert-a": {}, "expert-b": {}}
    assert set(anon.task.tolist()) == {"kind-0", "kind-1", "kind-2"}
    assert np.array_equal(anon.scores, data.select_models([strong, cheap]).scores, equal_nan=True)


def test_train_cv_reads_no_test_row_and_the_harness_folds_over_train():
    data = RoutingData.from_frame(make_frame(n_per_task=40, seed=2))
    cv = train_only(data)
    train = data.rows_of("train")
    assert len(cv) == len(train) and set(cv.split.tolist()) == {CV_SPLIT}
    assert list(cv.qid) == [data.qid[i] for i in train]
    plan = cv.evaluation_plan(CV_SPLIT, n_splits=3, seed=0)
    assert plan.cross_validated and len(plan.folds) == 3
    assert sorted(np.concatenate([val for _, val in plan.folds]).tolist()) == list(range(len(cv)))


def test_ceiling_routed_interval_matches_the_point_and_the_oracle_closes_the_gap():
    from benchmarks.signal_ceiling import measure, routed_distribution

    rng = np.random.default_rng(3)
    scores = (rng.random((500, 3)) < [0.4, 0.5, 0.6]).astype(float)
    scores[rng.random((500, 3)) < 0.05] = np.nan
    P = scores + rng.normal(0, 0.8, scores.shape)
    task = np.array(["a", "b"] * 250, dtype=object)
    unit = routed_distribution(np.nan_to_num(P), scores, np.ones((1, 500)))
    point = measure(np.nan_to_num(P), scores, task)
    assert unit["routed"][0] == pytest.approx(point["routed"])
    assert unit["gap_at_0"][0] == pytest.approx(point["gap_at_0"])
    with_ci = measure(np.nan_to_num(P), scores, task, resample_weights(500, 200, seed=0))
    lo, hi = with_ci["gap_at_0_ci"]
    assert lo < point["gap_at_0"] < hi
    perfect = routed_distribution(np.nan_to_num(scores, nan=-1.0), scores, resample_weights(500, 50, seed=1))
    assert np.allclose(perfect["gap_at_0"], 1.0)


def test_unseen_model_metrics_carry_intervals_around_the_point():
    from benchmarks.graphrouter_inductive import _metrics, markdown
    from policies.evaluation.harness import references

    data = RoutingData.from_frame(make_frame(n_per_task=40, seed=4), {"models": {
        "small": {"params_b": 1, "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1},
        "mid": {"params_b": 8, "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.5},
        "large": {"params_b": 70, "input_usd_per_mtok": 2, "output_usd_per_mtok": 2}}})
    ev = data.subset(data.rows_of("test"))
    ev = ev.subset(ev.known.all(axis=1))
    ref = references(ev)
    rng = np.random.default_rng(0)
    choices = np.stack([np.argmax(ev.scores + rng.normal(0, 0.3, ev.scores.shape), axis=1), np.zeros(len(ev), int)])
    res = _metrics(choices, ev, ref, resample_weights(len(ev), 200, seed=0))
    lo, hi = res["ci"]["gap_closed"]
    assert lo <= res["gap_closed"] <= hi and lo < hi
    assert np.asarray(res["choices"]).shape == choices.shape
    res["fit_s"], res["share_to_held_out_at_lambda0"], res["share_to_held_out_all_lambdas"] = 1.0, 0.0, 0.0
    table = markdown({"data": "toy", "split": "test", "n_queries": len(ev), "hold_out": ["mid"], "boot": 200,
                      "variants": {"v": res}})
    assert f"{res['gap_closed']:.3f} [{lo:.3f}, {hi:.3f}]" in table


def test_unseen_paired_differences_vanish_for_identical_choices():
    from benchmarks.unseen_paired import paired

    data = RoutingData.from_frame(make_frame(n_per_task=40, seed=5), {"models": {
        "small": {"params_b": 1, "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1},
        "large": {"params_b": 70, "input_usd_per_mtok": 2, "output_usd_per_mtok": 2}}})
    ev = data.subset(data.rows_of("test"))
    ev = ev.subset(ev.known.all(axis=1))
    best = np.stack([np.argmax(ev.scores, axis=1)] * 2).tolist()
    one = np.stack([np.zeros(len(ev), int)] * 2).tolist()
    variants = {"a": {"gap_closed": 1.0, "choices": best}, "b": {"gap_closed": 1.0, "choices": best},
                "c": {"gap_closed": 0.0, "choices": one}}
    out = paired(variants, ev, ["a"], 100, 0)
    assert out["b"]["vs"]["a"]["ci"] == (0.0, 0.0) and "a" not in out["a"]["vs"]
    assert out["c"]["vs"]["a"]["ci"][1] < 0


def test_probe_curve_table_marks_the_lowest_cv_mse(tmp_path):
    import json

    from benchmarks.probe_curve import read_curve, table

    curve = {"3:mean": {"cv_mse": 0.17, "cv_routed_quality": 0.64, "alpha": 1.0, "fisher": 1.2, "effective_dim": 50.0},
             "3:both": {"cv_mse": 0.16, "cv_routed_quality": 0.65, "alpha": 3.0},
             "12:mean": {"cv_mse": 0.18, "cv_routed_quality": 0.63, "alpha": 1.0, "fisher": 1.1, "effective_dim": 40.0},
             "category_heads": {"cv_mse": 0.15, "cv_routed_quality": 0.66}}
    (tmp_path / "manifest.json").write_text(json.dumps({"hyperparameters": {"probe_model": "m"},
                                                        "state": {"state": {"curve": curve}}}))
    model, read = read_curve(tmp_path)
    assert model == "m" and set(read) == {"3:mean", "3:both", "12:mean"}  # per-layer entries only
    rows = table([(model, read)])[2:]
    assert [r.split(" | ")[1:3] for r in rows] == [["3", "both"], ["3", "mean"], ["12", "mean"]]  # by block
    assert "**0.1600**" in rows[0] and rows[1].count("**") == 0


def test_boosted_heads_inside_each_task_read_a_nonlinear_signal_and_not_noise():
    from benchmarks.signal_ceiling import centred_by_task, measure, per_task_boosted

    def within_task_r2(P, y):
        Pw, yw = centred_by_task(P[:, None], task)[:, 0], centred_by_task(y[:, None], task)[:, 0]
        return 1 - ((Pw - yw) ** 2).mean() / yw.var()

    rng = np.random.default_rng(4)
    n = 600
    task = np.array(["a", "b", "c"] * (n // 3), dtype=object)
    factor = rng.normal(size=n)
    X = rng.normal(size=(n, 8)) * 0.3
    X[:, :4] += factor[:, None]  # the factor leads the first principal component
    base = {"a": 0.2, "b": 0.5, "c": 0.8}
    chance = (rng.random(n) < [base[t] for t in task]).astype(float)  # expert 1: right by its task's rate alone
    # inside each task, expert 0 is right exactly when |factor| is large: no linear head can read it
    scores = np.c_[(np.abs(factor) > 0.7).astype(float), chance]
    folds = [(np.flatnonzero(np.arange(n) % 4 != k), np.flatnonzero(np.arange(n) % 4 == k)) for k in range(4)]
    read = per_task_boosted(X, scores, task, folds, components=8)
    noise = per_task_boosted(rng.normal(size=(n, 8)), scores, task, folds, components=8)
    assert within_task_r2(read[:, 0], scores[:, 0]) > 0.5
    assert within_task_r2(noise[:, 0], scores[:, 0]) < 0.05
    assert measure(read, scores, task)["gap_at_0"] > measure(noise, scores, task)["gap_at_0"]


def test_a_column_constant_within_every_task_has_no_within_task_r2():
    from benchmarks.signal_ceiling import centred_by_task, measure

    rng = np.random.default_rng(5)
    task = np.array(["a", "b", "c"] * 100, dtype=object)
    rates = {"a": 0.2, "b": 0.5, "c": 0.8}
    varied = (rng.random(300) < 0.5).astype(float)
    constant = np.array([rates[t] for t in task])  # centred by task it is rounding noise (~1e-32), not 0
    scores = np.c_[varied, constant]
    P = np.c_[np.full(300, 0.5), constant + rng.normal(0, 1e-17, 300)]
    Pw, yw = centred_by_task(P[:, [0]], task)[:, 0], centred_by_task(varied[:, None], task)[:, 0]
    alone = 1 - ((Pw - yw) ** 2).mean() / yw.var()  # the varied column's own within-task R²
    assert measure(P, scores, task)["r2_within_task"] == pytest.approx(alone)
