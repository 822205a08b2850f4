"""One calibration call: ask an expert one prompt the way the proxy would, measure the answer.

The call goes through ``experts.client.complete`` (the proxy's own client: same transport, timeout
and error mapping), at temperature 0, asking for the answer's token logprobs. An expert that
rejects ``logprobs`` is asked again without them and never asked for them again in this run.
Tokens come from the response's usage (counted with litellm's tokenizer when a server omits it)
and cost is those real counts × the expert's configured prices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from core.errors import InvalidRequestError


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    output_tokens: int
    cost_usd: float
    latency_s: float
    logprobs: list[list[Any]] | None
    finish_reason: str | None


def token_logprobs(choice: dict[str, Any]) -> list[list[Any]] | None:
    """``[[token, logprob], ...]`` from an OpenAI chat choice (None when absent)."""
    content = ((choice.get("logprobs") or {}).get("content")) or None
    if not content:
        return None
    out = []
    for tok in content:
        lp = tok.get("logprob")
        out.append([tok.get("token", ""), None if lp is None else round(float(lp), 5)])
    return out


def upper_bound_cost(expert: Any, messages: list[dict[str, str]], max_tokens: int) -> float:
    """What the call can cost at most: a token is at least one byte of the prompt (plus the chat
    template's tokens), and the answer at most ``max_tokens``. The budget reserves this."""
    prompt_bytes = sum(len(str(m.get("content") or "").encode()) + 16 for m in messages) + 32
    return expert.cost_usd(prompt_bytes, max_tokens)


class Asker:
    """Calls experts for one run; remembers which experts refused logprobs."""

    def __init__(self, *, max_tokens: int, logprobs: bool = True) -> None:
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.no_logprobs: set[str] = set()

    def payload(self, expert: Any, messages: list[dict[str, str]], max_tokens: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens or self.max_tokens, "temperature": 0.0}
        if self.logprobs and expert.name not in self.no_logprobs:
            # top_logprobs too: llama.cpp's server returns none without it (it reads logprobs=top_logprobs)
            body["logprobs"], body["top_logprobs"] = True, 0
        return body

    async def ask(self, expert: Any, messages: list[dict[str, str]], max_tokens: int | None = None) -> Answer:
        """The expert's answer; raises the expertmux error of a failed call (ExpertError: the
        expert's fault; InvalidRequestError: the prompt's)."""
        from experts import client

        payload = self.payload(expert, messages, max_tokens)
        expert.in_flight += 1  # a live proxy's load-aware routing sees calibration work too
        t0 = time.perf_counter()
        try:
            try:
                resp = await client.complete(expert, payload)
            except InvalidRequestError:
                if "logprobs" not in payload:
                    raise
                self.no_logprobs.add(expert.name)  # e.g. a hosted API without logprobs: ask again without
                payload.pop("logprobs")
                payload.pop("top_logprobs", None)
                t0 = time.perf_counter()
                resp = await client.complete(expert, payload)
        finally:
            expert.in_flight -= 1
        latency = time.perf_counter() - t0
        choice = (resp.get("choices") or [{}])[0]
        text = (choice.get("message") or {}).get("content") or ""
        usage = {**(resp.get("usage") or {}), **(resp.get("usage_details") or {})}
        pt = int(usage.get("prompt_tokens") or 0) or client.count_tokens(expert, messages=messages)
        ct = int(usage.get("completion_tokens") or 0) or (client.count_tokens(expert, text=text) if text else 0)
        cost = expert.cost_usd(pt, ct)
        if isinstance(usage.get("cost_usd"), int | float):  # a backend pricing its own mix of models (R2R)
            cost = float(usage["cost_usd"])
        return Answer(text=text, prompt_tokens=pt, output_tokens=ct, cost_usd=cost, latency_s=latency,
                      logprobs=token_logprobs(choice), finish_reason=choice.get("finish_reason"))
