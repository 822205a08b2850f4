"""Every expert call, async and streaming, with the expert's timeout.

Experts behind an OpenAI-compatible base URL (llama.cpp, vLLM, R2R, remote ``endpoint``) are
called directly over a pooled HTTP client (``experts.openai_http``): the request needs no
translation and litellm's per-call work was most of the proxy's added latency. Every other
provider goes through litellm, which translates the OpenAI request for it. ``transport`` in an
expert's config forces either path.

litellm is imported on first use, not at ``import experts``: the proxy must start fast and the
CLI must not pay for it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from core.errors import ExpertError, ExpertRateLimitedError, ExpertTimeoutError, InvalidRequestError
from experts import openai_http
from experts.registry import Expert

_litellm = None


def _lib():
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        litellm.drop_params = True  # experts differ in what they accept; drop what one does not
        _litellm = litellm
    return _litellm


def warm_up() -> None:
    """Import litellm ahead of the first request (at service start-up)."""
    _lib()


def uses_http(expert: Expert) -> bool:
    """True when calls to this expert go straight to its OpenAI-compatible server."""
    transport = expert.config.transport
    if transport == "auto":
        return bool(expert.backend.api_base) and expert.backend.litellm_provider == "openai"
    return transport == "http"


async def aclose() -> None:
    """Close pooled upstream connections (service shutdown)."""
    await openai_http.aclose()


def _call_args(expert: Expert, payload: dict[str, Any], stream: bool) -> dict[str, Any]:
    backend = expert.backend
    provider = backend.litellm_provider
    args: dict[str, Any] = {
        **payload,
        "model": f"{provider}/{backend.model_id}" if provider else backend.model_id,
        "stream": stream,
        "timeout": expert.config.timeout_s,
        "num_retries": 0,  # fallbacks are the router's job, not litellm's
    }
    if backend.api_base:
        args["api_base"] = backend.api_base
        args["api_key"] = backend.api_key
    elif backend.api_key != "not-needed":
        args["api_key"] = backend.api_key
    if stream:
        args["stream_options"] = {"include_usage": True}
    return args


def map_error(expert: Expert, exc: Exception) -> Exception:
    """Translate litellm/httpx failures into the expertmux error tree. litellm's messages carry
    the provider's URL and response: they go to ``detail`` (log and ledger), not to the client."""
    lib = _lib()
    name = expert.name
    detail = f"{openai_http.where(expert)}: {_short(exc)}"
    if isinstance(exc, lib.Timeout):
        return ExpertTimeoutError(f"expert {name!r} timed out after {expert.config.timeout_s:g}s", expert=name, detail=detail)
    if isinstance(exc, lib.RateLimitError):
        return ExpertRateLimitedError(f"expert {name!r} is rate limited", expert=name, detail=detail)
    if isinstance(exc, lib.APIConnectionError) or "Connection error" in str(exc):
        return ExpertError(f"expert {name!r} is unreachable (connection refused or dropped)", expert=name, detail=detail)
    if isinstance(exc, (lib.ContextWindowExceededError, lib.BadRequestError)):
        return InvalidRequestError(f"expert {name!r} rejected the request: {openai_http.scrub(_short(exc), expert)}",
                                   detail=detail)
    return ExpertError(f"expert {name!r} failed", expert=name, detail=detail)


def _short(exc: Exception) -> str:
    text = str(exc).replace("litellm.", "")
    return text if len(text) < 400 else text[:400] + "…"


async def complete(expert: Expert, payload: dict[str, Any]) -> dict[str, Any]:
    """Non-streaming completion; returns the OpenAI response as a dict."""
    if uses_http(expert):
        return await openai_http.complete(expert, payload)
    lib = _lib()
    try:
        resp = await lib.acompletion(**_call_args(expert, payload, stream=False))
    except Exception as exc:
        raise map_error(expert, exc) from exc
    return _openai_shape(resp.model_dump(exclude_none=True))


def stream(expert: Expert, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Streaming completion: yields OpenAI chunk dicts. Errors before the first chunk raise the
    mapped error (so the caller can fall back); later errors raise it mid-stream. Closing the
    iterator closes the upstream connection's stream."""
    return openai_http.stream(expert, payload) if uses_http(expert) else _litellm_stream(expert, payload)


async def _litellm_stream(expert: Expert, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    lib = _lib()
    try:
        resp = await lib.acompletion(**_call_args(expert, payload, stream=True))
    except Exception as exc:
        raise map_error(expert, exc) from exc
    try:
        async for chunk in resp:
            yield _openai_shape(chunk.model_dump(exclude_none=True))
    except Exception as exc:
        raise map_error(expert, exc) from exc


def _openai_shape(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop litellm's own bookkeeping fields so clients see the plain OpenAI schema."""
    obj.pop("provider_specific_fields", None)
    for choice in obj.get("choices") or ():
        choice.pop("provider_specific_fields", None)
        for key in ("message", "delta"):
            part = choice.get(key)
            if isinstance(part, dict):
                part.pop("provider_specific_fields", None)
    return obj


def count_tokens(expert: Expert, *, messages: list[dict] | None = None, text: str | None = None) -> int:
    """Token count for when a backend's stream omits usage (litellm's tokenizer for the model)."""
    lib = _lib()
    try:
        if messages is not None:
            return int(lib.token_counter(model=expert.backend.model_id, messages=messages))
        return int(lib.token_counter(model=expert.backend.model_id, text=text or ""))
    except Exception:
        chars = sum(len(str(m.get("content") or "")) for m in messages or []) if messages is not None else len(text or "")
        return max(1, chars // 4)
