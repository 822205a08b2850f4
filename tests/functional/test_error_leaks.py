"""Client-facing errors name the expert, never its address; the detail goes to the log and ledger.

Every way an upstream can fail is tried — connection refused (pooled HTTP and litellm paths), a
timeout, a 5xx or 4xx whose body echoes the upstream's own URL and API key, a body that is not
JSON, an answer without ``choices``, an error event mid-stream — against experts configured with
every URL shape (IP and port, ``localhost``, credentials in the URL). No error body, JSON or SSE,
may contain any configured base URL, its host and port, or the upstream's secret.
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from router.ledger.models import AttemptRow, RequestRow
from tests.conftest import make_settings, remote_expert
from tests.support.servers import free_port, serve_in_thread

SECRET = "sk-upstream-SECRET-123"
HI = [{"role": "user", "content": "hi"}]


def leaky_upstream(mode: str) -> Starlette:
    """An upstream that fails in one way and puts its own address and a secret in what it says."""

    async def chat(request: Request):
        where = f"{request.url} (backend 10.1.2.3:8000, key {SECRET})"
        body = await request.json()
        if mode == "timeout":
            await asyncio.sleep(5)
        if mode in ("500", "400", "422", "401", "429"):
            return JSONResponse({"error": {"message": f"failed at {where}"}}, status_code=int(mode))
        if mode == "not-json":
            return PlainTextResponse(f"<html>nginx at {where}</html>")
        if mode == "no-choices":
            return JSONResponse({"object": "chat.completion", "detail": f"served by {where}"})
        if mode == "mid-stream" and body.get("stream"):
            async def events():
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "par"}, "finish_reason": None}]}
                yield "data: " + json.dumps(chunk) + "\n\n"
                yield "data: " + json.dumps({"error": {"message": f"crashed at {where}"}}) + "\n\n"
            return StreamingResponse(events(), media_type="text/event-stream")
        return JSONResponse({"error": {"message": f"unsupported at {where}"}}, status_code=500)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


MODES = ["500", "400", "422", "401", "429", "not-json", "no-choices", "mid-stream", "timeout"]


@pytest.fixture
def leaky_app(tmp_path):
    from contextlib import ExitStack

    from api.app import create_app

    with ExitStack() as stack:
        experts, urls = [], []
        for mode in MODES:
            url = stack.enter_context(serve_in_thread(leaky_upstream(mode)))
            port = url.rsplit(":", 1)[1]
            shapes = {"500": f"http://localhost:{port}", "401": f"http://user:{SECRET}@127.0.0.1:{port}"}
            base = shapes.get(mode, url)
            experts.append(remote_expert(f"e-{mode}", base, timeout_s=1 if mode == "timeout" else 10))
            urls.append(base)
        dead = f"http://127.0.0.1:{free_port()}"
        experts += [remote_expert("e-refused", dead), remote_expert("e-refused-litellm", dead, transport="litellm")]
        urls.append(dead)
        settings = make_settings(tmp_path, experts, {"active": "strongest", "lambda": 0}, max_attempts=20,
                                 breaker_failures=1000)
        app = create_app(settings)
        url = stack.enter_context(serve_in_thread(app))
        yield url, app, urls, [e["name"] for e in experts]


def _needles(urls: list[str]) -> list[str]:
    out = {SECRET, "10.1.2.3"}
    for u in urls:
        host_port = httpx.URL(u).netloc.decode().split("@")[-1]
        out |= {u, f"{u}/v1", host_port}
    return sorted(out)


def test_no_configured_url_or_secret_in_any_error_body(leaky_app, caplog):
    url, app, urls, names = leaky_app
    bodies = []
    with httpx.Client(base_url=url, timeout=30) as http, caplog.at_level(logging.WARNING, logger="expertmux"):
        for model in [*names, "expertmux/auto"]:
            r = http.post("/v1/chat/completions", json={"model": model, "messages": HI})
            assert r.status_code >= 400, (model, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            bodies.append((model, False, r.status_code, r.text))
            with http.stream("POST", "/v1/chat/completions", json={"model": model, "messages": HI, "stream": True}) as s:
                bodies.append((model, True, s.status_code, s.read().decode()))
    needles = _needles(urls)
    leaks = [(model, stream, status, n) for model, stream, status, text in bodies for n in needles if n in text]
    assert leaks == [], leaks
    for model, _, _, text in bodies:
        if model != "expertmux/auto":
            assert model in text, (model, text)  # the message names the expert instead
    # the operator still gets the whole story: the log and the ledger keep the address
    assert app.state.service.ledger.flush(10)
    with Session(app.state.service.ledger.engine) as s:
        errors = [a.error or "" for a in s.scalars(select(AttemptRow))]
        requests = s.scalars(select(RequestRow)).all()
    assert len(requests) == len(bodies)
    assert any(urls[-1] in e for e in errors), "connection failures keep their address in the ledger"
    assert any(SECRET in e for e in errors), "upstream bodies are kept for the operator"
    assert urls[-1] in caplog.text


def test_the_error_mapping_hides_addresses_an_error_forgot(leaky_app):
    """Defence in depth: an error built with the address in its message still does not leak it."""
    from core.errors import ExpertError

    url, app, urls, names = leaky_app
    service = app.state.service
    original = service._route

    def leaking_route(*args, **kwargs):
        raise ExpertError(f"careless message naming {urls[0]}/v1 and {urls[3]}/v1")

    service._route = leaking_route
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json={"model": "e-500", "messages": HI}, timeout=10)
    finally:
        service._route = original
    assert r.status_code == 502
    assert not [n for n in _needles(urls) if n in r.text], r.text
