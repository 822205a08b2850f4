"""Activation features: bfloat16 only where the CPU computes it natively; where their stores live."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from policies.activations import backend_id, native_dtype  # noqa: E402


@pytest.mark.parametrize(("avx512_bf16", "amx", "expected"), [(False, False, "float32"), (True, False, "bfloat16"),
                                                              (False, True, "bfloat16")])
def test_auto_picks_bfloat16_only_with_native_kernels(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_dtype() == expected


def test_the_cache_keeps_features_of_each_dtype_apart():
    assert backend_id("smollm2-135m-instruct", (3, 18), 64, "bfloat16") != backend_id("smollm2-135m-instruct", (3, 18), 64, "float32")


def test_one_call_places_both_feature_stores_in_the_data_folder(tmp_path):
    from policies import embeddings, model_home
    from policies.features import configure_feature_stores

    before = (embeddings._CACHE_DIR[0], model_home._DATA_DIR[0])
    try:
        configure_feature_stores(data_dir=tmp_path)
        assert embeddings._CACHE_DIR[0] == tmp_path / "cache" / "embeddings"
        assert model_home.models_dir() == tmp_path / "models"  # converted and distilled models
        configure_feature_stores(data_dir=tmp_path, cache_dir=tmp_path / "elsewhere")
        assert embeddings._CACHE_DIR[0] == tmp_path / "elsewhere"
    finally:
        embeddings.configure_encoders(cache_dir=before[0])
        model_home.configure_model_home(data_dir=before[1])


def test_the_served_service_places_converted_models_in_its_data_folder(tmp_path):
    from core.settings import PROJECT_ROOT
    from policies import model_home
    from router.runtime import build_service
    from tests.conftest import make_settings, remote_expert

    before = model_home._DATA_DIR[0]
    try:
        model_home.configure_model_home(data_dir=None)
        assert model_home.data_dir() == PROJECT_ROOT / "var"
        settings = make_settings(tmp_path, [remote_expert("a", "http://127.0.0.1:9")])
        service = build_service(settings)
        assert model_home.models_dir() == settings.data_dir / "models"
        service.ledger.engine.dispose()
    finally:
        model_home.configure_model_home(data_dir=before)
