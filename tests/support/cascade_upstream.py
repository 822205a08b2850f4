"""A scriptable OpenAI-compatible expert that answers with token logprobs (cascade tests).

The answer and the logprob of its first token are set per test (``answer``, ``first_logprob``);
with ``logprobs: true`` in the request the response carries ``choices[0].logprobs.content`` with
top alternatives, as llama.cpp and OpenAI send them. Streams word by word when asked to stream.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route


@dataclass
class Scripted:
    answer: str = "42"
    first_logprob: float = -0.01  # the model's confidence in its answer's first token
    fail_status: int | None = None
    calls: list[dict] = field(default_factory=list)

    def logprobs(self) -> dict:
        words = self.answer.split(" ")
        content = []
        for i, w in enumerate(words):
            lp = self.first_logprob if i == 0 else -0.05
            content.append({"token": w if i == 0 else " " + w, "logprob": lp,
                            "top_logprobs": [{"token": w, "logprob": lp}, {"token": "7", "logprob": -4.0}]})
        return {"content": content}


def make_app(s: Scripted) -> Starlette:
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}]})

    async def chat(request: Request):
        body = await request.json()
        s.calls.append(body)
        if s.fail_status:
            return JSONResponse({"error": {"message": "upstream failure", "type": "server_error"}}, status_code=s.fail_status)
        words = s.answer.split(" ")
        usage = {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 9 + len(words)}
        base = {"id": "chatcmpl-scripted", "created": int(time.time()), "model": "fake-model"}
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": s.answer}}
        if body.get("logprobs"):
            choice["logprobs"] = s.logprobs()
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [choice]})

        async def events():
            for i, w in enumerate(words):
                delta = {"content": w if i == 0 else " " + w, **({"role": "assistant"} if i == 0 else {})}
                yield "data: " + json.dumps({**base, "object": "chat.completion.chunk",
                                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}) + "\n\n"
            yield "data: " + json.dumps({**base, "object": "chat.completion.chunk", "usage": usage,
                                         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
