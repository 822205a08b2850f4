"""``expertmux train <policy>``: one sub-command per learned policy, hyperparameters as options."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")
pytest.importorskip("torch", reason="the ml extra is not installed")

from typer.testing import CliRunner  # noqa: E402

from cli import _register, app  # noqa: E402
from policies.artifacts import load_artifact  # noqa: E402
from tests.support.routing_matrix import write_matrix  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _register()
    return write_matrix(tmp_path_factory.mktemp("m") / "synthetic", n_per_task=40)


def run(*args):
    return CliRunner().invoke(app, ["train", *args])


def test_every_learned_policy_has_a_sub_command():
    _register()
    out = run("--help").output
    for name in ("knn", "mlp", "mf", "coe", "coe_cluster", "tryage", "graphrouter", "r2r"):
        assert name in out
    help_knn = run("knn", "--help").output
    assert "--k-grid" in help_knn and "--cv-folds" in help_knn and "--data" in help_knn


def test_train_writes_a_versioned_artifact_with_test_metrics(folder, tmp_path):
    args = ["tryage", "--data", str(folder), "--out", str(tmp_path / "tryage"), "--encoder", "hashing",
            "--alphas", "1,10", "--cv-folds", "3", "--cache-dir", str(tmp_path / "cache")]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "artifact written to" in result.output and "test: gap_closed" in result.output
    manifest = json.loads((tmp_path / "tryage" / "v1" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["alphas"] == [1.0, 10.0] and manifest["hyperparameters"]["cv_folds"] == 3
    assert manifest["data"]["n_train"] < 180 and "test" in manifest["metrics"] and manifest["metrics"]["fit_s"] > 0
    assert load_artifact(tmp_path / "tryage").policy.get_params()["alphas"] == (1.0, 10.0)
    assert run(*args).exit_code == 0 and (tmp_path / "tryage" / "v2" / "manifest.json").exists()


def test_generic_params_and_errors(folder, tmp_path):
    result = run("knn", "--data", str(folder), "--out", str(tmp_path / "knn"), "--encoder", "hashing", "--param", "k=5",
                 "--eval-split", "", "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "knn" / "v1" / "manifest.json").read_text())
    assert m["hyperparameters"]["k"] == 5 and "test" not in m["metrics"]
    bad = run("knn", "--data", str(tmp_path / "nowhere"), "--encoder", "hashing")
    assert bad.exit_code == 1 and "no routing matrix" in bad.output
    bad = run("coe", "--data", str(folder), "--out", str(tmp_path / "coe"), "--encoder", "hashing", "--param", "nope=1")
    assert bad.exit_code == 1 and "bad parameters for policy 'coe'" in bad.output
