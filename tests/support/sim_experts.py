"""Simulated experts of known per-skill accuracy: an in-process OpenAI-compatible upstream.

Each simulated expert knows the graded prompts (prompt → skill and a right answer). It answers a
prompt right when a hash of (expert, prompt) falls below its accuracy for the prompt's skill, so
its outcomes are fixed per prompt (a rerun or a second run gets the same answer) and the truth of
every cell is known to the test (``correct``). It counts calls per prompt, can hold requests after
a number of calls until released (to kill a client mid-run deterministically), and returns token
logprobs when asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

WRONG = "zzz"  # scores 0 under every grader the simulations use


def right_answer(item) -> str:
    """An answer that the item's grader scores 1 (numeric, contains, multiple_choice, exact, normalised)."""
    return str(item.reference)


@dataclass
class SimExpert:
    name: str
    accuracy: dict[str, float]  # skill → probability of a right answer
    answers: dict[str, tuple[str, str]]  # prompt text → (skill, right answer)
    calls: Counter = field(default_factory=Counter)  # prompt → calls
    hold_after: int | None = None  # calls beyond this wait until ``release`` is set
    release: threading.Event = field(default_factory=threading.Event)
    fail_status: int | None = None

    def correct(self, prompt: str) -> bool:
        skill, _ = self.answers[prompt]
        h = int(hashlib.sha256(f"{self.name}\x1f{prompt}".encode()).hexdigest()[:12], 16) / 16**12
        return h < self.accuracy.get(skill, 0.0)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


def make_app(expert: SimExpert) -> Starlette:
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": expert.name, "object": "model", "owned_by": "sim"}]})

    async def chat(request: Request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        expert.calls[prompt] += 1
        if expert.hold_after is not None and expert.total_calls > expert.hold_after:
            while not expert.release.is_set():
                await asyncio.sleep(0.01)
        if expert.fail_status:
            return JSONResponse({"error": {"message": "simulated outage"}}, status_code=expert.fail_status)
        if prompt not in expert.answers:
            return JSONResponse({"error": {"message": f"unknown prompt {prompt[:40]!r}"}}, status_code=400)
        ok = expert.correct(prompt)
        text = expert.answers[prompt][1] if ok else WRONG
        tokens = text.split() or [text]
        usage = {"prompt_tokens": len(prompt.split()) + 5, "completion_tokens": len(tokens),
                 "total_tokens": len(prompt.split()) + 5 + len(tokens)}
        choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        if body.get("logprobs"):
            lp = -0.05 if ok else -2.5
            choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []} for t in tokens]}
        return JSONResponse({"id": "chatcmpl-sim", "object": "chat.completion", "created": int(time.time()),
                             "model": expert.name, "usage": usage, "choices": [choice]})

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/chat/completions", chat, methods=["POST"])])
