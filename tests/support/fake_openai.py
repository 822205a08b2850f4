"""A scriptable OpenAI-compatible upstream for tests: fixed answers, failures, slowness."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


@dataclass
class Behaviour:
    answer: str = "Hello from the fake expert."
    fail_status: int | None = None  # answer every chat call with this HTTP status
    delay_s: float = 0.0
    usage_in_stream: bool = True
    break_stream_after: int | None = None  # drop the connection after N chunks
    chunk_delay_s: float = 0.0
    extra_usage: dict = field(default_factory=dict)  # non-standard usage fields (e.g. R2R's token split)
    calls: list[dict] = field(default_factory=list)


def make_app(behaviour: Behaviour) -> Starlette:
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}]})

    async def chat(request: Request):
        body = await request.json()
        behaviour.calls.append(body)
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.fail_status:
            return JSONResponse({"error": {"message": "upstream failure", "type": "server_error"}}, status_code=behaviour.fail_status)
        words = behaviour.answer.split(" ")
        usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words), **behaviour.extra_usage}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model", "fake-model")}
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": behaviour.answer}}]})

        async def events():
            for i, word in enumerate(words):
                if behaviour.break_stream_after is not None and i >= behaviour.break_stream_after:
                    raise ConnectionError("upstream dropped the stream")
                if behaviour.chunk_delay_s:
                    await asyncio.sleep(behaviour.chunk_delay_s)
                delta = {"content": word if i == 0 else " " + word}
                if i == 0:
                    delta["role"] = "assistant"
                yield "data: " + json.dumps({**base, "object": "chat.completion.chunk",
                                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + "\n\n"
            finish = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            if behaviour.extra_usage:  # streams carry extras on the finishing chunk (see router/request/streaming.relay)
                finish["usage_details"] = behaviour.extra_usage
            yield "data: " + json.dumps(finish) + "\n\n"
            if behaviour.usage_in_stream:
                yield "data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
