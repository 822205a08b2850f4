"""The evaluation harness and `expertmux eval` on synthetic matrices (hashing encoder, no model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from policies.base import Policy  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from policies.evaluation.harness import EvalConfig, evaluate, lambda_grid, references  # noqa: E402
from policies.registry import _POLICIES, register_policy  # noqa: E402
from tests.support.routing_matrix import make_frame, write_matrix  # noqa: E402

FAST = ["random", "cheapest", "best_single", "oracle", "knn"]


@pytest.fixture(autouse=True)
def _no_disk_cache():
    configure_encoders(cache_dir=None)


def cfg(**kw) -> EvalConfig:
    return EvalConfig(encoder="hashing", n_lambdas=120, **kw)


def run(df, policies=FAST, **kw):
    return evaluate(RoutingData.from_frame(df, name="synthetic"), policies, cfg(**kw))


def check_sane(report):
    ref = report["reference"]
    pol = report["policies"]
    for name, r in pol.items():
        assert r["quality_max"] <= ref["oracle"]["quality"] + 1e-6, name
        assert r["aiq"] <= pol["oracle"]["aiq"] + 1e-6, name
    assert pol["oracle"]["gap_closed"] == pytest.approx(1.0)
    assert pol["best_single"]["gap_closed"] == pytest.approx(0.0, abs=0.05)
    assert pol["random"]["quality_at_best_cost"] == pytest.approx(ref["random"]["quality"], abs=0.15)  # a sample of ~50


def test_reference_points_by_hand():
    df = make_frame(n_per_task=2, costs=True, splits=("test",))
    scores = np.array([[1, 0, 1], [0, 1, 1], [np.nan, 1, 0], [0, 0, 0], [1, 1, np.nan], [0, 0, 1]], dtype=float)
    for j, m in enumerate(["small", "mid", "large"]):
        df[f"score::{m}"] = scores[:, j]
        df[f"cost_usd::{m}"] = [1.0, 2.0, 4.0][j]
    ref = references(RoutingData.from_frame(df))
    assert ref["best_single"] == {"model": "large", "quality": pytest.approx(0.6), "cost": 4.0}
    assert ref["cheapest"]["model"] == "small" and ref["cheapest"]["quality"] == pytest.approx(0.4)
    # oracle: rows → small(1), mid(2), mid(2), small(1, all zero), small(1), large(4)
    assert ref["oracle"]["quality"] == pytest.approx(5 / 6) and ref["oracle"]["cost"] == pytest.approx(11 / 6)
    rand = np.mean([2 / 3, 2 / 3, 1 / 2, 0, 1, 1 / 3])
    assert ref["random"]["quality"] == pytest.approx(rand)
    assert ref["c_max"] == 4.0


def test_cost_set_report_and_schema():
    report = run(make_frame(n_per_task=50, seed=1))
    assert {"dataset", "split", "n_queries", "reference", "policies"} <= set(report)
    assert set(report["reference"]) >= {"best_single", "oracle", "random", "cheapest"}
    assert report["cost_mode"] == "usd" and not report["cross_validated"] and "two_model" not in report
    for r in report["policies"].values():
        assert {"aiq", "quality_at_best_cost", "cost_to_best_quality", "gap_closed", "fit_s", "decision_ms_per_query"} <= set(r)
        assert len(r["curve"]["lambda"]) == 121 and set(r["per_task"]) == {"math", "code", "trivia"}
    check_sane(report)
    knn, rnd = report["policies"]["knn"], report["policies"]["random"]
    assert knn["aiq"] > rnd["aiq"] and knn["beats_best_single"]
    json.dumps(report)  # JSON-ready


def test_lambda_grid_spans_cheapest_to_best():
    data = RoutingData.from_frame(make_frame(n_per_task=30))
    grid = lambda_grid(data.subset(data.rows_of("train")), cfg())
    assert grid[0] == 0 and len(grid) == 121 and np.all(np.diff(grid) > 0)
    report = evaluate(data, ["best_single"], cfg())
    curve = report["policies"]["best_single"]["curve"]
    ref = report["reference"]
    best_train = data.models[int(np.nanargmax(np.nanmean(data.scores[data.rows_of("train")], axis=0)))]
    assert curve["cost"][0] == pytest.approx(ref["models"][best_train]["cost"], rel=1e-4)  # λ = 0: the best model
    assert curve["cost"][-1] == pytest.approx(ref["cheapest"]["cost"], rel=1e-4)  # the largest λ: cheapest everywhere


def test_nan_outcomes():
    report = run(make_frame(n_per_task=50, nan_fraction=0.25, seed=2))
    check_sane(report)
    assert all(np.isfinite(q) for r in report["policies"].values() for q in r["curve"]["quality"])


def test_quality_only_set_reports_accuracy():
    report = run(make_frame(n_per_task=50, costs=False, seed=4))
    assert report["cost_mode"] == "uniform" and report["reference"]["c_max"] == 1.0
    for name, r in report["policies"].items():
        assert r["aiq"] == pytest.approx(r["quality_at_best_cost"]), name  # aiq = accuracy here
        assert set(r["curve"]["cost"]) == {1.0}
    check_sane(report)


def test_two_model_set_has_routellm_figures():
    report = run(make_frame(n_per_task=60, models=("small", "large"), seed=5))
    tm = report["two_model"]
    assert tm["strong"] == "large" and tm["weak"] == "small"
    pol = report["policies"]
    for r in pol.values():
        assert {"apgr", "cpt50", "cpt80"} <= set(r)
    assert pol["oracle"]["apgr"] > pol["knn"]["apgr"] > pol["random"]["apgr"] - 0.05
    assert 0.3 < pol["random"]["apgr"] < 0.7  # no opinion ≈ the diagonal
    assert pol["oracle"]["cpt80"] <= pol["knn"]["cpt80"]


def test_no_train_split_uses_grouped_cross_validation():
    df = make_frame(n_per_task=40, splits=("test",), duplicate_prompts=6, seed=6)
    report = run(df)
    assert report["cross_validated"] and report["n_folds"] == 5 and report["n_queries"] == len(df)
    check_sane(report)


def test_other_evaluation_split():
    df = make_frame(n_per_task=60, splits=("train", "test", "ood_test"), seed=8)
    report = run(df, ["best_single", "oracle", "knn"], split="ood_test")
    assert report["split"] == "ood_test" and report["n_queries"] == int((df["split"] == "ood_test").sum())
    assert set(report["policies"]["knn"]["per_task"]) == {"trivia"}


class SpyPolicy(Policy):
    """Records what the harness shows it."""

    name = "spy"
    seen_train: list = []
    seen_prompts: list = []

    def __init__(self) -> None:
        pass

    def _fit(self, train) -> None:
        SpyPolicy.seen_train.append(train)

    def predict_quality(self, prompts):
        SpyPolicy.seen_prompts.append(prompts)
        return np.zeros((len(prompts), len(self.experts_)))


def test_policies_never_see_evaluation_labels(monkeypatch):
    monkeypatch.setitem(_POLICIES, "spy", "tests.unit.test_eval_harness:SpyPolicy")
    df = make_frame(n_per_task=40, seed=7)
    evaluate(RoutingData.from_frame(df), ["spy"], cfg())
    (train,) = SpyPolicy.seen_train
    assert set(train.split) == {"train"}  # fitted on train rows only
    assert all(isinstance(p, str) for batch in SpyPolicy.seen_prompts for p in batch)  # only prompt text

    # blanking / shuffling what the policy must not read changes no decision
    test = df["split"] == "test"
    other = df.copy()
    other.loc[test, "task"] = np.random.default_rng(0).permutation(other.loc[test, "task"].to_numpy())
    other.loc[test, "dataset"] = "hidden"
    base = evaluate(RoutingData.from_frame(df), ["knn", "best_single"], cfg())
    moved = evaluate(RoutingData.from_frame(other), ["knn", "best_single"], cfg())
    for name in ("knn", "best_single"):
        assert base["policies"][name]["curve"] == moved["policies"][name]["curve"]


def test_register_policy_adds_a_lazy_entry(monkeypatch):
    monkeypatch.setitem(_POLICIES, "x", "nowhere:Nothing")
    register_policy("spy2", "tests.unit.test_eval_harness:SpyPolicy")
    assert _POLICIES.pop("spy2") == "tests.unit.test_eval_harness:SpyPolicy"


def test_cli_eval_writes_json_plot_and_markdown(tmp_path):
    from typer.testing import CliRunner

    from cli import _register, app

    _register()
    folder = write_matrix(tmp_path / "synthetic", n_per_task=40)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "eval", "--data", str(folder), "--policies", "random,cheapest,best_single,oracle,knn",
        "--encoder", "hashing", "--json", str(out / "r.json"), "--plot", str(out / "r.png"),
        "--markdown", str(out / "r.md"), "--cache-dir", str(tmp_path / "cache"), "--param", "knn.k=5",
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "r.json").read_text())
    assert report["dataset"] == "synthetic" and report["split"] == "test"
    assert report["policies"]["knn"]["learned"]["k"] == 5
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| knn |" in (out / "r.md").read_text()
    assert "quality@best-cost" in result.output and "oracle" in result.output
    assert list((tmp_path / "cache" / "hashing-1024").glob("*.npz"))  # embeddings cached on disk

    bad = CliRunner().invoke(app, ["eval", "--data", str(folder), "--policies", "nope", "--encoder", "hashing"])
    assert bad.exit_code == 1 and "unknown policy 'nope'" in bad.output


def test_cli_eval_quality_only_two_model_plot(tmp_path):
    from typer.testing import CliRunner

    from cli import _register, app

    _register()
    folder = write_matrix(tmp_path / "pair", models=("small", "large"), costs=False, n_per_task=30)
    result = CliRunner().invoke(app, ["eval", "--data", str(folder), "--policies", "random,best_single,oracle,knn",
                                      "--encoder", "hashing", "--plot", str(tmp_path / "p.png"),
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "apgr" in result.output and (tmp_path / "p.png").exists()
