"""R2R remote mode against real OpenAI-compatible servers: two ``llama_cpp.server`` processes
(the GPU deployment would run vLLM), a router trained this session, ``/v1/completions`` with logprobs."""

from __future__ import annotations

import pytest

from core.config import ExpertConfig
from experts.backends.llamacpp import LlamaCppBackend
from experts.r2r.remote import RemotePair
from experts.r2r.routers import LearnedRouter, RandomRouter

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")

QUESTION = [{"role": "user", "content": "Name a primary colour."}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("r2r-remote")
    # llama.cpp's server returns log-probabilities only with logits_all
    slm = LlamaCppBackend(ExpertConfig(name="slm", backend="llamacpp", model="smollm2-135m-instruct",
                                       llamacpp={"extra_args": ["--logits_all", "true"]}), data_dir=data_dir)
    llm = LlamaCppBackend(ExpertConfig(name="llm", backend="llamacpp", model="gemma3-270m"), data_dir=data_dir)
    try:
        slm.start()
        llm.start()
        yield slm, llm
    finally:
        slm.stop()
        llm.stop()


def _pair(servers, chunk=4) -> RemotePair:
    slm, llm = servers
    return RemotePair(slm_url=slm.api_base, slm_model="slm", llm_url=llm.api_base, llm_model="llm", slm_format="smollm2",
                      llm_format="gemma", chunk=chunk)


def _run(pair, router, max_tokens=12):
    gen = pair.generate(QUESTION, router=router, max_tokens=max_tokens)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def test_remote_mode_with_a_trained_router(servers, r2r_router):
    steps, stats = _run(_pair(servers), LearnedRouter.load(r2r_router.folder))
    text = b"".join(s.piece for s in steps).decode()
    assert text.strip() and stats.tokens == len(steps) > 0
    assert stats.extra["slm_calls"] >= 1 and stats.extra["llm_calls"] == stats.llm_tokens
    assert stats.slm.prompt_tokens > 0


def test_remote_mode_mixes_both_servers(servers):
    steps, stats = _run(_pair(servers, chunk=3), RandomRouter(share=0.5, seed=1), max_tokens=12)
    assert {s.writer for s in steps} == {"slm", "llm"}
    assert stats.extra["llm_calls"] == stats.llm_tokens > 0 and stats.llm.prompt_tokens > 0
    # fewer SLM calls than SLM tokens + hand-overs would need one by one: chunks at work
    assert stats.extra["slm_calls"] <= stats.slm_tokens + stats.llm_tokens
