"""Policy artifacts: round trip for every learned policy, versions, and every way loading refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")
pytest.importorskip("torch", reason="the ml extra is not installed")

from core.errors import PolicyError  # noqa: E402
from core.types import ExpertInfo, RouteRequest  # noqa: E402
from policies import create_policy  # noqa: E402
from policies.artifacts import MANIFEST, WEIGHTS, load_artifact, resolve, save_artifact, sha256_file  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402

LEARNED = {
    "knn": {"k_grid": (3, 9)},
    "mlp": {"epochs": 15},
    "mf": {"epochs": 15},
    "coe": {"cv_folds": 3},
    "coe_cluster": {"cv_folds": 3, "n_clusters": 4},
    "tryage": {"cv_folds": 3, "alphas": (1.0, 10.0)},
    "graphrouter": {"epochs": 20, "patience": 5, "hidden": 16},
}


@pytest.fixture(scope="module")
def data():
    configure_encoders(cache_dir=None)
    return RoutingData.from_frame(make_frame(n_per_task=40, seed=11), name="synthetic")


@pytest.fixture(scope="module")
def train(data):
    return data.subset(data.rows_of("train"))


@pytest.fixture(scope="module")
def prompts(data):
    return data.subset(data.rows_of("test")).prompts[:20]


def fit(name, train):
    configure_encoders(cache_dir=None)
    return create_policy(name, encoder="hashing", random_state=3, **LEARNED[name]).fit(train)


@pytest.fixture(scope="module")
def coe_artifact(train, tmp_path_factory):
    root = tmp_path_factory.mktemp("coe")
    return save_artifact(fit("coe", train), root, data=train, metrics={"note": 1})


def fresh_copy(src, tmp_path):
    dst = tmp_path / "copy" / src.name
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", list(LEARNED))
def test_round_trip_predicts_the_same(name, train, prompts, tmp_path):
    policy = fit(name, train)
    path = save_artifact(policy, tmp_path / name, data=train, metrics={"fit_s": 1.5})
    assert path == tmp_path / name / "v1"
    loaded = load_artifact(tmp_path / name, policy=name)
    assert loaded.path == path and loaded.policy.expert_names == policy.expert_names
    np.testing.assert_allclose(loaded.policy.predict_quality(prompts), policy.predict_quality(prompts), atol=1e-6)
    np.testing.assert_allclose(loaded.policy.predict_query_cost(prompts), policy.predict_query_cost(prompts), rtol=1e-6)
    assert loaded.policy.get_params() == policy.get_params()  # tuples come back as tuples
    d = loaded.policy.decide(RouteRequest(prompt=prompts[0], prompt_tokens=10, max_completion_tokens=10))
    assert d.policy == name and d.policy_version.startswith("v1-")


def test_manifest_content(coe_artifact, train):
    m = json.loads((coe_artifact / MANIFEST).read_text())
    assert m["policy"] == "coe" and m["version"] == "v1" and m["format_version"] == 1
    assert m["class"] == "policies.coe:ClassifierCoEPolicy"
    assert m["hyperparameters"]["cv_folds"] == 3 and m["hyperparameters"]["encoder"] == "hashing"
    assert m["data"]["fingerprint"] == train.fingerprint() and m["data"]["n_train"] == len(train)
    assert m["metrics"] == {"note": 1} and m["created_at"].endswith("+00:00")
    assert m["files"][WEIGHTS]["sha256"] == sha256_file(coe_artifact / WEIGHTS)
    assert m["models"] == ["small", "mid", "large"]
    with np.load(coe_artifact / WEIGHTS, allow_pickle=False) as z:  # numbers only: no pickle anywhere
        assert all(z[k].dtype.kind in "biuf" for k in z.files)


def test_versions_count_up_and_the_root_serves_the_newest(train, tmp_path):
    policy = fit("coe", train)
    first = save_artifact(policy, tmp_path / "coe", data=train)
    second = save_artifact(policy, tmp_path / "coe", data=train)
    assert (first.name, second.name) == ("v1", "v2")
    assert resolve(tmp_path / "coe") == second and resolve(first) == first
    assert load_artifact(tmp_path / "coe").manifest["version"] == "v2"
    flat = save_artifact(policy, tmp_path / "flat", data=train, flat=True)
    assert flat == tmp_path / "flat" and (flat / MANIFEST).exists()
    with pytest.raises(PolicyError, match="not empty"):
        save_artifact(policy, tmp_path / "flat", flat=True)
    assert not [p for p in (tmp_path / "coe").iterdir() if p.name.startswith(".")]  # no temp folder left


def test_missing_artifact(tmp_path):
    with pytest.raises(PolicyError, match=rf"policy artifact {tmp_path / 'nope'}: not found"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="no manifest.json there"):
        load_artifact(tmp_path / "empty")


def test_corrupted_weights_are_refused(coe_artifact, tmp_path):
    art = fresh_copy(coe_artifact, tmp_path)
    raw = bytearray((art / WEIGHTS).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (art / WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(PolicyError, match=rf"policy artifact {art}: weights.npz is corrupted or was changed"):
        load_artifact(art)


def test_missing_weights_are_refused(coe_artifact, tmp_path):
    art = fresh_copy(coe_artifact, tmp_path)
    (art / WEIGHTS).unlink()
    with pytest.raises(PolicyError, match="weights.npz is missing"):
        load_artifact(art)


@pytest.mark.parametrize("edit, words", [
    (lambda m: "{not json", "is not valid JSON"),
    (lambda m: {**m, "format": "something-else"}, "not an expertmux policy artifact"),
    (lambda m: {**m, "format_version": 99}, "format version 99 is not supported"),
    (lambda m: {**m, "policy": "nope"}, "policy 'nope' is unknown"),
    (lambda m: {**m, "policy": "knn"}, "holds policy 'knn', not 'coe'"),
    (lambda m: {**m, "class": "policies.coe:OldCoE"}, "written by policies.coe:OldCoE"),
    (lambda m: {k: v for k, v in m.items() if k != "files"}, "lacks 'files'"),
    (lambda m: {**m, "files": {"../weights.npz": m["files"]["weights.npz"]}}, "lists no weights.npz"),
])
def test_bad_manifests_are_refused(coe_artifact, tmp_path, edit, words):
    art = fresh_copy(coe_artifact, tmp_path)
    m = json.loads((art / MANIFEST).read_text())
    new = edit(m)
    (art / MANIFEST).write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(PolicyError, match=words) as info:
        load_artifact(art, policy="coe" if "holds" in words else None)
    assert str(art) in info.value.message


def test_weights_that_do_not_fit_the_policy(coe_artifact, tmp_path):
    """A hash-valid file whose arrays do not match the policy (e.g. written by another build)."""
    art = fresh_copy(coe_artifact, tmp_path)
    with np.load(art / WEIGHTS, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["state.table"] = arrays["state.table"][:, :2]
    with open(art / WEIGHTS, "wb") as f:
        np.savez(f, **arrays)
    m = json.loads((art / MANIFEST).read_text())
    m["files"][WEIGHTS]["sha256"] = sha256_file(art / WEIGHTS)
    (art / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PolicyError, match="does not fit policy 'coe'.*retrain"):
        load_artifact(art)


def test_pickled_weights_are_never_loaded(coe_artifact, tmp_path):
    art = fresh_copy(coe_artifact, tmp_path)
    with open(art / WEIGHTS, "wb") as f:
        np.savez(f, evil=np.array([object()], dtype=object))
    m = json.loads((art / MANIFEST).read_text())
    m["files"][WEIGHTS]["sha256"] = sha256_file(art / WEIGHTS)
    (art / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(PolicyError, match="cannot read weights.npz"):
        load_artifact(art)


def test_simple_policies_have_no_artifact(tmp_path):
    p = create_policy("cheapest").fit(None, experts=[ExpertInfo("a")])
    with pytest.raises(PolicyError, match="learns nothing"):
        save_artifact(p, tmp_path)


# ---- serving the matrix's models as live experts ---------------------------------------------
LIVE = [ExpertInfo("tiny", input_usd_per_mtok=0.05, output_usd_per_mtok=0.1, params_b=0.1, release_date="2024-11-01",
                   description="a tiny chat model"),
        ExpertInfo("base", input_usd_per_mtok=0.1, output_usd_per_mtok=0.2, params_b=0.3, release_date="2025-08-14",
                   description="a small base model for code")]


def test_expert_map_scores_mapped_models_and_drops_the_rest(train, prompts):
    policy = fit("tryage", train)
    served = policy.for_experts(LIVE, {"small": "tiny", "mid": "base", "large": "base"})
    q, inner = served.predict_quality(prompts), policy.predict_quality(prompts)
    np.testing.assert_allclose(q[:, 0], inner[:, 0])
    np.testing.assert_allclose(q[:, 1], inner[:, 1:].mean(axis=1))  # several models → their mean
    d = served.decide(RouteRequest(prompt=prompts[0], prompt_tokens=10, max_completion_tokens=10))
    assert d.policy == "tryage" and set(d.scores) == {"tiny", "base"}
    only = policy.for_experts(LIVE, {"mid": "base"})
    assert only.expert_names == ["base"]  # "tiny" maps from no model: not a candidate
    # live prices, not the matrix's
    assert only.predict_query_cost(["x" * 40])[0, 0] == pytest.approx((10 * 0.1 + 256 * 0.2) / 1e6)


@pytest.mark.parametrize("mapping, words", [
    ({"nope": "tiny"}, "models the artifact was not trained on: \\['nope'\\]"),
    ({"small": "ghost"}, "experts this deployment does not have: \\['ghost'\\]"),
    ({}, "must map at least one"),
])
def test_bad_expert_maps(train, mapping, words):
    policy = fit("coe", train)
    with pytest.raises(PolicyError, match=words):
        policy.for_experts(LIVE, mapping)


def test_graphrouter_scores_experts_it_never_saw_from_their_descriptors(train, prompts, tmp_path):
    policy = fit("graphrouter", train)
    save_artifact(policy, tmp_path / "g", data=train)
    loaded = load_artifact(tmp_path / "g").policy
    served = loaded.for_experts(LIVE, {"small": "tiny"})  # "base" maps from nothing: a new LLM node
    assert served.expert_names == ["tiny", "base"]
    q = served.predict_quality(prompts)
    assert q.shape == (len(prompts), 2) and np.isfinite(q).all()
    np.testing.assert_allclose(q[:, 0], policy.predict_quality(prompts)[:, 0], atol=1e-6)
    # the compiled query side equals torch-geometric's layers, new LLM nodes included
    X = served.inner.embed(prompts)
    np.testing.assert_allclose(served.inner._predict(X), served.inner._predict_graph(X), atol=1e-5)
    # scoring experts from descriptors alone, no map at all
    alone = loaded.for_experts(LIVE, {})
    assert alone.expert_names == ["tiny", "base"] and np.isfinite(alone.predict_quality(prompts)).all()
