"""R2R serving pieces without models: remote mode over scripted /v1/completions servers, usage
and cost, stop strings, the server's wire format, the r2r backend's command and config."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from experts.r2r.engine import LLM, SLM, GenerationStats
from experts.r2r.features import Proposal
from experts.r2r.remote import RemotePair
from experts.r2r.routers import NeverRouter, Router
from experts.r2r.server import create_app
from experts.r2r.service import R2RService, StopScanner
from experts.r2r.track import TrackStats
from experts.r2r.usage import Prices, usage
from router.config import AppConfig
from router.errors import BackendError, ConfigError
from tests.support.toy_lm import ToyLM, words

MSGS = [{"role": "user", "content": "where is the cat?"}]


class AtPositions(Router):
    name = "scripted"

    def __init__(self, positions):
        self.positions = set(positions)

    def hand_over(self, p: Proposal) -> bool:
        return p.position in self.positions


def scripted_servers(slm_text: list[str], llm_text: list[str]):
    """Two fake completion servers: each continues its own token list from the prompt's length."""
    calls = {"slm": [], "llm": []}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        side = "slm" if request.url.host == "slm" else "llm"
        calls[side].append(body)
        script = slm_text if side == "slm" else llm_text
        done = body["prompt"].split("Answer:", 1)[1]
        # continue the script from where the text has got to (by characters)
        pos, out = 0, []
        for tok in script:
            if pos >= len(done):
                out.append(tok)
            pos += len(tok)
        out = out[: body["max_tokens"]]
        choice = {"index": 0, "text": "".join(out), "finish_reason": "length" if out else "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"tokens": out, "token_logprobs": [-0.1] * len(out),
                                  "top_logprobs": [{t: -0.1, "x": -3.0} for t in out]}
        return httpx.Response(200, json={"choices": [choice], "usage": {"prompt_tokens": 10 + len(done), "completion_tokens": len(out)}})

    return httpx.MockTransport(handler), calls


def run(pair, router, max_tokens=20):
    gen = pair.generate(MSGS, router=router, max_tokens=max_tokens)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def test_remote_mode_same_algorithm_over_completions():
    slm = [" the", " cat", " sat", " on", " the", " mat"]
    llm = [" the", " cat", " sat", " on", " a", " mat"]
    transport, calls = scripted_servers(slm, llm)
    pair = RemotePair(slm_url="http://slm/v1", slm_model="s", llm_url="http://llm/v1", llm_model="l",
                      slm_format="plain", llm_format="plain", chunk=3, transport=transport)
    steps, stats = run(pair, AtPositions({4}))
    assert "".join(s.piece.decode() for s in steps) == " the cat sat on a mat"
    assert [s.writer for s in steps] == [SLM] * 4 + [LLM] + [SLM]
    assert stats.finish_reason == "stop" and (stats.slm_tokens, stats.llm_tokens) == (5, 1)
    # SLM chunks: [0-2], [3-5] (two dropped after the hand-over at 4), then [5], then the end
    assert stats.extra == {"slm_calls": 4, "llm_calls": 1, "slm_discarded_tokens": 2}
    assert all(c["logprobs"] == 10 and c["temperature"] == 0.0 for c in calls["slm"])
    assert calls["llm"][0]["max_tokens"] == 1 and calls["llm"][0]["prompt"].endswith("Answer: the cat sat on")


def test_remote_mode_refuses_a_hidden_state_router():
    transport, _ = scripted_servers([" a"], [" a"])
    pair = RemotePair(slm_url="http://slm/v1", slm_model="s", llm_url="http://llm/v1", llm_model="l",
                      slm_format="plain", llm_format="plain", transport=transport)

    class NeedsHidden(NeverRouter):
        needs_hidden = True

    with pytest.raises(ConfigError, match="hidden"):
        run(pair, NeedsHidden())


def test_usage_prices_both_models():
    stats = GenerationStats(slm_tokens=8, llm_tokens=2, slm=TrackStats(prompt_tokens=20),
                            llm=TrackStats(prompt_tokens=30, generated_evaluated=7))
    out = usage(stats, Prices(slm_input=1, slm_output=2, llm_input=10, llm_output=20))
    assert (out["prompt_tokens"], out["completion_tokens"], out["total_tokens"]) == (20, 10, 30)
    assert (out["slm_tokens"], out["llm_tokens"], out["llm_share"]) == (8, 2, 0.2)
    assert out["llm_input_tokens"] == 30 + 5  # its prompt + the SLM tokens it caught up on
    assert out["cost_usd"] == pytest.approx((20 * 1 + 10 * 2 + 35 * 10 + 2 * 20) / 1e6)


def test_stop_scanner_holds_back_possible_stops():
    s = StopScanner(["END"])
    assert s.feed("hello E") == "hello " and s.feed("N") == "" and s.feed("X more") == "ENX more"
    assert s.feed(" E") == " " and s.feed("ND tail") == "" and s.stopped
    assert StopScanner([]).feed("x") == "x"


@pytest.fixture
def toy_service():
    vocab = words(b" the cat sat on the mat", b" the cat sat on a mat")
    from experts.r2r.engine import R2REngine

    engine = R2REngine(ToyLM(vocab, [b" the cat sat on the mat", b" the cat sat on a mat"]),
                       ToyLM(vocab, [b" the cat sat on a mat"]), slm_format="plain", llm_format="plain")
    return R2RService(engine, AtPositions({4}), Prices(1, 1, 2, 2))


def test_server_wire_format(toy_service):
    client = TestClient(create_app(toy_service, "r2r:toy"))
    assert client.get("/v1/models").json()["data"][0]["id"] == "r2r:toy"
    body = client.post("/v1/chat/completions", json={"model": "r2r:toy", "messages": MSGS}).json()
    assert body["choices"][0]["message"]["content"] == " the cat sat on a mat"
    assert body["usage"]["llm_tokens"] == 1 and body["usage"]["slm_tokens"] == 5 and body["usage"]["cost_usd"] > 0
    with client.stream("POST", "/v1/chat/completions", json={"model": "r2r:toy", "messages": MSGS, "stream": True,
                                                              "stream_options": {"include_usage": True}}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == " the cat sat on a mat"
    finish = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finish) == 1 and finish[0]["usage_details"]["llm_share"] == pytest.approx(1 / 6, abs=1e-4)
    assert events[-1]["usage"] == {"prompt_tokens": body["usage"]["prompt_tokens"], "completion_tokens": 6,
                                   "total_tokens": body["usage"]["prompt_tokens"] + 6}
    stopped = client.post("/v1/chat/completions", json={"messages": MSGS, "stop": [" sat"]}).json()
    assert stopped["choices"][0] == {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": " the cat"}}
    assert client.post("/v1/chat/completions", json={"messages": []}).status_code == 400


def _config(**r2r):
    return AppConfig.model_validate({"experts": [
        {"name": "small", "backend": "llamacpp", "model": "smollm2-135m-instruct", "input_usd_per_mtok": 0.05,
         "output_usd_per_mtok": 0.1},
        {"name": "big", "backend": "llamacpp", "model": "gemma3-270m", "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2},
        {"name": "r2r:small+big", "backend": "r2r", "model": "r2r", "r2r": r2r},
    ]})


def test_config_links_the_pair_to_its_experts():
    opts = _config(slm_expert="small", llm_expert="big", llm_output_usd_per_mtok=0.3).experts[2].r2r
    assert (opts.slm, opts.llm) == ("smollm2-135m-instruct", "gemma3-270m")
    assert (opts.slm_input_usd_per_mtok, opts.slm_output_usd_per_mtok) == (0.05, 0.1)
    assert (opts.llm_input_usd_per_mtok, opts.llm_output_usd_per_mtok) == (0.1, 0.3)  # explicit wins
    with pytest.raises(ValueError, match="not a \\(non-r2r\\) expert"):
        _config(slm_expert="nope")
    with pytest.raises(ValueError, match="remote mode needs"):
        _config(mode="remote")


def test_backend_command(tmp_path):
    from experts.backends import make_backend
    from experts.r2r import DEFAULT_ROUTER_DIR

    cfg = _config(slm_expert="small", llm_expert="big", threshold=0.4, mode="remote", slm_endpoint="http://a/v1",
                  llm_endpoint="http://b/v1").experts[2]
    backend = make_backend(cfg, data_dir=tmp_path, api_key="secret")
    cmd = backend.command(9999)
    assert cmd[1:3] == ["-m", "experts.r2r.server"] and "secret" not in cmd
    args = dict(zip(cmd[3::2], cmd[4::2]))
    assert args["--router"] == str(DEFAULT_ROUTER_DIR) and args["--threshold"] == "0.4" and args["--port"] == "9999"
    assert args["--slm-format"] == "smollm2" and args["--llm-format"] == "gemma" and args["--model-alias"] == "r2r:small+big"
    assert args["--llm-output-price"] == "0.2" and args["--mode"] == "remote"
    assert backend.env()["EXPERTMUX_R2R_API_KEY"] == "secret" and backend.model_id == "r2r:small+big"
    cfg.r2r.router = str(tmp_path / "missing")
    with pytest.raises(BackendError, match="router artifact not found"):
        backend.command(9999)


def test_proposal_top_prob():
    p = Proposal(token=1, piece=b"x", is_eog=False, position=0, top_logprobs=np.log(np.array([0.25], np.float32)))
    assert p.top_prob == pytest.approx(0.25)
