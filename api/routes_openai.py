"""OpenAI-compatible routes. Thin: read the service from ``app.state``, call it, shape the response."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from api.errors import error_body
from api.responses import json_response
from core.errors import RequestTooLargeError, ShuttingDownError

router = APIRouter()

_NUMBER = {"type": "number", "minimum": 0}
_ROUTING_OPTIONS = {
    "lambda": {**_NUMBER, "description": "willingness to pay: quality points per USD"},
    "max_cost_usd": {**_NUMBER, "description": "hard limit on the expected cost of the call"},
    "allowed_experts": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "max_params_b": {**_NUMBER, "description": "largest expert allowed, billions of parameters"},
    "size_weight": {**_NUMBER, "description": "quality points per 10x parameters"},
    "latency_weight": {**_NUMBER, "description": "quality points per second of expected latency"},
    "recency_weight": {**_NUMBER, "description": "quality points per year since the expert's release"},
    "max_latency_s": {**_NUMBER, "description": "only experts expected to answer within this many seconds"},
    "min_release_date": {"type": "string", "format": "date", "description": "only experts released on or after it"},
}
_CHAT_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "required": ["model", "messages"], "properties": {
            "model": {"type": "string", "description": "expertmux/auto, expertmux/<policy> or an expert name"},
            "messages": {"type": "array", "items": {"type": "object"}},
            "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer"},
            "expertmux": {"type": "object", "description": "per-request routing options (README: Routing options)",
                          "properties": _ROUTING_OPTIONS},
        }}}},
    }
}


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() or None if auth.lower().startswith("bearer ") else None


def _body_reader(request: Request):
    """Reads the body inside the service, so an oversized request still gets its ledger row."""
    limit = request.app.state.settings.max_body_bytes

    async def read() -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        # Read piece by piece: a chunked body with no Content-Length is refused as soon as it
        # passes the limit, never buffered whole.
        parts: list[bytes] = []
        size = 0
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise RequestTooLargeError(f"request body exceeds the limit of {limit} bytes")
            parts.append(part)
        return b"".join(parts)

    return read


@router.post("/v1/chat/completions", openapi_extra=_CHAT_SCHEMA)
async def chat_completions(request: Request):
    service = request.app.state.service
    try:
        outcome = await service.chat(_body_reader(request), api_key=_bearer(request))
    except asyncio.CancelledError:
        if not service.draining:
            raise
        # Shutdown grace ran out: answer cleanly (the ledger row says the same) rather than drop.
        exc = ShuttingDownError("the server shut down before the answer was ready; retry the request")
        return json_response(error_body(exc.message, error_type=exc.error_type, code=exc.code), status_code=exc.status)
    if outcome.stream is not None:
        return StreamingResponse(outcome.stream, media_type="text/event-stream",
                                 headers={**outcome.headers, "cache-control": "no-cache"})
    return json_response(outcome.body, headers=outcome.headers)


@router.get("/v1/models")
async def list_models(request: Request):
    created = request.app.state.started_at
    data = [{"id": m, "object": "model", "created": created, "owned_by": "expertmux"}
            for m in request.app.state.service.model_ids()]
    return json_response({"object": "list", "data": data})
