"""R2R serving pieces without models: remote mode over scripted /v1/completions servers, usage
and cost, stop strings, the server's wire format, the r2r backend's command and config."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient

from core.config import AppConfig
from core.errors import BackendError, ConfigError
from experts.r2r.engine import LLM, SLM, GenerationStats
from experts.r2r.features import Proposal
from experts.r2r.remote import RemotePair
from experts.r2r.routers import NeverRouter, Router
from experts.r2r.server import create_app
from experts.r2r.service import R2RService, StopScanner
from experts.r2r.track import TrackStats
from experts.r2r.usage import Prices, usage
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
    from experts.r2r.artifact import save_artifact

    cfg = _config(slm_expert="small", llm_expert="big", threshold=0.4, mode="remote", slm_endpoint="http://a/v1",
                  llm_endpoint="http://b/v1").experts[2]
    data_dir = tmp_path / "var"
    backend = make_backend(cfg, data_dir=data_dir, api_key="secret")
    # no r2r.router: the pair's router trained into the data folder, where `expertmux train r2r` writes
    folder = data_dir / "artifacts" / "r2r" / "smollm2-135m-instruct+gemma3-270m"
    with pytest.raises(BackendError) as missing:
        backend.command(9999)
    message = missing.value.message
    assert message.startswith("expert 'r2r:small+big': no R2R router trained for smollm2-135m-instruct + gemma3-270m")
    assert f"{folder} does not exist" in message and "r2r.router" in message
    assert "expertmux train r2r --slm smollm2-135m-instruct --llm gemma3-270m --prompts " in message
    assert f"--out {folder} " in message
    save_artifact(folder / "20260101T000000Z-aaaaaaaa", {"w1": np.zeros((2, 2))}, {"version": "1"})
    cmd = backend.command(9999)
    assert cmd[1:3] == ["-m", "experts.r2r.server"] and "secret" not in cmd
    args = dict(zip(cmd[3::2], cmd[4::2]))
    assert args["--router"] == str(folder) and args["--threshold"] == "0.4" and args["--port"] == "9999"
    assert args["--slm-format"] == "smollm2" and args["--llm-format"] == "gemma" and args["--model-alias"] == "r2r:small+big"
    assert args["--llm-output-price"] == "0.2" and args["--mode"] == "remote"
    assert backend.env()["EXPERTMUX_R2R_API_KEY"] == "secret" and backend.model_id == "r2r:small+big"
    cfg.r2r.router = str(tmp_path / "missing")
    with pytest.raises(BackendError, match="router artifact not found"):
        backend.command(9999)


def test_proposal_top_prob():
    p = Proposal(token=1, piece=b"x", is_eog=False, position=0, top_logprobs=np.log(np.array([0.25], np.float32)))
    assert p.top_prob == pytest.approx(0.25)


def _toy_engine(llm_cls=ToyLM, **llm_kw):
    from experts.r2r.engine import R2REngine

    vocab = words(b" the cat sat on the mat", b" the cat sat on a mat")
    slm = ToyLM(vocab, [b" the cat sat on the mat", b" the cat sat on a mat"], name="slm")
    llm = llm_cls(vocab, [b" the cat sat on a mat"], name="llm", **llm_kw)
    return R2REngine(slm, llm, slm_format="plain", llm_format="plain")


@pytest.mark.parametrize("stops, text", [
    ([" sat"], " the cat"),
    (["t s"], " the ca"),  # the stop spans two tokens (" cat" " sat")
    (["on", "cat s"], " the "),  # the earliest of several wins
    (["zzz"], " the cat sat on a mat"),
])
def test_stop_strings_cut_the_text_and_the_generation(stops, text):
    engine = _toy_engine()
    service = R2RService(engine, AtPositions({4}), Prices())
    pieces: list[str] = []
    out = service.run(MSGS, max_tokens=20, stop=stops, on_piece=pieces.append)
    assert out.text == "".join(pieces) == text
    assert out.finish_reason == "stop"
    if "zzz" not in stops:
        # generation ended at the stop, before the router's hand-over at position 4: the LLM never ran
        assert engine.llm.evaluated == 0 and out.usage["llm_tokens"] == 0
        assert out.usage["completion_tokens"] <= 3


def test_usage_reports_each_models_tokens_and_cost():
    engine = _toy_engine()
    out = R2RService(engine, AtPositions({4}), Prices(slm_input=1, slm_output=2, llm_input=10, llm_output=20)).run(
        MSGS, max_tokens=20)
    u = out.usage
    n_prompt = len(engine.slm.tokenize(b"Question: where is the cat?\nAnswer:"))
    assert (u["slm_tokens"], u["llm_tokens"], u["completion_tokens"], u["llm_share"]) == (5, 1, 6, pytest.approx(1 / 6, abs=1e-4))
    assert (u["slm_input_tokens"], u["slm_output_tokens"]) == (n_prompt, 6)  # the SLM decodes every position
    assert (u["llm_input_tokens"], u["llm_output_tokens"]) == (n_prompt + 4, 1)  # its prompt + the four SLM tokens before its turn
    assert u["slm_cost_usd"] == pytest.approx((n_prompt * 1 + 6 * 2) / 1e6)
    assert u["llm_cost_usd"] == pytest.approx(((n_prompt + 4) * 10 + 1 * 20) / 1e6)
    assert u["cost_usd"] == pytest.approx(u["slm_cost_usd"] + u["llm_cost_usd"])
    assert u["router"] == "scripted"


def test_remote_usage_counts_the_dropped_chunk_tokens():
    slm = [" the", " cat", " sat", " on", " the", " mat"]
    llm = [" the", " cat", " sat", " on", " a", " mat"]
    transport, calls = scripted_servers(slm, llm)
    pair = RemotePair(slm_url="http://slm/v1", slm_model="s", llm_url="http://llm/v1", llm_model="l",
                      slm_format="plain", llm_format="plain", chunk=3, transport=transport)
    out = R2RService(pair, AtPositions({4}), Prices(slm_output=1, llm_input=10)).run(MSGS, max_tokens=20)
    u = out.usage
    assert out.text == " the cat sat on a mat" and (u["slm_calls"], u["llm_calls"], u["slm_discarded_tokens"]) == (4, 1, 2)
    assert u["slm_output_tokens"] == 5 + 2  # the SLM server generated the two dropped tokens too
    llm_prompt = calls["llm"][0]["prompt"]
    assert u["llm_input_tokens"] == 10 + len(llm_prompt.split("Answer:", 1)[1])  # what that server reported reading
    assert u["cost_usd"] == pytest.approx((7 * 1 + u["llm_input_tokens"] * 10) / 1e6)


def test_remote_mode_ends_on_the_slm_end_of_text_and_respects_max_tokens():
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        done = body["prompt"].split("Answer:", 1)[1]
        out = ([" a", " b"] if not done else [])[: body["max_tokens"]]  # two tokens, then the end of sequence
        finish = "length" if len(out) == body["max_tokens"] else "stop"
        return httpx.Response(200, json={"choices": [{"index": 0, "text": "".join(out), "finish_reason": finish,
                                                      "logprobs": {"tokens": out, "top_logprobs": [{t: -0.1} for t in out]}}],
                                         "usage": {"prompt_tokens": 7}})

    pair = RemotePair(slm_url="http://slm/v1", slm_model="s", llm_url="http://llm/v1", llm_model="l", slm_format="plain",
                      llm_format="plain", chunk=8, transport=httpx.MockTransport(handler))
    steps, stats = run(pair, NeverRouter())
    assert b"".join(s.piece for s in steps) == b" a b" and stats.finish_reason == "stop" and stats.extra["slm_calls"] == 1
    steps, stats = run(pair, NeverRouter(), max_tokens=1)
    assert len(steps) == 1 and stats.finish_reason == "length"


@pytest.mark.parametrize("failure, message", [
    (lambda request: httpx.Response(500, text="boom"), "answered 500: boom"),
    (lambda request: (_ for _ in ()).throw(httpx.ConnectError("refused")), "unreachable"),
])
def test_remote_server_failures_are_expert_errors(failure, message):
    from core.errors import ExpertError

    pair = RemotePair(slm_url="http://slm/v1", slm_model="s", llm_url="http://llm/v1", llm_model="l", slm_format="plain",
                      llm_format="plain", transport=httpx.MockTransport(failure))
    with pytest.raises(ExpertError, match=message):
        run(pair, NeverRouter())


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "non-empty list"),
    ({"messages": ["hi"]}, "every message must be an object"),
    ({"messages": MSGS, "n": 2}, "only n=1"),
    ({"messages": MSGS, "max_tokens": 0}, "positive integer"),
    ({"messages": MSGS, "max_tokens": "5"}, "positive integer"),
    ({"messages": MSGS, "stop": [1]}, "'stop' must be"),
    ({"messages": MSGS, "stream": True, "stream_options": "yes"}, "'stream_options' must be"),
])
def test_server_refuses_bad_requests_with_openai_errors(toy_service, body, message):
    client = TestClient(create_app(toy_service, "r2r:toy"))
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"]
    assert client.post("/v1/chat/completions", content=b"{nope").status_code == 400


def test_a_prompt_too_long_is_a_400_even_when_streaming():
    from tests.unit.test_r2r_engine import SmallContext

    engine = _toy_engine(SmallContext, n_ctx=8)
    client = TestClient(create_app(R2RService(engine, AtPositions({4}), Prices()), "r2r:toy"))
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json={"messages": MSGS, "stream": stream})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", stream


@pytest.mark.parametrize("r2r, message", [
    ({"threshold": 1.5}, "less than or equal to 1"),
    ({"remote_chunk": 0}, "greater than 0"),
    ({"routr": "x"}, "Extra inputs are not permitted"),
    ({"mode": "gpu"}, "'local' or 'remote'"),
    ({"slm_expert": "r2r:small+big"}, "not a \\(non-r2r\\) expert"),
    ({"llm_input_usd_per_mtok": -1}, "greater than or equal to 0"),
])
def test_config_validation(r2r, message):
    with pytest.raises(ValueError, match=message):
        _config(**r2r)


def test_unknown_prompt_format_fails_at_start(tmp_path):
    from experts.backends import make_backend
    from experts.r2r.server import parse_args

    backend = make_backend(_config(slm_expert="small", llm_expert="big", llm_format="alpaca").experts[2], data_dir=tmp_path)
    with pytest.raises(BackendError, match="unknown r2r prompt format 'alpaca'"):
        backend.command(9999)
    with pytest.raises(SystemExit):
        parse_args(["--slm", "a", "--llm", "b", "--router", "r", "--slm-format", "alpaca"])
