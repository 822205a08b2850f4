"""Signal policies (probe, irt, rank) on a synthetic matrix, with a fake activation model.

The fake LM's "hidden states" carry the prompt's task only at one block (6) and noise at every
other, so a probe that picks its layer by cross-validation must find that block.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")
pytest.importorskip("torch")

from core.errors import PolicyError  # noqa: E402
from core.types import ExpertInfo  # noqa: E402
from policies import activations, create_policy  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import _ENCODERS, configure_encoders, get_encoder  # noqa: E402
from policies.features import effective_dimension, fisher_separability, parse_spec  # noqa: E402
from tests.support.routing_matrix import SKILL, TASKS, make_frame  # noqa: E402

FAKE = "fake-lm"
INFORMATIVE = 6


class FakeBackend:
    """Per prompt and layer: 8 dims, the task one-hot (+ noise) at block 6, noise elsewhere."""

    hidden = 8

    def __init__(self, model, layers, max_tokens=128, threads=1, **_):
        self.layers = tuple(layers)
        self.id = f"fake-{'-'.join(map(str, self.layers))}-{max_tokens}"
        self.dim = len(self.layers) * 2 * self.hidden

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            task = [k for k, words in TASKS.items() if any(w in t.split() for w in words)]
            counts = np.array([sum(t.split().count(w) for w in TASKS[k]) for k in TASKS], dtype=float)
            for li, layer in enumerate(self.layers):  # a block's states do not depend on the other blocks read
                block = np.random.default_rng([zlib.crc32(t.encode()), layer]).normal(size=2 * self.hidden)
                if layer == INFORMATIVE and task:
                    block[:3] += 3.0 * counts / max(counts.sum(), 1.0)
                    block[self.hidden : self.hidden + 3] += 3.0 * counts / max(counts.sum(), 1.0)
                out[i, li * 2 * self.hidden : (li + 1) * 2 * self.hidden] = block
        return out


@pytest.fixture(autouse=True)
def _fake_lm(monkeypatch):
    configure_encoders(cache_dir=None)
    monkeypatch.setattr(activations, "ActivationBackend", FakeBackend)
    for name in [n for n in _ENCODERS if n.startswith("act-")]:
        _ENCODERS.pop(name)
    yield
    for name in [n for n in _ENCODERS if n.startswith("act-")]:
        _ENCODERS.pop(name)


@pytest.fixture(scope="module")
def data():
    return RoutingData.from_frame(make_frame(n_per_task=80, seed=5), name="synthetic")


def split(data):
    return data.subset(data.rows_of("train")), data.subset(data.rows_of("test"))


def routed(policy, ev) -> float:
    choice = policy.decide_many(ev.prompts, 0.0, candidates=ev.known)[0]
    return float(np.nanmean(ev.scores[np.arange(len(ev)), choice]))


def best_single(ev) -> float:
    return float(np.nanmax(np.nanmean(ev.scores, axis=0)))


def roundtrip(policy):
    arrays, meta = policy.artifact_state()
    return type(policy).from_artifact_state(policy.get_params(), arrays, meta)


# ---- features ----------------------------------------------------------------------------------
def test_feature_spec_parses_parts_and_rejects_garbage():
    parts = parse_spec("minilm+smollm2-135m-instruct@12:last")
    assert [p.kind for p in parts] == ["embedding", "activation"]
    assert (parts[1].name, parts[1].layer, parts[1].pooling) == ("smollm2-135m-instruct", 12, "last")
    with pytest.raises(PolicyError):
        parse_spec("model@twelve")


def test_feature_block_layout():
    layers, hidden = (2, 4), 3
    X = np.arange(2 * 2 * 2 * hidden, dtype=float).reshape(2, -1)
    assert activations.feature_block(X, layers, hidden, 4, "mean").tolist() == X[:, 6:9].tolist()
    assert activations.feature_block(X, layers, hidden, 4, "last").tolist() == X[:, 9:12].tolist()
    assert activations.feature_block(X, layers, hidden, 2, "both").shape == (2, 6)
    with pytest.raises(PolicyError):
        activations.feature_block(X, layers, hidden, 3, "mean")


def test_fisher_and_effective_dimension_see_structure():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(float)[:, None]
    informative = rng.normal(size=(400, 10)) + 2.0 * y
    noise = rng.normal(size=(400, 10))
    assert fisher_separability(informative, y) > 5 * fisher_separability(noise, y)
    low_rank = np.outer(rng.normal(size=400), rng.normal(size=10)) + 0.01 * rng.normal(size=(400, 10))
    assert effective_dimension(low_rank) < 2.0 < effective_dimension(noise)


# ---- probe ---------------------------------------------------------------------------------------
def test_probe_picks_the_informative_layer_and_routes_well(data):
    train, ev = split(data)
    p = create_policy("probe", probe_model=FAKE, cv_folds=4).fit(train)
    assert p.layer_ == INFORMATIVE
    assert set(p.curve_) == {f"{la}:{po}" for la in activations.default_layers(FAKE) for po in ("mean", "last", "both")}
    fisher = {k: v["fisher"] for k, v in p.curve_.items() if k.endswith(":mean")}
    assert max(fisher, key=fisher.get) == f"{INFORMATIVE}:mean"
    assert routed(p, ev) > best_single(ev) + 0.1
    q = roundtrip(p)
    assert np.allclose(q.predict_quality(ev.prompts), p.predict_quality(ev.prompts))


def test_a_served_probe_runs_only_the_blocks_up_to_its_layer(data, monkeypatch):
    train, ev = split(data)
    p = create_policy("probe", probe_model=FAKE, cv_folds=4).fit(train)
    calls = []
    real = FakeBackend.encode
    monkeypatch.setattr(FakeBackend, "encode", lambda self, texts: calls.append(self.layers) or real(self, texts))
    p.predict_quality(train.prompts[:5])  # fitted on: every probe layer is cached, nothing runs
    assert calls == []
    served = p.predict_quality(ev.prompts[:5])  # new prompts: the deepest block run is the chosen one
    assert calls == [(INFORMATIVE,)]
    full = activations.activation_encoder(FAKE, activations.default_layers(FAKE), max_tokens=p.max_tokens)
    full.encode(ev.prompts[:5])  # now every probe block of them is cached: read from there, same features
    assert np.allclose(p.predict_quality(ev.prompts[:5]), served)
    assert calls == [(INFORMATIVE,), activations.default_layers(FAKE)]


def test_probe_fixed_layer_and_bad_options(data):
    train, _ = split(data)
    p = create_policy("probe", probe_model=FAKE, layer=2, pooling="mean", alphas=(1.0,)).fit(train)
    assert (p.layer_, p.pooling_) == (2, "mean") and p.curve_ == {}
    with pytest.raises(PolicyError):
        create_policy("probe", probe_model=FAKE, layer=3).fit(train)  # 3 was not probed
    with pytest.raises(PolicyError):
        create_policy("probe", probe_model=FAKE, select_by="luck").fit(train)


# ---- irt -----------------------------------------------------------------------------------------
def test_irt_routes_and_roundtrips(data):
    train, ev = split(data)
    p = create_policy("irt", features="hashing", dim=4, n_components=8).fit(train)
    assert routed(p, ev) > best_single(ev) + 0.1
    hard = p.difficulty(ev.prompts)
    assert hard.shape == (len(ev),) and np.isfinite(hard).all()
    q = roundtrip(p)
    assert np.allclose(q.predict_quality(ev.prompts), p.predict_quality(ev.prompts))


def test_irt_new_expert_from_a_few_answers(data):
    """An expert left out of the fit: its calibrated profile tracks its real skill per task, and
    more answers track it better than none (the prior: the average expert)."""
    train, ev = split(data)
    truth = np.array([[SKILL["mid"][t] for t in TASKS]])
    tasks = list(TASKS)

    def per_task_corr(policy):
        q = policy.predict_quality(ev.prompts)[:, policy.expert_names.index("mid")]
        means = np.array([q[ev.task == t].mean() for t in tasks])
        return float(np.corrcoef(means, truth[0])[0, 1]) if means.std() > 1e-9 else 0.0

    none = create_policy("irt", features="hashing", dim=4, n_components=8, exclude_models=("mid",)).fit(train)
    some = create_policy("irt", features="hashing", dim=4, n_components=8, exclude_models=("mid",),
                         calibration_answers=60).fit(train)
    assert none.calibrated_ == {"mid": 0} and some.calibrated_ == {"mid": 60}
    assert per_task_corr(some) > 0.8 > per_task_corr(none)
    # add_expert: the same from outside, on a fitted policy without that expert
    base = create_policy("irt", features="hashing", dim=4, n_components=8).fit(train.select_models(["small", "large"]))
    rows = np.random.default_rng(0).choice(np.flatnonzero(~np.isnan(train.scores[:, train.models.index("mid")])), 60,
                                           replace=False)
    added = base.add_expert(ExpertInfo(name="mid"), [train.prompts[i] for i in rows],
                            train.scores[rows, train.models.index("mid")])
    assert added.expert_names == ["small", "large", "mid"] and base.expert_names == ["small", "large"]
    assert per_task_corr(added) > 0.8
    with pytest.raises(PolicyError):
        create_policy("irt", features="hashing", exclude_models=("nobody",)).fit(train)


# ---- rank ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["listwise", "pairwise", "pointwise"])
def test_rank_losses_route_above_best_single(loss, data):
    train, ev = split(data)
    p = create_policy("rank", features="hashing", loss=loss).fit(train)
    assert routed(p, ev) > best_single(ev) + 0.1
    assert p.scale_out_ > 0
    q = roundtrip(p)
    assert np.allclose(q.predict_quality(ev.prompts), p.predict_quality(ev.prompts))


def test_rank_rejects_unknown_loss(data):
    train, _ = split(data)
    with pytest.raises(PolicyError):
        create_policy("rank", features="hashing", loss="vibes").fit(train)


def test_feature_spec_concatenates_embedding_and_activations(data):
    from policies.features import compute

    X = compute(f"hashing+{FAKE}@6:mean", data.prompts[:5])
    assert X.shape == (5, get_encoder("hashing").dim + FakeBackend.hidden)


def test_probe_category_conditioning_roundtrips(data):
    train, ev = split(data)
    p = create_policy("probe", probe_model=FAKE, layer=INFORMATIVE, pooling="mean", conditioning="category",
                      encoder="hashing", cv_folds=4).fit(train)
    assert p.categories_ is not None and p.cat_weight_.shape[0] == p.categories_.n == 3
    assert "category_heads" in p.curve_
    assert routed(p, ev) > best_single(ev) + 0.1
    q = roundtrip(p)
    assert np.allclose(q.predict_quality(ev.prompts), p.predict_quality(ev.prompts))
    with pytest.raises(PolicyError):
        create_policy("probe", probe_model=FAKE, conditioning="astrology").fit(train)


def test_probe_category_posterior_from_its_own_features_needs_no_sentence_encoder(data, monkeypatch):
    train, ev = split(data)
    p = create_policy("probe", probe_model=FAKE, layer=INFORMATIVE, pooling="mean", conditioning="category",
                      posterior_from="probe", cv_folds=4).fit(train)
    assert p.categories_.weight.shape[0] == FakeBackend.hidden  # a classifier on the probe's block, not on an embedding
    assert routed(p, ev) > best_single(ev) + 0.1
    monkeypatch.setattr(p, "_embedding", lambda prompts: pytest.fail("a sentence encoder ran"))
    q = roundtrip(p)
    monkeypatch.setattr(q, "_embedding", lambda prompts: pytest.fail("a sentence encoder ran"))
    assert np.allclose(q.predict_quality(ev.prompts), p.predict_quality(ev.prompts))
    # features an expert computed go through the same head and posterior as the probe's own
    assert np.allclose(q.quality_from_features(q._features(ev.prompts)), p.predict_quality(ev.prompts))
    with pytest.raises(PolicyError, match="posterior_from"):
        create_policy("probe", probe_model=FAKE, conditioning="category", posterior_from="tea leaves").fit(train)
