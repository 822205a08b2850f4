"""The embedded default end to end: real llama.cpp experts, the official openai client, the ledger."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import PROJECT_ROOT, Settings
from router.ledger.models import AttemptRow, RequestRow
from tests.support.servers import ledger_row, serve_in_thread

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]


@pytest.fixture(scope="module")
def local_app(tmp_path_factory):
    from api.app import create_app

    data_dir = tmp_path_factory.mktemp("local-experts")
    # No supervisor here: the kill test below needs the dead expert to stay dead.
    # No background calibration either: these tests own the experts' queue.
    settings = Settings(config=PROJECT_ROOT / "config" / "expertmux.yaml", data_dir=data_dir, autostart_experts=True,
                        supervise_interval_s=0, autolearn=False)
    app = create_app(settings)
    with serve_in_thread(app, startup_timeout=300) as url:
        yield url, app
    # after shutdown: the servers this app started are gone
    for expert in app.state.service.experts:
        assert expert.backend.pid is None


@pytest.fixture(scope="module")
def client(local_app):
    url, _ = local_app
    return openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0, timeout=120)


_row = ledger_row


def test_non_streaming_auto_routes_to_chat_model(local_app, client):
    _, app = local_app
    raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=HELLO, max_tokens=24)
    resp = raw.parse()
    assert resp.choices[0].message.content.strip()
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert raw.headers["x-expertmux-expert"] == "smollm2-135m" and raw.headers["x-expertmux-policy"] == "prior"
    row = _row(app, raw.headers["x-expertmux-request-id"])
    assert row.status == "ok" and row.expert == "smollm2-135m" and not row.stream
    assert (row.prompt_tokens, row.completion_tokens) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
    assert row.cost_usd == pytest.approx((row.prompt_tokens * 0.05 + row.completion_tokens * 0.10) / 1e6)
    assert row.decision["propensities"]["smollm2-135m"] == 1.0 and row.latency_ms > 0


def test_streaming_each_expert_by_name(local_app, client):
    _, app = local_app
    for expert in ("smollm2-135m", "gemma3-270m"):
        raw = client.chat.completions.with_raw_response.create(model=expert, messages=HELLO, max_tokens=16, stream=True,
                                                                stream_options={"include_usage": True})
        text, usage = "", None
        for chunk in raw.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text.strip(), f"{expert} streamed no text"
        assert usage is not None and usage.completion_tokens > 0
        assert raw.headers["x-expertmux-expert"] == expert
        row = _row(app, raw.headers["x-expertmux-request-id"])
        assert row.stream and row.status == "ok" and row.expert == expert and row.policy == "direct"
        assert row.completion_tokens == usage.completion_tokens
        assert 0 < row.ttft_ms <= row.latency_ms


def test_a_stream_is_not_cut_short_by_a_concurrent_request(client):
    """A request arriving while an expert streams must queue behind the stream, not end it: the
    stream (greedy decoding) equals the same request streamed alone, and it ends with a reason."""
    import threading

    count = [{"role": "user", "content": "Count from 1 to 100, separated by commas."}]
    params = dict(model="smollm2-135m", messages=count, max_tokens=24, temperature=0, stream=True)

    def streamed(disturb: bool) -> tuple[str, str | None]:
        pieces, finish, other, side = [], None, {}, None
        for chunk in client.chat.completions.create(**params):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            if disturb and side is None and "".join(pieces).strip():  # mid-stream: a second client asks
                side = threading.Thread(target=lambda: other.update(
                    r=client.chat.completions.create(model="smollm2-135m", messages=HELLO, max_tokens=4)))
                side.start()
        if side is not None:
            side.join(120)
            assert other["r"].choices[0].message.content is not None
        return "".join(pieces), finish

    alone = streamed(disturb=False)
    together = streamed(disturb=True)
    assert together[1] is not None, f"the stream ended without a finish reason after {together[0]!r}"
    assert together == alone


def test_models_endpoint(client):
    ids = {m.id for m in client.models.list().data}
    assert {"expertmux/auto", "expertmux/prior", "expertmux/random", "smollm2-135m", "gemma3-270m"} <= ids


@pytest.mark.parametrize("model, options, expected", [
    ("expertmux/strongest", None, "smollm2-135m"),
    ("expertmux/cheapest", None, "smollm2-135m"),
    ("expertmux/fixed", None, "smollm2-135m"),
    ("expertmux/auto", {"allowed_experts": ["gemma3-270m"]}, "gemma3-270m"),
    ("expertmux/auto", {"max_params_b": 0.2}, "smollm2-135m"),
])
def test_routing_by_policy_and_options(local_app, client, model, options, expected):
    _, app = local_app
    raw = client.chat.completions.with_raw_response.create(model=model, messages=HELLO, max_tokens=8,
                                                            extra_body={"expertmux": options} if options else None)
    raw.parse()
    assert raw.headers["x-expertmux-expert"] == expected
    row = _row(app, raw.headers["x-expertmux-request-id"])
    assert row.expert == expected and row.requested_model == model


def test_ledger_has_one_row_per_request(local_app, client):
    _, app = local_app
    ledger = app.state.service.ledger
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        before = len(s.scalars(select(RequestRow.id)).all())
    for _ in range(3):
        client.chat.completions.create(model="expertmux/random", messages=HELLO, max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="expertmux/auto", messages=[], max_tokens=4)
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        rows = s.scalars(select(RequestRow).order_by(RequestRow.created_at)).all()
    assert len(rows) == before + 4
    assert [r.status for r in rows[-4:]] == ["ok", "ok", "ok", "rejected"]
    assert all(r.decision["propensities"] == {"smollm2-135m": 0.5, "gemma3-270m": 0.5} for r in rows[-4:-1])


def test_killed_expert_gives_clear_error_and_failure_row(local_app, client):
    """Runs last in this module: it kills the Gemma server."""
    url, app = local_app
    gemma = app.state.service.experts["gemma3-270m"]
    os.kill(gemma.backend.pid, signal.SIGKILL)
    time.sleep(0.5)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gemma3-270m", messages=HELLO, max_tokens=8)
    assert info.value.status_code == 502
    body = info.value.response.json()["error"]
    assert "gemma3-270m" in body["message"] and "unreachable" in body["message"]
    assert body["code"] == "expert_unavailable"
    rid = info.value.response.headers.get("x-expertmux-request-id")
    ledger = app.state.service.ledger
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        row = s.scalars(select(RequestRow).where(RequestRow.requested_model == "gemma3-270m")
                        .order_by(RequestRow.created_at.desc())).first()
        attempts = s.scalars(select(AttemptRow).where(AttemptRow.request_id == row.id)).all()
    assert rid == row.id
    assert row.status == "error" and row.http_status == 502 and "unreachable" in row.error
    assert [(a.expert, a.status) for a in attempts] == [("gemma3-270m", "error")]
    # Routed traffic keeps being answered: a decision for the dead expert falls back to the live one.
    ids = []
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model="expertmux/random", messages=HELLO, max_tokens=4)
        assert raw.headers["x-expertmux-expert"] == "smollm2-135m"
        ids.append(raw.headers["x-expertmux-request-id"])
    for rid in ids:
        row = _row(app, rid)
        assert row.status == "ok" and row.n_attempts == (2 if row.decision["expert"] == "gemma3-270m" else 1)
    assert httpx.get(f"{url}/healthz/details").json()["experts"]["gemma3-270m"]["up"] is False
