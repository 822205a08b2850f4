"""Shared fixtures: settings in a temp dir, fake upstream experts, the app on a real port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.settings import Settings  # noqa: E402
from tests.support import fake_openai  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def write_config(path: Path, experts: list[dict], policy: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"experts": experts, "policy": policy or {"active": "prior", "lambda": 0}}))
    return path


def make_settings(tmp_path: Path, experts: list[dict], policy: dict | None = None, **overrides) -> Settings:
    cfg = write_config(tmp_path / "expertmux.yaml", experts, policy)
    values = dict(config=cfg, data_dir=tmp_path / "var", autostart_experts=False)
    values.update(overrides)
    return Settings(**values)


def remote_expert(name: str, url: str, **extra) -> dict:
    return {"name": name, "backend": "remote", "model": "fake-model", "endpoint": f"{url}/v1",
            "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0, "timeout_s": 10, **extra}


@pytest.fixture(autouse=True)
def _activation_models_folder():
    """A service built by a test points converted activation models at its tmp data folder (a
    process-wide setting, as in `expertmux serve`); the next test starts from the default again."""
    from policies import model_home

    before = model_home._DATA_DIR[0]
    yield
    model_home._DATA_DIR[0] = before


@pytest.fixture
def upstreams():
    """Two fake OpenAI-compatible experts on real ports: 'cheap' and 'strong'."""
    cheap, strong = fake_openai.Behaviour(answer="cheap answer here"), fake_openai.Behaviour(answer="strong answer here")
    with serve_in_thread(fake_openai.make_app(cheap)) as cheap_url, serve_in_thread(fake_openai.make_app(strong)) as strong_url:
        yield {"cheap": (cheap, cheap_url), "strong": (strong, strong_url)}


@pytest.fixture
def fake_settings(tmp_path, upstreams):
    experts = [
        remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3, params_b=1.0),
        remote_expert("strong", upstreams["strong"][1], prior_quality=0.8, params_b=70.0,
                      input_usd_per_mtok=10.0, output_usd_per_mtok=30.0),
    ]
    return make_settings(tmp_path, experts, {"active": "strongest", "lambda": 0, "options": {"fixed": {"expert": "cheap"}}})


@pytest.fixture
def fake_app_url(fake_settings):
    from api.app import create_app

    app = create_app(fake_settings)
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture(scope="session")
def r2r_router(tmp_path_factory):
    """A real R2R router for the local pair, trained once per session by `expertmux train r2r`
    into a data folder of its own (tests/support/r2r_router.py)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")
    pytest.importorskip("torch", reason="the ml extra is not installed")
    from tests.support.r2r_router import train_router

    prompts = SHARED_DATA / "llmrouter"
    if not (prompts / "matrix.parquet").exists():
        pytest.skip(f"no routing matrix at {prompts} to draw training prompts from")
    return train_router(tmp_path_factory.mktemp("r2r-router") / "var", prompts)
