"""Sharing a local expert's prefill: configuration, the handed-over vector, the router's fallback."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from core.config import ExpertConfig
from core.errors import PolicyError
from experts.backends.llamacpp import LlamaCppBackend
from router.request.prefill import SharedPrefill


def _config(**llamacpp) -> ExpertConfig:
    return ExpertConfig(name="local", backend="llamacpp", model="smollm2-135m-instruct", llamacpp=llamacpp)


def test_share_prefill_adds_the_prefill_route_and_needs_the_models_own_template(tmp_path, monkeypatch):
    monkeypatch.setattr("experts.backends.llamacpp.resolve_gguf", lambda *a, **k: tmp_path / "m.gguf")
    plain = LlamaCppBackend(_config(), data_dir=tmp_path)
    assert plain.command(9000)[2] == "experts.llamacpp_server" and "--share_prefill" not in plain.command(9000)
    shared = LlamaCppBackend(_config(share_prefill=True), data_dir=tmp_path)
    assert shared.command(9000)[-1] == "--share_prefill" and shared.shares_prefill
    with pytest.raises(ValidationError, match="leave chat_format unset"):
        _config(share_prefill=True, chat_format="chatml")


def test_a_llamacpp_process_spins_briefly_unless_told_otherwise(monkeypatch):
    import os

    from core import llama_thread

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    llama_thread.spin_briefly()
    assert os.environ["GOMP_SPINCOUNT"] == "1000"  # idle OpenMP threads sleep soon: other experts need the cores
    monkeypatch.setenv("GOMP_SPINCOUNT", "50000")
    llama_thread.spin_briefly()
    assert os.environ["GOMP_SPINCOUNT"] == "50000"  # the operator's own value wins


class _Backend:
    def __init__(self, id_: str, dim: int) -> None:
        self.id, self.dim, self.calls = id_, dim, 0

    def encode(self, texts):
        self.calls += 1
        return np.ones((len(texts), self.dim), dtype=np.float32)


def test_an_encoder_holds_a_vector_computed_elsewhere_and_rejects_a_wrong_one():
    from policies.embeddings import Encoder

    backend = _Backend("fake", 4)
    enc = Encoder(backend)
    enc.put("prompt", np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(enc.encode(["prompt"])[0], np.arange(4))
    assert backend.calls == 0  # nothing computed here
    with pytest.raises(PolicyError, match="expected 4 finite numbers"):
        enc.put("other", np.zeros(5))
    with pytest.raises(PolicyError, match="expected 4 finite numbers"):
        enc.put("other", np.array([0, 1, np.nan, 2]))


class _Policy:
    name = "probe"

    def __init__(self, wanted=("smollm2-135m-instruct", (18,))) -> None:
        self.wanted, self.accepted = wanted, []

    def served_prefill(self):
        return self.wanted

    def accept_prefill(self, prompt, features):
        self.accepted.append((prompt, features))


class _Registry:
    def __init__(self, *, share=True, model="smollm2-135m-instruct", down=False, busy=False, slots=1) -> None:
        backend = SimpleNamespace(shares_prefill=share, api_base="http://local.test/v1", api_key="k")
        self.experts = [SimpleNamespace(name="local", backend=backend, config=SimpleNamespace(model=model),
                                        in_flight=1 if busy else 0, slots=slots)]
        self.down = down

    def __iter__(self):
        return iter(self.experts)

    def unavailable(self):
        return frozenset({"local"} if self.down else ())


async def test_the_router_hands_the_experts_states_to_the_policy():
    seen = []

    registry = _Registry()

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), json.loads(request.content)))
        assert registry.experts[0].in_flight == 1  # busy while it prefills: another request computes its own
        return httpx.Response(200, json={"features": [0.5, 1.5], "tokens": 12})

    share = SharedPrefill(registry, client=httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    policy = _Policy()
    out = await share.offer(policy, "user: hi", lambda: [{"role": "user", "content": "hi"}])
    assert out["shared"] and out["tokens"] == 12 and share.handed_over == 1
    assert seen == [("http://local.test/v1/prefill", {"messages": [{"role": "user", "content": "hi"}], "blocks": [18]})]
    assert policy.accepted[0][0] == "user: hi" and registry.experts[0].in_flight == 0
    np.testing.assert_array_equal(policy.accepted[0][1], [0.5, 1.5])


async def test_a_kept_prefill_holds_the_expert_until_its_requests_first_call():
    from router.request.trace import RequestTrace

    registry = _Registry()
    share = SharedPrefill(registry, client=httpx.AsyncClient(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"features": [1.0], "tokens": 3}))))
    first, second = RequestTrace(id="a"), RequestTrace(id="b")
    assert (await share.offer(_Policy(), "hi", lambda: [], trace=first))["shared"]
    expert = registry.experts[0]
    assert expert.in_flight == 0 and share.kept == {"local": 1}  # held, but not load: routing sees an idle expert
    # another request meanwhile would evict the kept prompt: it computes its own features
    assert share.expert_for(_Policy()) is None and await share.offer(_Policy(), "other", lambda: [], trace=second) is None
    first.start_attempt("elsewhere")  # the first call starts (on any expert): the hold ends
    assert share.kept == {} and share.expert_for(_Policy()) is not None
    assert (await share.offer(_Policy(), "other", lambda: [], trace=second))["shared"]
    second.release_hold()  # a request that ends without a call (rejected, failed) releases it too
    second.release_hold()  # once
    assert share.kept == {} and first.held is None


@pytest.mark.parametrize("registry, wanted", [
    (dict(share=False), ("smollm2-135m-instruct", (18,))),  # the expert does not share
    (dict(model="gemma3-270m"), ("smollm2-135m-instruct", (18,))),  # it serves another model
    (dict(down=True), ("smollm2-135m-instruct", (18,))),  # it is not running
    (dict(busy=True), ("smollm2-135m-instruct", (18,))),  # its one slot is answering: the prefill would wait
    (dict(busy=True, slots=4), ("smollm2-135m-instruct", (18,))),  # llama_cpp.server runs one request at a time anyway
    (dict(), None),  # the policy reads no prefill
])
async def test_no_request_is_made_when_no_expert_shares_what_the_policy_reads(registry, wanted):
    def fail(request):  # pragma: no cover - reaching it fails the test
        raise AssertionError("no request expected")

    share = SharedPrefill(_Registry(**registry), client=httpx.AsyncClient(transport=httpx.MockTransport(fail)))
    policy = _Policy(wanted)
    assert await share.offer(policy, "p", lambda: []) is None and not policy.accepted


async def test_a_failing_expert_leaves_the_features_to_the_policy(caplog):
    share = SharedPrefill(_Registry(), client=httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(500, json={"error": "boom"}))))
    policy = _Policy()
    with caplog.at_level("INFO", logger="expertmux.prefill"):
        assert await share.offer(policy, "p", lambda: []) == {"expert": "local", "shared": False}
    assert not policy.accepted and share.handed_over == 0
    assert [r.levelname for r in caplog.records] == ["WARNING"]  # the expert's fault


async def test_a_prompt_the_expert_refuses_is_not_a_warning(caplog):
    too_long = {"error": {"message": "prefill: the prompt has 3000 tokens; this expert's context holds 2048"}}
    share = SharedPrefill(_Registry(), client=httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(400, json=too_long))))
    with caplog.at_level("INFO", logger="expertmux.prefill"):
        assert await share.offer(_Policy(), "p", lambda: []) == {"expert": "local", "shared": False}
    assert [r.levelname for r in caplog.records] == ["INFO"]  # this prompt's, expected now and then
    assert "context holds 2048" in caplog.records[0].getMessage()


def test_a_probe_names_what_it_reads_only_with_the_llamacpp_runtime():
    from policies.probe import ProbePolicy

    probe = ProbePolicy(runtime="llamacpp")
    assert probe.served_prefill() is None  # not fitted
    probe.layer_ = 12
    assert probe.served_prefill() == ("smollm2-135m-instruct", (12,))
    other = ProbePolicy()
    other.layer_ = 12
    assert other.served_prefill() is None
    with pytest.raises(PolicyError, match="reads no expert's prefill"):
        other.accept_prefill("p", np.zeros(3))


def test_a_llamacpp_probe_is_served_only_on_the_features_it_was_fitted_on():
    from policies.probe import ProbePolicy

    probe = ProbePolicy(runtime="llamacpp")
    probe.experts_ = [SimpleNamespace(name="a")]
    arrays = {"mean": np.zeros(2), "scale": np.ones(2), "weight": np.zeros((2, 1)), "bias": np.zeros(1)}
    meta = {"layers": [18], "hidden": 576, "layer": 18, "pooling": "both", "alpha": 1.0, "score_lo": 0.0, "score_hi": 1.0}
    with pytest.raises(PolicyError, match="earlier version .* train the probe again"):
        probe._set_state(arrays, meta)  # an artifact from before the features were named
    probe._set_state(arrays, {**meta, "features": probe._features_id()})
    assert probe._features_id().endswith("-L18-u63") and probe.layer_ == 18
    assert ProbePolicy()._features_id() is None  # the transformers runtime keys its cache by dtype instead
