"""The R2R virtual expert end to end: the real local pair (SmolLM2-135M + Gemma-3-270M) behind the
``r2r`` backend, served by the proxy, called with the official openai client, recorded in the ledger.

The router is the one ``expertmux train r2r`` trained this session (``r2r_router`` in conftest),
copied to its default place in each data folder: the serving configs here leave ``r2r.router`` unset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml

from core.settings import PROJECT_ROOT, Settings
from tests.support.servers import free_port, ledger_row, serve_in_thread

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")

R2R = "r2r:smollm2+gemma3"
ALL_LLM = "r2r-all-llm"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def _experts() -> list[dict]:
    pair = {"slm_expert": "smollm2-135m", "llm": "gemma3-270m", "llm_input_usd_per_mtok": 0.10,
            "llm_output_usd_per_mtok": 0.20, "n_threads": 2}
    return [
        {"name": "smollm2-135m", "backend": "llamacpp", "model": "smollm2-135m-instruct", "input_usd_per_mtok": 0.05,
         "output_usd_per_mtok": 0.10, "prior_quality": 0.40, "timeout_s": 120},
        {"name": R2R, "backend": "r2r", "model": "r2r", "input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.16,
         "prior_quality": 0.50, "timeout_s": 120, "r2r": pair},
        # threshold 0: the router hands every token to the LLM
        {"name": ALL_LLM, "backend": "r2r", "model": "r2r", "prior_quality": 0.10, "timeout_s": 120,
         "r2r": {**pair, "threshold": 0.0}},
    ]


@pytest.fixture(scope="module")
def r2r_app(tmp_path_factory, r2r_router):
    from api.app import create_app

    tmp = tmp_path_factory.mktemp("r2r")
    r2r_router.install(tmp / "var")  # where an r2r expert without r2r.router looks
    config = tmp / "expertmux.yaml"
    config.write_text(yaml.safe_dump({"experts": _experts(), "policy": {"active": "prior", "lambda": 0}}))
    settings = Settings(config=config, data_dir=tmp / "var", autostart_experts=True, supervise_interval_s=0)
    app = create_app(settings)
    with serve_in_thread(app, startup_timeout=300) as url:
        yield url, app
    for expert in app.state.service.experts:
        assert expert.backend.pid is None  # the pair's server went down with the proxy


@pytest.fixture(scope="module")
def client(r2r_app):
    return openai.OpenAI(base_url=f"{r2r_app[0]}/v1", api_key="local", max_retries=0, timeout=120)


_row = ledger_row


def test_non_streaming_records_the_token_split_and_cost(r2r_app, client, r2r_router):
    _, app = r2r_app
    raw = client.chat.completions.with_raw_response.create(model=R2R, messages=QUESTION, max_tokens=24)
    resp = raw.parse()
    assert resp.choices[0].message.content.strip()
    row = _row(app, raw.headers["x-expertmux-request-id"])
    d = row.usage_details
    assert row.status == "ok" and row.expert == R2R
    assert d["slm_tokens"] + d["llm_tokens"] == row.completion_tokens == resp.usage.completion_tokens > 0
    assert d["llm_share"] == pytest.approx(d["llm_tokens"] / row.completion_tokens, abs=1e-4)
    assert row.cost_usd == pytest.approx(d["cost_usd"]) and row.cost_usd > 0
    # priced with both models: at least the SLM's prompt and every position at the SLM's prices
    assert d["cost_usd"] >= (row.prompt_tokens * 0.05 + row.completion_tokens * 0.10) / 1e6 - 1e-12
    assert d["router"] == "learned" and d["router_version"] == r2r_router.manifest["version"]
    # each model's own counts and cost: the SLM decodes every position, the LLM writes its share
    assert d["slm_output_tokens"] == row.completion_tokens and d["llm_output_tokens"] == d["llm_tokens"]
    assert d["slm_input_tokens"] == row.prompt_tokens and d["llm_input_tokens"] >= (d["llm_tokens"] > 0)
    assert d["slm_cost_usd"] + d["llm_cost_usd"] == pytest.approx(d["cost_usd"])


def test_streaming_through_the_proxy(r2r_app, client):
    url, app = r2r_app
    raw = client.chat.completions.with_raw_response.create(model=R2R, messages=QUESTION, max_tokens=24, stream=True,
                                                            stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in raw.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text.strip() and usage is not None and usage.completion_tokens > 0
    row = _row(app, raw.headers["x-expertmux-request-id"])
    d = row.usage_details
    assert row.stream and row.status == "ok" and d["slm_tokens"] + d["llm_tokens"] == usage.completion_tokens
    assert 0 < row.ttft_ms <= row.latency_ms
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120,
                      json={"model": R2R, "messages": QUESTION, "max_tokens": 8, "stream": True}) as r:
        sse = r.read().decode()
    assert "usage_details" not in sse and "[DONE]" in sse  # the proxy keeps its extras out of the client's stream


def test_threshold_zero_hands_every_token_to_the_llm(r2r_app, client):
    _, app = r2r_app
    raw = client.chat.completions.with_raw_response.create(model=ALL_LLM, messages=QUESTION, max_tokens=12)
    raw.parse()
    d = _row(app, raw.headers["x-expertmux-request-id"]).usage_details
    assert d["llm_share"] == 1.0 and d["slm_tokens"] == 0 and d["llm_tokens"] > 0


def test_a_policy_chooses_the_virtual_expert(r2r_app, client):
    _, app = r2r_app
    raw = client.chat.completions.with_raw_response.create(model="expertmux/strongest", messages=QUESTION, max_tokens=8)
    raw.parse()
    assert raw.headers["x-expertmux-expert"] == R2R
    raw = client.chat.completions.with_raw_response.create(
        model="expertmux/auto", messages=QUESTION, max_tokens=8, extra_body={"expertmux": {"allowed_experts": [R2R]}})
    raw.parse()
    assert raw.headers["x-expertmux-expert"] == R2R
    assert R2R in {m.id for m in client.models.list().data}


def test_the_trained_router(r2r_router):
    """What `expertmux train r2r` wrote: a small logit-feature router (it serves remote mode too)."""
    from experts.r2r.artifact import WEIGHTS
    from experts.r2r.routers import LearnedRouter

    router = LearnedRouter.load(r2r_router.folder)
    assert router.artifact.path == r2r_router.path and router.artifact.version == r2r_router.manifest["version"]
    assert 0 < router.threshold < 1 and not router.needs_hidden
    assert (r2r_router.path / WEIGHTS).stat().st_size < 64_000
    labels = r2r_router.manifest["data"]["labels"]
    assert labels["prompts"] == 8 and labels["positions"] == labels["agree"] + labels["differ"]
    assert 0 < labels["divergent"] <= labels["judged"] <= labels["differ"]


def test_no_trained_router_is_a_clear_startup_error(tmp_path):
    from core.config import AppConfig
    from core.errors import BackendError
    from experts.backends import make_backend

    cfg = AppConfig.model_validate({"experts": _experts()}).experts[1]
    with pytest.raises(BackendError) as err:
        make_backend(cfg, data_dir=tmp_path / "var").start()
    folder = tmp_path / "var" / "artifacts" / "r2r" / "smollm2-135m-instruct+gemma3-270m"
    assert f"{folder} does not exist" in err.value.message
    assert "expertmux train r2r --slm smollm2-135m-instruct --llm gemma3-270m" in err.value.message
    assert not (tmp_path / "var" / "models").exists()  # refused before any model weights were touched


def test_corrupted_router_is_a_clear_startup_error(tmp_path, r2r_router):
    import shutil

    from core.config import AppConfig
    from core.errors import BackendError
    from experts.backends import make_backend

    broken = tmp_path / "router"
    shutil.copytree(r2r_router.path, broken)
    weights = broken / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    cfg = AppConfig.model_validate({"experts": [{"name": "pair", "backend": "r2r", "model": "r2r",
                                                 "r2r": {"router": str(broken)}}]}).experts[0]
    with pytest.raises(BackendError, match="corrupted"):
        make_backend(cfg, data_dir=tmp_path).start()
    # the server itself refuses it too, before loading any model
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "experts.r2r.server", "--slm", "smollm2-135m-instruct", "--llm", "gemma3-270m",
                           "--router", str(broken)], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert proc.returncode == 2 and "corrupted" in proc.stderr and time.monotonic() - t0 < 30


def test_expertmux_serve_with_the_example_config(tmp_path, r2r_router):
    """`expertmux serve --config config/r2r.example.yaml`: the example starts and answers once the
    pair's router is trained into the data folder."""
    r2r_router.install(tmp_path / "var")
    port = free_port()
    env = {**os.environ, "EXPERTMUX_DATA_DIR": str(tmp_path / "var"), "EXPERTMUX_PORT": str(port),
           "EXPERTMUX_SUPERVISE_INTERVAL_S": "0"}
    exe = PROJECT_ROOT / ".venv" / "bin" / "expertmux"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "cli"]
    proc = subprocess.Popen([*cmd, "serve", "--config", str(PROJECT_ROOT / "config" / "r2r.example.yaml")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="local", max_retries=0, timeout=120)
        resp = client.chat.completions.create(model=R2R, messages=QUESTION, max_tokens=12)
        assert resp.choices[0].message.content.strip() and resp.usage.completion_tokens > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
