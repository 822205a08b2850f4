"""A probe reading a local llama.cpp expert's own prefill: the states, the kept KV cache, the proxy path.

Real llama.cpp (the packaged SmolLM2-135M), the expert's real server process, the official
``openai`` client and the ledger.
"""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from core.settings import Settings
from tests.conftest import remote_expert, write_config
from tests.support import fake_openai
from tests.support.routing_matrix import make_frame
from tests.support.servers import ledger_row, serve_in_thread

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    import llama_cpp

    from core import layer_states
    from core.model_files import SMOLLM2, resolve_gguf

    capture = layer_states.LayerCapture()
    with layer_states.install(capture):
        model = llama_cpp.Llama(str(resolve_gguf(SMOLLM2, data_dir=tmp_path_factory.mktemp("models"))), n_ctx=1024,
                                n_threads=2, verbose=False)
    return model, capture


def _evals(model, monkeypatch) -> list[int]:
    """Lengths of every evaluation the model runs from now on."""
    sizes: list[int] = []
    real = model.eval

    def counting(tokens):
        sizes.append(len(tokens))
        return real(tokens)

    monkeypatch.setattr(model, "eval", counting)
    return sizes


def test_states_are_those_of_the_full_pass_and_the_answer_skips_its_prefill(llama, monkeypatch):
    from core import layer_states

    model, capture = llama
    messages = [{"role": "user", "content": QUESTION}]
    tokens, span = layer_states.chat_prompt(model, messages)
    cold = model.create_chat_completion(messages=messages, max_tokens=6, temperature=0)["choices"][0]["message"]["content"]

    cut = layer_states.read(model, capture, tokens, [6, 18], span=span, keep=False)  # stops after block 18
    full = layer_states.read(model, capture, tokens, [6, 18], span=span, keep=True)  # the whole model, prompt kept
    assert cut.shape == (2 * 2 * model.n_embd(),) and np.isfinite(cut).all()
    np.testing.assert_array_equal(cut, full)
    assert not np.allclose(full[: model.n_embd()], full[2 * model.n_embd(): 3 * model.n_embd()])  # blocks 6 and 18 differ

    sizes = _evals(model, monkeypatch)
    shared = model.create_chat_completion(messages=messages, max_tokens=6, temperature=0)["choices"][0]["message"]["content"]
    assert shared == cold  # the same greedy answer
    assert sizes and max(sizes) == 1  # only the generated tokens were evaluated: no prompt prefill
    sizes.clear()
    model.reset()
    model.create_chat_completion(messages=messages, max_tokens=2, temperature=0)
    assert sizes[0] == len(tokens)  # without the shared prefill the prompt is evaluated


def test_a_prompt_states_do_not_depend_on_what_came_before(llama):
    from core import layer_states

    model, capture = llama
    toks = layer_states.chat_prompt(model, [{"role": "user", "content": QUESTION}]).tokens
    other = layer_states.chat_prompt(model, [{"role": "user", "content": "Write a haiku about rain " * 30}]).tokens
    first = layer_states.read(model, capture, toks, [12], keep=True)
    layer_states.read(model, capture, other, [12], keep=True)  # a long prompt in between, across two batches
    np.testing.assert_array_equal(first, layer_states.read(model, capture, toks, [12], keep=False))
    with pytest.raises(ValueError, match="blocks must lie in 1..29"):
        layer_states.read(model, capture, toks, [30])


def test_a_kept_read_takes_the_template_from_the_cache_and_reads_the_same_states(llama, monkeypatch):
    from core import layer_states

    model, capture = llama
    first = layer_states.chat_prompt(model, [{"role": "user", "content": QUESTION}])
    layer_states.read(model, capture, first.tokens, [9, 18], span=first.span, keep=True)
    nxt = layer_states.chat_prompt(model, [{"role": "user", "content": "Why is the sky blue?"}])
    scratch = layer_states.read(model, capture, nxt.tokens, [9, 18], span=nxt.span, keep=False)  # empties the cache
    layer_states.read(model, capture, first.tokens, [9, 18], span=first.span, keep=True)
    sizes = _evals(model, monkeypatch)
    kept = layer_states.read(model, capture, nxt.tokens, [9, 18], span=nxt.span, keep=True)
    assert nxt.span[0] > 10 and sizes == [len(nxt.tokens) - nxt.span[0]]  # the system prompt and role marker came from the cache
    np.testing.assert_allclose(kept, scratch, rtol=1e-5, atol=1e-5)
    assert layer_states.reusable_prefix(model, nxt.tokens, None) == 0  # without a span every position is pooled


def test_a_conversation_is_read_in_its_context_and_a_lone_question_as_in_training():
    from core.model_files import SMOLLM2
    from policies.prefill_states import PrefillStateBackend

    backend = PrefillStateBackend(SMOLLM2, (9,))
    alone = [{"role": "user", "content": QUESTION}]
    system = [{"role": "system", "content": "You are a terse geography tutor."}, *alone]
    lone, in_context = backend.encode_conversations([alone, system])
    assert np.array_equal(lone, backend.encode([QUESTION])[0])  # training's form: the question as the only message
    assert in_context.shape == lone.shape and np.isfinite(in_context).all()
    assert not np.allclose(in_context, lone)  # the system prompt is read: the same text's states move


def test_the_features_pool_the_users_text_not_the_template_around_it(llama):
    from core import layer_states

    model, capture = llama
    conversation = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                    {"role": "user", "content": QUESTION}]
    tokens, (start, stop) = layer_states.chat_prompt(model, conversation)
    assert model.detokenize(tokens[start:stop]).decode() == QUESTION  # the last user message, exactly
    assert 0 < start < stop < len(tokens)  # the template's system prompt and role markers lie outside it
    tokens_a, (start_a, stop_a) = layer_states.chat_prompt(model, [{"role": "user", "content": "assistant"}])
    assert model.detokenize(tokens_a[start_a:stop_a]).decode() == "assistant"
    assert stop_a <= len(tokens_a) - 3  # the user's word, not the template's closing "<|im_start|>assistant"
    hidden = model.n_embd()
    pooled = layer_states.read(model, capture, tokens, [9], span=(start, stop), keep=False)
    whole = layer_states.read(model, capture, tokens, [9], keep=False)
    assert not np.allclose(pooled[:hidden], whole[:hidden])  # a different mean ...
    assert not np.allclose(pooled[hidden:], whole[hidden:])  # ... and the message's last token, not the template's

    long = "Explain the rules of chess. " * 40  # longer than the pooling window
    tokens, (start, stop) = layer_states.chat_prompt(model, [{"role": "user", "content": long}])
    with capture.armed([9], stop_after_deepest=True) as rows:
        model.reset()
        model.eval(tokens)
    model.reset()
    states = np.concatenate(rows[9])
    np.testing.assert_allclose(layer_states.pool(rows, [9], (start, stop))[:hidden],
                               states[stop - layer_states.WINDOW: stop].mean(axis=0), rtol=1e-5)


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    from api.app import create_app
    from policies.artifacts import save_artifact
    from policies.data import RoutingData
    from policies.features import configure_feature_stores
    from policies.registry import create_policy

    root = tmp_path_factory.mktemp("shared-prefill")
    configure_feature_stores(data_dir=root / "var")
    data = RoutingData.from_frame(make_frame(n_per_task=8, seed=5), name="synthetic")
    train = data.subset(np.flatnonzero(data.split == "train"))
    probe = create_policy("probe", runtime="llamacpp", layer=6, pooling="both", cv_folds=2).fit(train)
    artifact = save_artifact(probe, root / "probe", data=train)
    behaviour = fake_openai.Behaviour(answer="remote answer")
    with serve_in_thread(fake_openai.make_app(behaviour)) as remote_url:
        experts = [{"name": "local", "backend": "llamacpp", "model": "smollm2-135m-instruct",
                    "input_usd_per_mtok": 0.05, "output_usd_per_mtok": 0.1,
                    "llamacpp": {"share_prefill": True, "n_ctx": 1024}},
                   remote_expert("remote", remote_url)]
        expert_map = {"small": "local", "mid": "remote", "large": "remote"}
        config = write_config(root / "expertmux.yaml", experts, {
            "active": "probe", "lambda": 0, "options": {"probe": {"artifact": str(artifact), "expert_map": expert_map}}})
        settings = Settings(config=config, data_dir=root / "var", autostart_experts=True, supervise_interval_s=0,
                            autolearn=False)
        app = create_app(settings)
        with serve_in_thread(app, startup_timeout=300) as url:
            yield url, app


_row = ledger_row


def test_the_proxy_reads_the_experts_prefill_and_the_expert_answers_from_its_cache(shared_app):
    url, app = shared_app
    service = app.state.service
    expert = service.experts["local"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    before = expert.backend.log_path.read_text(errors="replace").count("full prompt already cached")
    raw = client.chat.completions.with_raw_response.create(
        model="expertmux/probe", messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0,
        extra_body={"expertmux": {"allowed_experts": ["local"]}})
    resp = raw.parse()
    assert raw.headers["x-expertmux-expert"] == "local" and resp.choices[0].message.content.strip()
    assert service.prefill.handed_over == 1
    row = _row(app, raw.headers["x-expertmux-request-id"])
    assert row.decision["timing"]["shared_prefill_ms"] > 0
    log = expert.backend.log_path.read_text(errors="replace")
    assert log.count("full prompt already cached") == before + 1  # the answer decoded from the kept prompt

    # the features handed over are the ones this process would compute for the same conversation
    policy = service.policies.get("probe")
    body = httpx.post(f"{expert.backend.api_base}/prefill", timeout=60,
                      json={"messages": [{"role": "user", "content": "Name a river in Egypt."}], "blocks": [6]}).json()
    from policies.prefill_states import prefill_encoder

    local = prefill_encoder("smollm2-135m-instruct", [6]).backend.encode(["Name a river in Egypt."])[0]
    np.testing.assert_allclose(np.asarray(body["features"], dtype=np.float32), local, rtol=0, atol=1e-5)
    assert policy.served_prefill() == ("smollm2-135m-instruct", (6,))


def test_bad_prefill_requests_get_a_clear_4xx(shared_app):
    _, app = shared_app
    base = app.state.service.experts["local"].backend.api_base
    r = httpx.post(f"{base}/prefill", json={"messages": [{"role": "user", "content": "hi"}], "blocks": [99]}, timeout=30)
    assert r.status_code == 400 and "blocks must lie in 1..29" in r.json()["error"]["message"]
    assert httpx.post(f"{base}/prefill", json={"messages": [], "blocks": [6]}, timeout=30).status_code == 422
