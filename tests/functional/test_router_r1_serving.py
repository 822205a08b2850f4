"""``expertmux/router-r1`` through the official openai client: answer, trace, attempts, total cost.

The first tests script the router model (an OpenAI-compatible upstream that writes given
protocol steps) so every path is exercised deterministically; the last ones run the embedded
default with the real local llama.cpp experts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import PROJECT_ROOT, Settings
from router.ledger.models import AttemptRow, KeyUsageRow, RequestRow
from tests.conftest import make_settings, remote_expert
from tests.support import fake_openai
from tests.support.servers import serve_in_thread

MODEL = "expertmux/router-r1"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class ScriptedRouter(fake_openai.Behaviour):
    """An upstream whose n-th chat call answers ``script[n]`` (the last one repeats)."""

    script: list[str] = field(default_factory=list)

    @property
    def answer(self) -> str:  # read by the fake server after it has recorded the call
        return self.script[min(len(self.calls), len(self.script)) - 1] if self.calls else ""

    @answer.setter
    def answer(self, value: str) -> None:  # the base class's default assigns it
        pass


@pytest.fixture
def scripted(tmp_path, upstreams):
    """The app with a scripted router expert next to the 'cheap' and 'strong' fake experts."""
    router = ScriptedRouter(script=[])
    with serve_in_thread(fake_openai.make_app(router)) as router_url:
        experts = [
            remote_expert("cheap", upstreams["cheap"][1], params_b=1.0),
            remote_expert("strong", upstreams["strong"][1], params_b=70.0, input_usd_per_mtok=10.0, output_usd_per_mtok=30.0),
            remote_expert("router", router_url, input_usd_per_mtok=0.5, output_usd_per_mtok=1.0),
        ]
        policy = {"active": "prior", "lambda": 0,
                  "options": {"router-r1": {"router_expert": "router", "candidates": ["cheap", "strong"], "max_rounds": 2}}}
        from api.app import create_app

        app = create_app(make_settings(tmp_path, experts, policy))
        with serve_in_thread(app) as url:
            yield router, app, openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60)


def _ledger(app, request_id: str) -> tuple[RequestRow, list[AttemptRow]]:
    ledger = app.state.service.ledger
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        row = s.get(RequestRow, request_id)
        assert row is not None, f"no ledger row for {request_id}"
        attempts = s.scalars(select(AttemptRow).where(AttemptRow.request_id == request_id)
                             .order_by(AttemptRow.attempt_no)).all()
        return row, list(attempts)


def test_think_search_answer(scripted, upstreams):
    router, app, client = scripted
    router.script = ["<think>ask the strong one</think><search>strong: capital of France?",
                     "<think>it said so</think><answer>Paris</answer>"]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
    resp = raw.parse()
    assert resp.choices[0].message.content == "Paris" and resp.model == MODEL
    trace = resp.model_extra["expertmux"]["trace"]
    assert trace["well_formed"] and not trace["fallback_used"] and trace["n_rounds"] == 1
    assert [c["expert"] for c in trace["calls"]] == ["strong"]
    assert "<information>strong answer here</information>" in json.dumps(trace["steps"])
    # the router saw the protocol and the candidates, and stopped at the stop sequences
    first = router.calls[0]
    assert first["stop"] == ["</search>", "</answer>"] and "strong" in first["messages"][0]["content"]
    assert upstreams["strong"][0].calls[-1]["messages"] == [{"role": "user", "content": "capital of France?"}]
    assert router.calls[1]["messages"][-1]["content"] == "<information>strong answer here</information>"

    row, attempts = _ledger(app, raw.headers["x-expertmux-request-id"])
    assert [(a.expert, a.status, a.usage_details["router_r1"]) for a in attempts] == [
        ("router", "ok", "generate"), ("strong", "ok", "search"), ("router", "ok", "generate")]
    assert all(a.cost_usd > 0 for a in attempts)
    assert row.status == "ok" and row.policy == "router-r1" and row.n_attempts == 3
    assert row.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts))
    assert row.cost_usd == pytest.approx(trace["total_cost_usd"])
    assert row.decision["trace"]["answer"] == "Paris" and row.decision["ranking"] == ["cheap", "strong"]
    assert resp.usage.prompt_tokens == row.prompt_tokens and resp.usage.completion_tokens == row.completion_tokens


def test_streamed_answer_with_trace_in_the_last_chunk(scripted):
    router, app, client = scripted
    router.script = ["<think>x</think><search>cheap: q", "<answer>The capital of France is Paris, of course.</answer>"]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION, stream=True,
                                                            stream_options={"include_usage": True})
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris, of course."
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # streamed in pieces
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason == "stop")
    assert last.model_extra["expertmux"]["trace"]["calls"][0]["expert"] == "cheap"
    usage = chunks[-1].usage
    row, attempts = _ledger(app, raw.headers["x-expertmux-request-id"])
    assert row.stream and row.status == "ok" and len(attempts) == 3
    assert usage.completion_tokens == row.completion_tokens
    assert row.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts))


def test_malformed_router_falls_back_to_the_cheapest(scripted, upstreams):
    router, app, client = scripted
    router.script = ["I think the answer is Paris."]  # never the protocol
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
    resp = raw.parse()
    assert resp.choices[0].message.content == "cheap answer here"
    trace = resp.model_extra["expertmux"]["trace"]
    assert trace["fallback_used"] and not trace["well_formed"] and "outside tags" in trace["fallback_reason"]
    assert raw.headers["x-expertmux-expert"] == "cheap"
    row, attempts = _ledger(app, raw.headers["x-expertmux-request-id"])
    assert [a.expert for a in attempts] == ["router", "router", "cheap"]  # one retry, then the fallback
    assert all(a.usage_details.get("cut") for a in attempts[:2])  # prose: the stream was cut at its first word
    assert row.expert == "cheap" and row.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts))


def test_unknown_expert_and_too_many_rounds_are_bounded(scripted, upstreams):
    router, app, client = scripted
    router.script = ["<search>gpt-9: q</search>", "<search>cheap: a</search>", "<search>cheap: b</search>",
                     "<search>cheap: c</search>"]  # repeats: never answers
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
    trace = raw.parse().model_extra["expertmux"]["trace"]
    assert trace["fallback_used"] and trace["n_rounds"] == 2 and trace["n_generations"] == 4
    row, attempts = _ledger(app, raw.headers["x-expertmux-request-id"])
    assert [a.expert for a in attempts] == ["router", "router", "cheap", "router", "cheap", "router", "cheap"]


def test_router_down_still_answers(scripted, upstreams):
    router, app, client = scripted
    router.fail_status = 500
    resp = client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert resp.choices[0].message.content == "cheap answer here"
    assert "router generation failed" in resp.model_extra["expertmux"]["trace"]["fallback_reason"]


def test_everything_down_is_a_clean_502_with_a_row(scripted, upstreams):
    router, app, client = scripted
    router.fail_status = 500
    upstreams["cheap"][0].fail_status = 500
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert info.value.status_code == 502
    row, attempts = _ledger(app, info.value.response.headers["x-expertmux-request-id"])
    assert row.status == "error" and all(a.status == "error" for a in attempts)


def test_listed_in_models_and_bad_input_is_4xx(scripted):
    router, app, client = scripted
    assert MODEL in {m.id for m in client.models.list().data}
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body={"expertmux": {"allowed_experts": ["router"]}})


# -- the embedded default: SmolLM2 routes between the real local experts ----------------------------
@pytest.fixture(scope="module")
def local_app(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")
    from api.app import create_app

    settings = Settings(config=PROJECT_ROOT / "config" / "expertmux.yaml",  # without autolearn: its folder is the checkout's
                        data_dir=tmp_path_factory.mktemp("router-r1"), autostart_experts=True, autolearn=False)
    app = create_app(settings)
    with serve_in_thread(app, startup_timeout=300) as url:
        yield url, app


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_local_router_r1(local_app, stream):
    url, app = local_app
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0, timeout=300)
    question = [{"role": "user", "content": "Name the largest planet of the solar system."}]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=question, max_tokens=48, stream=stream)
    if stream:
        chunks = list(raw.parse())
        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        trace = next(c for c in chunks if c.choices and c.choices[0].finish_reason).model_extra["expertmux"]["trace"]
    else:
        resp = raw.parse()
        answer, trace = resp.choices[0].message.content, resp.model_extra["expertmux"]["trace"]
    assert answer.strip() and trace["answer"] == answer
    row, attempts = _ledger(app, raw.headers["x-expertmux-request-id"])
    assert row.status == "ok" and row.requested_model == MODEL and row.stream == stream
    generations = [a for a in attempts if a.usage_details["router_r1"] == "generate"]
    assert generations and all(a.expert == "smollm2-135m" and a.status == "ok" for a in generations)
    assert len(generations) == trace["n_generations"]
    assert len(attempts) == len(generations) + len(trace["calls"])
    assert all(a.cost_usd > 0 for a in attempts if a.status == "ok")
    assert row.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts))
    assert row.cost_usd == pytest.approx(trace["total_cost_usd"])
    assert row.decision["trace"]["n_generations"] == trace["n_generations"]
    assert httpx.get(f"{url}/v1/models").json()["data"]


# -- a trained adapter, served in-process ----------------------------------------------------------------
@pytest.mark.slow
def test_adapter_served_in_process(tmp_path, upstreams):
    """An adapter artifact as `expertmux train router-r1` writes it (here: freshly initialised
    LoRA weights) is verified, loaded on the first request and routes among the experts."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from api.app import create_app
    from policies.router_r1.lm import ensure_hf_model, load_model
    from policies.router_r1.train import History, TrainConfig, save_router_artifact

    base = ensure_hf_model("smollm2-135m-instruct", data_dir=PROJECT_ROOT / "var")
    _, model = load_model(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    artifact = save_router_artifact(peft_model, tmp_path / "router-r1", cfg=TrainConfig(max_rounds=2, max_retries=0),
                                    env_info={}, history=History(), base_model=str(base))
    experts = [remote_expert("cheap", upstreams["cheap"][1], params_b=0.135),
               remote_expert("strong", upstreams["strong"][1], params_b=70.0, input_usd_per_mtok=10.0, output_usd_per_mtok=30.0)]
    policy = {"active": "prior", "lambda": 0,
              "options": {"router-r1": {"router_expert": "cheap", "adapter": str(tmp_path / "router-r1")}}}
    app = create_app(make_settings(tmp_path, experts, policy))
    assert app.state.service.agent.agent_config.max_rounds == 2  # the trained budget, not the default 3
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=300)
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
        resp = raw.parse()
    trace = resp.model_extra["expertmux"]["trace"]
    assert resp.choices[0].message.content.strip() and trace["answer"] == resp.choices[0].message.content
    row, attempts = _ledger(app, raw.headers["x-expertmux-request-id"])
    generations = [a for a in attempts if a.usage_details["router_r1"] == "generate"]
    assert generations and all(a.expert == "router-r1" and a.usage_details["adapter"] == artifact.name for a in generations)
    assert all(a.cost_usd > 0 and a.completion_tokens > 0 for a in generations)
    assert row.status == "ok" and row.decision["policy_version"] == artifact.name
    assert row.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts)) == pytest.approx(trace["total_cost_usd"])


def test_bad_adapter_fails_at_start_up(tmp_path, upstreams):
    from api.app import create_app
    from core.errors import ConfigError

    (tmp_path / "broken").mkdir()
    experts = [remote_expert("cheap", upstreams["cheap"][1])]
    policy = {"active": "prior", "options": {"router-r1": {"adapter": str(tmp_path / "broken")}}}
    with pytest.raises(ConfigError, match="adapter"):
        create_app(make_settings(tmp_path, experts, policy))
    with pytest.raises(ConfigError, match="router-r1"):
        create_app(make_settings(tmp_path, experts, {"active": "prior", "options": {"router-r1": {"max_rounds": "many"}}}))


def test_budgeted_key_reserves_the_whole_trajectory(scripted):
    router, app, client = scripted
    router.script = ["<search>strong: q</search>", "<answer>Paris</answer>"]
    keys = app.state.service.keys
    _, tiny = keys.create(name="tiny", budget_usd_day=1e-6)  # less than one worst-case trajectory
    ample_key, ample = keys.create(name="ample", budget_usd_day=1.0)
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=str(client.base_url), api_key=tiny, max_retries=0).chat.completions.create(
            model=MODEL, messages=QUESTION)
    raw = openai.OpenAI(base_url=str(client.base_url), api_key=ample, max_retries=0).chat.completions \
        .with_raw_response.create(model=MODEL, messages=QUESTION)
    assert raw.parse().choices[0].message.content == "Paris"
    row, attempts = _ledger(app, raw.headers["x-expertmux-request-id"])
    assert row.api_key_id == ample_key.id and len(attempts) == 3 and row.cost_usd > 0
    with Session(app.state.service.ledger.engine) as s:
        usage = s.scalars(select(KeyUsageRow).where(KeyUsageRow.key_id == ample_key.id, KeyUsageRow.window == "day")).one()
    assert usage.spent_usd == pytest.approx(row.cost_usd) and usage.reserved_usd == pytest.approx(0.0, abs=1e-12)
