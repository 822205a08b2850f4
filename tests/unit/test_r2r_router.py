"""The R2R router: labels on a toy pair, fitting, the artifact on disk (hashes, clear errors),
and the numpy forward pass the server runs matching the torch model it was trained as."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experts.r2r.artifact import (
    MANIFEST,
    WEIGHTS,
    RouterArtifactError,
    load_artifact,
    pair_router_dir,
    save_artifact,
    train_command,
)
from experts.r2r.datasets import PromptItem
from experts.r2r.engine import R2REngine
from experts.r2r.features import N_BUCKETS, N_DENSE, Proposal, dense_features, token_bucket
from experts.r2r.labels import Judge, LabelConfig, label_prompts
from experts.r2r.pipeline import Labels, collect_labels, fit_and_save
from experts.r2r.routers import LearnedRouter, RouterNet
from experts.r2r.training import TrainConfig, threshold_for_recall
from tests.support.toy_lm import ToyLM, words

SLM_SAYS = b" the cat sat on the mat"
LLM_SAYS = b" the cat sat on a mat"
MSGS = [{"role": "user", "content": "where is the cat?"}]


def toy_engine() -> R2REngine:
    vocab = words(SLM_SAYS, LLM_SAYS)
    slm = ToyLM(vocab, [SLM_SAYS, LLM_SAYS], name="slm")
    llm = ToyLM(vocab, [LLM_SAYS], name="llm")
    return R2REngine(slm, llm, slm_format="plain", llm_format="plain")


def test_labels_mark_the_divergent_token_only():
    engine = toy_engine()
    rows, stats = label_prompts(engine, [MSGS], cfg=LabelConfig(gen_tokens=16, judge_tokens=4, points_per_prompt=5,
                                                                judge="lexical", similarity=0.6))
    # the SLM agrees with the LLM's reference everywhere but at " a" (it would write " the"),
    # and agrees with the LLM's end of text
    assert stats.positions == 7 and stats.agree == 6 and stats.differ == 1 and stats.judged == 1
    assert rows.kind.count("divergent") == 1 and stats.divergent == 1
    i = rows.kind.index("divergent")
    assert rows.label[i] == 1.0 and sum(rows.label) == 1.0
    assert rows.bucket[i] == token_bucket(b" the")  # the row holds the SLM's proposal at that point
    arrays = rows.arrays()
    assert arrays["dense"].shape == (7, N_DENSE) and "hidden" not in arrays


def test_judge_answer_then_meaning():
    judge = Judge("lexical", similarity=0.6)
    cases = [("Q. ", "The answer is B.", "The answer is C."),       # answers differ
             ("Q. ", "The answer is B.", "I think the answer is B"),  # same answer
             ("", "the cat sat on the mat", "the cat sat on a mat"),  # no answer: similar words
             ("", "the cat sat on the mat", "dogs bark loudly")]      # no answer: different meaning
    assert judge.judge(cases) == [(True, "answer"), (False, "answer"), (False, "meaning"), (True, "meaning")]


def _fake_labels(n: int = 400, hidden: int = 0, seed: int = 0) -> Labels:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, N_DENSE)).astype(np.float32)
    dense[:, 0] = -np.abs(dense[:, 0])  # a log-probability
    label = (dense[:, 0] < -1.0).astype(np.float32)  # low SLM confidence ↔ divergent
    arrays = {"dense": dense, "bucket": rng.integers(0, N_BUCKETS, n), "label": label,
              "weight": np.ones(n, np.float32), "group": np.arange(n) // 10, "is_val": np.arange(n) % 5 == 0}
    if hidden:
        arrays["hidden"] = rng.normal(size=(n, hidden)).astype(np.float32)
    meta = {"models": {"slm": "toy-slm", "llm": "toy-llm"}, "labels": {}, "stats": {"prompts": n // 10},
            "data": {"fingerprint": "f" * 64, "sources": ["toy"], "split": "train", "prompts": {"train": 32, "validation": 8}},
            "val_share": 0.2}
    return Labels(arrays=arrays, meta=meta)


@pytest.mark.parametrize("hidden", [0, 6])
def test_fit_writes_a_verified_artifact_and_numpy_matches_torch(tmp_path, hidden):
    labels = _fake_labels(hidden=hidden)
    result = fit_and_save(labels, out=tmp_path, train_cfg=TrainConfig(epochs=200, use_hidden=bool(hidden), hidden_units=8))
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert result.path.parent == tmp_path and manifest["version"] == result.path.name
    for key in ("policy", "version", "hyperparameters", "data", "metrics", "created_at", "files"):
        assert key in manifest
    assert manifest["data"]["fingerprint"] == "f" * 64 and len(manifest["files"][WEIGHTS]["sha256"]) == 64
    assert manifest["features"]["set"] == ("logits+hidden" if hidden else "logits")
    assert manifest["metrics"]["val_auc"] > 0.75  # the signal is in the features (noise dims make it overfit a little)
    router = LearnedRouter.load(tmp_path)  # a folder of versions: the newest is taken
    assert router.needs_hidden == bool(hidden) and router.threshold == manifest["default_threshold"]
    # the numpy forward pass equals the torch network's (re-built from the same weights)
    import torch

    w = router.net.w
    val = labels.side(True)
    parts = [(val["dense"] - w["dense_mean"]) / w["dense_std"], w["bucket_emb"][val["bucket"]]]
    if hidden:
        parts.append((val["hidden"] - w["hidden_mean"]) / w["hidden_std"])
    x = torch.from_numpy(np.concatenate(parts, 1))
    h = torch.relu(x @ torch.from_numpy(w["w1"]).T + torch.from_numpy(w["b1"]))
    h = torch.relu(h @ torch.from_numpy(w["w2"]).T + torch.from_numpy(w["b2"]))
    expected = torch.sigmoid(h @ torch.from_numpy(w["w3"]).T + torch.from_numpy(w["b3"])).squeeze(-1).numpy()
    got = router.net.score(val["dense"], val["bucket"], val.get("hidden"))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_learned_router_scores_a_proposal(tmp_path):
    fit_and_save(_fake_labels(), out=tmp_path, versioned=False, train_cfg=TrainConfig(epochs=40, hidden_units=8))
    router = LearnedRouter.load(tmp_path, threshold=0.5)
    sure = Proposal(token=1, piece=b" the", is_eog=False, position=3, top_logprobs=np.array([-0.01] + [-9.0] * 9, np.float32))
    unsure = Proposal(token=1, piece=b" the", is_eog=False, position=3, top_logprobs=np.array([-2.5] + [-2.6] * 9, np.float32))
    assert router.score(unsure) > router.score(sure)
    assert router.describe()["router_version"] == router.artifact.version


def _artifact(tmp_path):
    fit_and_save(_fake_labels(), out=tmp_path, versioned=False, train_cfg=TrainConfig(epochs=5, hidden_units=4))
    return tmp_path


def test_corrupted_weights_give_a_clear_error(tmp_path):
    path = _artifact(tmp_path)
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(RouterArtifactError, match="corrupted"):
        load_artifact(path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / WEIGHTS).unlink(), "is missing"),
    (lambda p: (p / MANIFEST).unlink(), "no manifest.json"),
    (lambda p: (p / MANIFEST).write_text("{not json"), "unreadable manifest.json"),
    (lambda p: (p / MANIFEST).write_text(json.dumps({"policy": "knn"})), "expected 'r2r-router'"),
])
def test_broken_artifacts_name_the_problem(tmp_path, damage, message):
    path = _artifact(tmp_path)
    damage(path)
    with pytest.raises(RouterArtifactError, match=message):
        load_artifact(path)


def test_missing_artifact_and_foreign_weights(tmp_path):
    with pytest.raises(RouterArtifactError, match="not found"):
        load_artifact(tmp_path / "nope")
    save_artifact(tmp_path / "odd", {"w1": np.zeros((2, 2))}, {"version": "x"})
    with pytest.raises(RouterArtifactError, match="lack"):
        RouterNet(load_artifact(tmp_path / "odd").weights)


def test_a_pairs_router_lives_in_the_data_folder(tmp_path):
    folder = pair_router_dir(tmp_path / "var", "smollm2-135m-instruct", "/models/Gemma-3-270M.Q4_K_M.gguf")
    assert folder == tmp_path / "var" / "artifacts" / "r2r" / "smollm2-135m-instruct+Gemma-3-270M.Q4_K_M"
    assert pair_router_dir("var", "org/SmolLM2-1.7B-Instruct", "gemma3-270m").name == "SmolLM2-1.7B-Instruct+gemma3-270m"
    with pytest.raises(RouterArtifactError, match="not found"):
        load_artifact(folder)
    # `expertmux train r2r` writes one version per run into it; readers take the newest
    for version in ("20260101T000000Z-aaaaaaaa", "20260301T000000Z-cccccccc", "20260201T000000Z-bbbbbbbb"):
        save_artifact(folder / version, {"w1": np.zeros((2, 2))}, {"version": version})
    assert load_artifact(folder).version == "20260301T000000Z-cccccccc"
    cmd = train_command("smollm2-135m-instruct", "my models/g.gguf", out=folder)
    assert cmd.startswith("expertmux train r2r --slm smollm2-135m-instruct --llm 'my models/g.gguf' --prompts ")
    assert cmd.endswith(f"--out {folder}")


def test_threshold_for_recall():
    y = np.array([1, 1, 1, 1, 0, 0], np.float32)
    s = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.5], np.float32)
    w = np.ones(6, np.float32)
    assert threshold_for_recall(y, s, w, 0.75) == pytest.approx(0.7)
    assert threshold_for_recall(y, s, w, 1.0) == pytest.approx(0.2)


def test_labels_round_trip_and_pipeline_on_the_toy_pair(tmp_path):
    engine = toy_engine()
    items = [PromptItem(qid=str(i), source="toy", task="t", prompt="where is the cat?") for i in range(4)]
    labels = collect_labels(engine, items, models={"slm": "toy"}, val_share=0.25,
                            label_cfg=LabelConfig(gen_tokens=16, judge_tokens=4, judge="lexical", similarity=0.6))
    assert labels.arrays["is_val"].sum() == 7 and labels.meta["data"]["prompts"] == {"train": 3, "validation": 1}
    again = Labels.load(labels.save(tmp_path / "labels"))
    assert set(again.arrays) == set(labels.arrays) and again.meta == json.loads(json.dumps(labels.meta))
    np.testing.assert_array_equal(again.arrays["label"], labels.arrays["label"])


def test_dense_features_shape_and_flags():
    p = Proposal(token=3, piece=b" 42", is_eog=False, position=0, top_logprobs=np.array([-0.1, -3.0], np.float32))
    f = dense_features(p)
    assert f.shape == (N_DENSE,) and np.isfinite(f).all()
    assert f[2] == -30.0  # missing top-k entries sit at the floor


REF = b" The answer is 4."


@pytest.mark.parametrize("slm_targets, llm_branches, similarity, kind, reason", [
    # the SLM says " result" where the LLM said " answer"; continued, the branch states the same answer
    ([b" The result is 4.", REF], [b" The result is 4."], 0.8, "neutral", "answer"),
    # the SLM says " 5." where the LLM said " 4.": a different final answer
    ([b" The answer is 5.", REF], [b" The answer is 5."], 0.8, "divergent", "answer"),
    # no answer stated: " the" for " a" in a sentence the LLM then finishes alike (similar enough words) …
    ([b" the cat sat on the mat", b" the cat sat on a mat"], [b" the cat sat on the mat"], 0.4, "neutral", "meaning"),
    # … or leaves (the branch ends at once: its meaning differs)
    ([b" the cat sat on the mat", b" the cat sat on a mat"], [], 0.4, "divergent", "meaning"),
])
def test_labels_on_toy_continuations(slm_targets, llm_branches, similarity, kind, reason):
    ref = REF if b"4" in slm_targets[1] else b" the cat sat on a mat"
    vocab = words(ref, *slm_targets, *llm_branches)
    slm = ToyLM(vocab, slm_targets, name="slm")
    llm = ToyLM(vocab, [ref, *llm_branches], name="llm")
    engine = R2REngine(slm, llm, slm_format="plain", llm_format="plain")
    rows, stats = label_prompts(engine, [MSGS], cfg=LabelConfig(gen_tokens=16, judge_tokens=4, judge="lexical",
                                                                similarity=similarity))
    assert stats.differ == stats.judged == 1 and stats.agree == stats.positions - 1
    assert stats.by_reason == {f"{reason}:{kind}": 1}
    assert sorted(set(rows.kind)) == sorted({"agree", kind})
    judged = rows.kind.index(kind)
    assert rows.label[judged] == float(kind == "divergent") and sum(rows.label) == float(kind == "divergent")
    # the labelled row carries the SLM's own proposal at the point where the paths part
    proposed = next(t for t in (b" result", b" 5.", b" the") if t in slm_targets[0])
    assert rows.bucket[judged] == token_bucket(proposed)
    # the reference and every branch are written by the LLM, whose cache is rolled back, not refilled
    assert llm.evaluated < 3 * len(llm.tokenize(b"Question: where is the cat?\nAnswer:" + ref))


def _edit_manifest(path, **changes):
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    (lambda p: _edit_manifest(p, format_version=99), "format_version 99 is not supported"),
    (lambda p: _edit_manifest(p, files={}), "lists no weights.safetensors"),
    (lambda p: _edit_manifest(p, files={WEIGHTS: {"sha256": "0" * 64}}), "corrupted"),
    (lambda p: (p / WEIGHTS).write_bytes(b""), "corrupted"),
])
def test_manifest_and_weights_must_agree(tmp_path, damage, message):
    path = _artifact(tmp_path)
    damage(path)
    with pytest.raises(RouterArtifactError, match=message):
        LearnedRouter.load(path)


def test_weights_of_another_feature_set_are_refused(tmp_path):
    weights = dict(load_artifact(_artifact(tmp_path)).weights)
    with pytest.raises(RouterArtifactError, match="do not match this feature set"):
        RouterNet({**weights, "dense_mean": np.zeros(N_DENSE + 1, np.float32)})
    with pytest.raises(RouterArtifactError, match="first layer takes"):
        RouterNet({**weights, "w1": np.zeros((4, 3), np.float32)})
    hidden_net = RouterNet({**weights, "hidden_mean": np.zeros(2, np.float32), "hidden_std": np.ones(2, np.float32),
                            "w1": np.zeros((4, weights["w1"].shape[1] + 2), np.float32)})
    with pytest.raises(RouterArtifactError, match="needs the SLM's hidden states"):
        hidden_net.score(np.zeros(N_DENSE, np.float32), np.asarray(1))


def test_train_r2r_cli_fits_saved_labels_and_names_its_errors(tmp_path):
    from typer.testing import CliRunner

    from cli import _register, app

    _register()
    from experts.r2r.labels import LabelStats

    fake = _fake_labels()
    fake.meta["stats"] = LabelStats(prompts=40, positions=400, agree=300, differ=100, judged=100, divergent=20).as_dict()
    labels = fake.save(tmp_path / "labels")
    runner = CliRunner()
    out = tmp_path / "router"
    result = runner.invoke(app, ["train", "r2r", "--slm", "toy-slm", "--llm", "toy-llm", "--labels", str(labels),
                                 "--out", str(out), "--flat", "--epochs", "30", "--hidden-units", "8"])
    assert result.exit_code == 0, result.output
    assert "artifact written to" in result.output and "validation ROC-AUC" in result.output
    router = LearnedRouter.load(out)
    assert router.artifact.manifest["hyperparameters"]["train"]["epochs"] == 30 and not router.needs_hidden
    for args, message in ((["--features", "both"], "--features must be"), ([], "give --prompts"),
                          (["--judge", "vibes", "--labels", str(labels)], "--judge must be"),
                          (["--labels", str(labels), "--features", "hidden", "--out", str(tmp_path / "h")],
                           "needs labels collected with the SLM's hidden states")):
        bad = runner.invoke(app, ["train", "r2r", "--slm", "a", "--llm", "b", *args])
        assert bad.exit_code != 0 and message in bad.output, bad.output
