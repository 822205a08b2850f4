"""Direct calls to OpenAI-compatible expert servers over one pooled HTTP client.

llama.cpp, vLLM, the R2R server and remote experts with an ``endpoint`` all speak the OpenAI
chat API, so a call to them needs no provider translation: the request is forwarded as it is
and the response relayed as it came. Going through litellm for these cost about 4 ms of CPU per
call (request building, its logging object, a per-call cost lookup, response re-serialisation),
most of what the proxy added to a request; this path spends a fraction of that. Providers with
their own APIs (``anthropic/…``, ``bedrock/…``) still go through litellm (``experts.client``).

One ``httpx.AsyncClient`` per event loop keeps connections alive across requests. Errors map to
the same expertmux errors as the litellm path, so fallbacks and breakers behave alike. An error's
``message`` (what the client reads) names the expert, never its address: where it runs and what
its server said go to ``detail``, which only the log and the ledger see. Where the upstream's
words help the client (why a request was rejected), they pass through ``scrub`` first.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from core.errors import ExpertError, ExpertRateLimitedError, ExpertTimeoutError, InvalidRequestError
from experts.registry import Expert

# One connection per httpx client, and a free list of idle clients. httpcore's pool looks at
# every connection it holds (a poll() per idle one) each time a request asks for one, and with
# several connections per pool requests queued behind one another: at 100 concurrent requests on
# a pool of 8 connections, 1 % of the upstream calls took 2–8 s while the median took 0.2 s
# (benchmarks/proxy_overhead.py, docs/reliability.md). A pool of one connection has nothing to
# scan and nothing to queue behind; the free list hands out the most recently used (warm) one.
_LIMITS = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=30.0)


_ssl_context: ssl.SSLContext | None = None


class _Clients:
    """The event loop's single-connection clients and which of them are idle."""

    def __init__(self) -> None:
        self.clients: list[httpx.AsyncClient] = []
        self.idle: list[int] = []

    def acquire(self) -> int:
        """An idle client (the most recently released), or a new one if all are busy."""
        if self.idle:
            return self.idle.pop()
        global _ssl_context
        if _ssl_context is None:  # loading the CA bundle takes tens of ms: once, not once per client
            _ssl_context = httpx.create_ssl_context()
        self.clients.append(httpx.AsyncClient(limits=_LIMITS, timeout=None, follow_redirects=False, verify=_ssl_context))
        return len(self.clients) - 1

    def release(self, i: int) -> None:
        self.idle.append(i)


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clients] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def _lease() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with its own connection for one upstream call."""
    loop = asyncio.get_running_loop()
    clients = _clients.get(loop)
    if clients is None:
        clients = _clients[loop] = _Clients()
    i = clients.acquire()
    try:
        yield clients.clients[i]
    finally:
        clients.release(i)


async def aclose() -> None:
    """Close this event loop's pooled connections (service shutdown)."""
    clients = _clients.pop(asyncio.get_running_loop(), None)
    for client in clients.clients if clients is not None else ():
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


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>`]+")
_HOST_PORT = re.compile(r"\b(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|\[[0-9a-fA-F:]+\])(?::\d{1,5})?\b")
_SECRET = re.compile(r"\b(?:sk|pk|rk|key|tok)-[A-Za-z0-9_\-]{6,}|(?i:(?<=[?&])(?:api[_-]?key|key|token|access_token|sig)=[^&\s'\"]+)")


def scrub(text: str, expert: Expert) -> str:
    """``text`` without any address or secret: the expert's base URL, host and key, any URL,
    IP address or ``localhost`` with its port, and key-shaped tokens."""
    backend = expert.backend
    for value in (backend.api_base, backend.api_key if backend.api_key != "not-needed" else None):
        if value:
            text = text.replace(value, "<hidden>")
    if backend.api_base:
        netloc = httpx.URL(backend.api_base).netloc.decode()
        for part in {netloc, netloc.rsplit("@", 1)[-1]}:
            if part:
                text = text.replace(part, "<hidden>")
    text = _URL.sub("<address>", text)
    text = _SECRET.sub("<secret>", text)
    return _HOST_PORT.sub("<address>", text)


def where(expert: Expert) -> str:
    """The expert's address, for the operator's ``detail`` only."""
    return expert.backend.api_base or expert.config.model


def status_error(expert: Expert, status: int, content: bytes) -> Exception:
    """The expertmux error for an upstream's non-2xx answer."""
    name, message = expert.name, _upstream_message(content)
    detail = f"HTTP {status} from {where(expert)}: {message}"
    if status == 429:
        return ExpertRateLimitedError(f"expert {name!r} is rate limited", expert=name, detail=detail)
    if status in (400, 413, 422):  # the request's fault (e.g. longer than the expert's context)
        return InvalidRequestError(f"expert {name!r} rejected the request: {scrub(message, expert)}", detail=detail)
    return ExpertError(f"expert {name!r} failed with HTTP {status}", expert=name, detail=detail)


def transport_error(expert: Expert, exc: BaseException) -> Exception:
    name = expert.name
    detail = f"{where(expert)}: {type(exc).__name__}: {exc}"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ExpertTimeoutError(f"expert {name!r} timed out after {expert.config.timeout_s:g}s", expert=name, detail=detail)
    if isinstance(exc, httpx.TransportError):
        return ExpertError(f"expert {name!r} is unreachable (connection refused or dropped)", expert=name, detail=detail)
    return ExpertError(f"expert {name!r} failed", expert=name, detail=detail)


async def complete(expert: Expert, payload: dict[str, Any]) -> dict[str, Any]:
    url, body, headers, timeout = _request(expert, payload, stream=False)
    try:
        async with asyncio.timeout(expert.config.timeout_s), _lease() as http:  # httpx's timeouts are per read, this one is total
            resp = await http.post(url, content=body, headers=headers, timeout=timeout)
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transport_error(expert, exc) from exc
    if resp.status_code != 200:
        raise status_error(expert, resp.status_code, resp.content)
    try:
        data = orjson.loads(resp.content)
    except orjson.JSONDecodeError as exc:
        raise ExpertError(f"expert {expert.name!r} answered with invalid JSON", expert=expert.name,
                          detail=f"{where(expert)}: {_upstream_message(resp.content)}") from exc
    if not isinstance(data, dict) or "choices" not in data:
        raise ExpertError(f"expert {expert.name!r} answered without 'choices'", expert=expert.name,
                          detail=f"{where(expert)}: {_upstream_message(resp.content)}")
    return data


async def stream(expert: Expert, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Server-sent events parsed into chunk dicts. An error before the first chunk raises (so the
    caller can fall back); an error event or a dropped connection later raises mid-stream."""
    url, body, headers, timeout = _request(expert, payload, stream=True)
    async with _lease() as http:  # the slot is held until the stream is closed
        request = http.build_request("POST", url, content=body, headers=headers, timeout=timeout)
        try:
            resp = await http.send(request, stream=True)
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
                    raise ExpertError(f"expert {expert.name!r} sent a malformed stream event", expert=expert.name,
                                      detail=f"{where(expert)}: {data[:400]}") from exc
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise ExpertError(f"expert {expert.name!r} failed mid-stream", expert=expert.name,
                                      detail=f"{where(expert)}: {_upstream_message(data.encode())}")
                yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(expert, exc) from exc
        finally:
            await resp.aclose()
