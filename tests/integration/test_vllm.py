"""A real vLLM server (CPU build) serving SmolLM2-135M-Instruct through VllmBackend.

Needs ``make vllm-env`` (the .venv-vllm virtualenv and the converted weights); skipped otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.config import load_config
from core.contracts import LoadSnapshot
from experts.backends.process import pid_alive
from experts.backends.vllm import DEFAULT_VENV, PROJECT_ROOT, VllmBackend

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CONFIG = PROJECT_ROOT / "config" / "cpu-vllm.yaml"


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group (vLLM forks an engine core beside its API server)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


@pytest.fixture(scope="module")
def vllm_backend(tmp_path_factory):
    expert = load_config(CONFIG).experts[0]
    if not (DEFAULT_VENV / "bin" / "python").exists():
        pytest.skip(f"no vLLM virtualenv at {DEFAULT_VENV}: run `make vllm-env`")
    weights = PROJECT_ROOT / expert.model
    if not (weights / "config.json").exists():
        pytest.skip(f"no converted weights at {weights}: run `make vllm-env`")

    backend = VllmBackend(expert, data_dir=tmp_path_factory.mktemp("vllm"))
    started = time.monotonic()
    backend.start()
    backend.startup_s = time.monotonic() - started
    print(f"\nvLLM server ready in {backend.startup_s:.1f}s (pid {backend.pid})")
    yield backend
    backend.stop()


def test_server_is_healthy(vllm_backend):
    assert vllm_backend.pid is not None and pid_alive(vllm_backend.pid)
    assert vllm_backend.api_base.startswith("http://127.0.0.1:")
    assert vllm_backend.health()


def test_chat_completion_with_openai_client(vllm_backend):
    from openai import OpenAI

    client = OpenAI(base_url=vllm_backend.api_base, api_key=vllm_backend.api_key, timeout=120)
    assert vllm_backend.model_id in [m.id for m in client.models.list().data]
    started = time.monotonic()
    reply = client.chat.completions.create(
        model=vllm_backend.model_id,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        max_tokens=48,
        temperature=0,
    )
    elapsed = time.monotonic() - started
    text = reply.choices[0].message.content
    print(f"\nreply in {elapsed:.2f}s, {reply.usage.completion_tokens / elapsed:.1f} tok/s: {text!r}")
    assert text and text.strip()
    assert reply.model == vllm_backend.model_id
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_load_reads_metrics(vllm_backend):
    from openai import OpenAI

    idle = vllm_backend.load()
    assert isinstance(idle, LoadSnapshot)
    assert idle.running == 0 and idle.waiting == 0
    assert idle.kv_cache_usage is not None and 0.0 <= idle.kv_cache_usage <= 1.0

    # While a stream is being generated the server reports it as running and holding KV cache.
    # Its gauges refresh once per engine step, so sample them throughout the stream rather than once.
    client = OpenAI(base_url=vllm_backend.api_base, api_key=vllm_backend.api_key, timeout=120)
    stream = client.chat.completions.create(
        model=vllm_backend.model_id,
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
        max_tokens=160,
        stream=True,
        extra_body={"ignore_eos": True},  # keep generating long enough to be observed
    )
    busy_samples, chunks = [], 0
    with stream:
        for _ in stream:
            chunks += 1
            if chunks % 4 == 1:
                snapshot = vllm_backend.load()
                if snapshot is not None and snapshot.running + snapshot.waiting >= 1:
                    busy_samples.append(snapshot)
    assert chunks > 0
    assert busy_samples, "the server never reported the stream as running or waiting"
    assert any(s.kv_cache_usage is not None and s.kv_cache_usage > 0 for s in busy_samples)


def test_stop_ends_the_server_and_its_children(vllm_backend):
    pid = vllm_backend.pid
    assert _group_members(pid)  # the server (and its engine process) are running
    vllm_backend.stop()
    assert not pid_alive(pid)
    assert _group_members(pid) == []
    assert vllm_backend.api_base is None
    assert vllm_backend.load() is None
