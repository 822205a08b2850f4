"""Direct calls to OpenAI-compatible expert servers over one pooled HTTP client.

llama.cpp, vLLM, the R2R server and remote experts with an ``endpoint`` all speak the OpenAI
chat API, so a call to them needs no provider translation: the request is forwarded as it is
and the response relayed as it came. Going through litellm for these cost about 4 ms of CPU per
call (request building, its logging object, a per-call cost lookup, response re-serialisation),
most of what the proxy added to a request; this path spends a fraction of that. Providers with
their own APIs (``anthropic/…``, ``bedrock/…``) still go through litellm (``experts.client``).

One ``httpx.AsyncClient`` per event loop keeps connections alive across requests. Errors map to
the same expertmux errors as the litellm path, so fallbacks and breakers behave alike.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from experts.registry import Expert
from router.errors import ExpertError, ExpertRateLimitedError, ExpertTimeoutError, InvalidRequestError

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = weakref.WeakKeyDictionary()
_LIMITS = httpx.Limits(max_connections=1024, max_keepalive_connections=256, keepalive_expiry=30.0)


def _http() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = httpx.AsyncClient(limits=_LIMITS, timeout=None, follow_redirects=False)
    return client


async def aclose() -> None:
    """Close this event loop's pooled connections (service shutdown)."""
    client = _clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


def _request(expert: Expert, payload: dict[str, Any], stream: bool) -> tuple[str, bytes, dict[str, str], httpx.Timeout]:
    backend = expert.backend
    body: dict[str, Any] = {**payload, "model": backend.model_id}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    headers = {"content-type": "application/json"}
    if backend.api_key and backend.api_key != "not-needed":
        headers["authorization"] = f"Bearer {backend.api_key}"
    t = expert.config.timeout_s
    return f"{backend.api_base}/chat/completions", orjson.dumps(body), headers, httpx.Timeout(t, connect=min(t, 10.0))


def _upstream_message(content: bytes) -> str:
    """The error message an OpenAI-compatible server put in its body, else the body itself."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        text = content.decode("utf-8", errors="replace").strip()
    else:
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            text = str(err.get("message") or err)
        elif err:
            text = str(err)
        else:
            text = str(data.get("detail") or data) if isinstance(data, dict) else str(data)
    return text if len(text) < 400 else text[:400] + "…"


def status_error(expert: Expert, status: int, content: bytes) -> Exception:
    """The expertmux error for an upstream's non-2xx answer."""
    name, message = expert.name, _upstream_message(content)
    if status == 429:
        return ExpertRateLimitedError(f"expert {name!r} is rate limited: {message}", expert=name)
    if status in (400, 413, 422):  # the request's fault (e.g. longer than the expert's context)
        return InvalidRequestError(f"expert {name!r} rejected the request: {message}")
    return ExpertError(f"expert {name!r} failed with HTTP {status}: {message}", expert=name)


def transport_error(expert: Expert, exc: BaseException) -> Exception:
    name = expert.name
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ExpertTimeoutError(f"expert {name!r} timed out after {expert.config.timeout_s:g}s", expert=name)
    if isinstance(exc, httpx.TransportError):
        where = expert.backend.api_base or expert.config.model
        return ExpertError(f"expert {name!r} is unreachable at {where} (connection refused or dropped)", expert=name)
    return ExpertError(f"expert {name!r} failed: {type(exc).__name__}: {exc}", expert=name)


async def complete(expert: Expert, payload: dict[str, Any]) -> dict[str, Any]:
    url, body, headers, timeout = _request(expert, payload, stream=False)
    try:
        async with asyncio.timeout(expert.config.timeout_s):  # httpx's timeouts are per read, this one is total
            resp = await _http().post(url, content=body, headers=headers, timeout=timeout)
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transport_error(expert, exc) from exc
    if resp.status_code != 200:
        raise status_error(expert, resp.status_code, resp.content)
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError as exc:
        raise ExpertError(f"expert {expert.name!r} answered with invalid JSON", expert=expert.name) from exc
    if not isinstance(data, dict) or "choices" not in data:
        raise ExpertError(f"expert {expert.name!r} answered without 'choices': {_upstream_message(resp.content)}",
                          expert=expert.name)
    return data


async def stream(expert: Expert, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events parsed into chunk dicts. An error before the first chunk raises (so the
    caller can fall back); an error event or a dropped connection later raises mid-stream."""
    url, body, headers, timeout = _request(expert, payload, stream=True)
    request = _http().build_request("POST", url, content=body, headers=headers, timeout=timeout)
    try:
        resp = await _http().send(request, stream=True)
    except httpx.HTTPError as exc:
        raise transport_error(expert, exc) from exc
    try:
        if resp.status_code != 200:
            raise status_error(expert, resp.status_code, await resp.aread())
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, "event:" lines
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise ExpertError(f"expert {expert.name!r} sent a malformed stream event", expert=expert.name) from exc
            if isinstance(chunk, dict) and chunk.get("error"):
                raise ExpertError(f"expert {expert.name!r} failed mid-stream: {_upstream_message(data.encode())}",
                                  expert=expert.name)
            yield chunk
    except httpx.HTTPError as exc:
        raise transport_error(expert, exc) from exc
    finally:
        await resp.aclose()
