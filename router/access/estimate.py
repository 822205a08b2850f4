"""The most a request can cost before it is sent: what a budget or token limit must reserve.

A reservation is only as good as its bound. If a request can be billed more than was reserved,
``N`` requests in flight can overspend by ``N`` times the difference; if every reservation is a
true maximum, spend stays within the limit whatever the concurrency. So the bound is built from
what the upstream will actually count:

- **prompt tokens**: a local llama.cpp expert's own template and tokenizer
  (``experts.tokenizer``) where it can render the request; otherwise the UTF-8 bytes of every
  text the chat template renders (a byte-level BPE token covers at least one byte; SentencePiece
  adds at most one per segment, which the per-message allowance covers), plus a fixed
  allowance per message (role markers) and per request (a default system prompt, the generation
  prompt), plus a flat allowance per image, audio or file part;
- **completion tokens**: ``max_tokens`` (always set for a limited key);
- **price**: each candidate's prices; an R2R expert bills two models, so both are counted.

Overestimating costs nothing but headroom near the limit: the reservation is released and the
real usage booked when the request ends.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from experts.registry import Expert

log = logging.getLogger("expertmux.access")

_TEXT_PARTS = ("text", "refusal")
_TEMPLATED_FIELDS = ("tools", "functions", "response_format", "tool_choice", "function_call")


@dataclass(frozen=True, slots=True)
class TokenBounds:
    """Allowances for what a chat template adds around the text (Settings ``reserve_*``)."""

    template_tokens: int = 64
    tokens_per_message: int = 8
    tokens_per_attachment: int = 2048


def _bytes(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode())
    return len(orjson.dumps(value))


def prompt_token_bound(payload: dict[str, Any], bounds: TokenBounds) -> int:
    """An upper bound on the prompt tokens of ``payload`` under any byte-level tokenizer and template."""
    total = bounds.template_tokens
    for message in payload.get("messages", ()):
        total += bounds.tokens_per_message
        for key, value in message.items():
            if key == "content" and isinstance(value, list):
                for part in value:
                    kind = part.get("type")
                    total += _bytes(part.get(kind)) if kind in _TEXT_PARTS else bounds.tokens_per_attachment
            elif key != "role":
                total += _bytes(value)  # content, name, tool_calls, tool_call_id: all rendered as text
    return total + sum(_bytes(payload.get(f)) for f in _TEMPLATED_FIELDS)


def max_cost_usd(expert: Expert, prompt_tokens: int, completion_tokens: int) -> float:
    """The dearest bill of one call. R2R runs two models: the small one reads the prompt and
    decodes every position (plus a dropped chunk in remote mode), the large one may read all
    of it and write every token."""
    cost = expert.cost_usd(prompt_tokens, completion_tokens)
    if expert.config.backend == "r2r":
        o = expert.config.r2r
        chunk = o.remote_chunk if o.mode == "remote" else 0
        slm = prompt_tokens * (o.slm_input_usd_per_mtok or 0) + (completion_tokens + chunk) * (o.slm_output_usd_per_mtok or 0)
        llm = (prompt_tokens + completion_tokens) * (o.llm_input_usd_per_mtok or 0) + completion_tokens * (o.llm_output_usd_per_mtok or 0)
        cost = max(cost, (slm + llm) / 1e6)
    return cost


class ReservationEstimator:
    """Bounds a request's cost and tokens over its candidate experts (thread-safe: called from
    the reservation's worker thread)."""

    def __init__(self, bounds: TokenBounds | None = None, *, data_dir: Path | None = None) -> None:
        self.bounds = bounds or TokenBounds()
        self.data_dir = data_dir
        self._counters: dict[str, Any] = {}
        self._lock = threading.Lock()

    def prompt_tokens(self, expert: Expert, payload: dict[str, Any]) -> int:
        estimate = prompt_token_bound(payload, self.bounds)
        counter = self._counter(expert)
        if counter is None:
            return estimate
        from experts.tokenizer import countable

        if not countable(payload):
            return estimate
        try:
            return counter.count(payload["messages"])
        except Exception as exc:  # a template that cannot render this request: the estimate holds
            log.warning("expert %s: local token count failed (%s); reserving the estimate", expert.name, exc)
            with self._lock:
                self._counters[expert.name] = None
            return estimate

    def bound(self, experts: Iterable[Expert], payload: dict[str, Any], max_completion_tokens: int) -> tuple[float, int]:
        """(max cost in USD, max tokens) over the candidates that may serve the request."""
        worst_cost, worst_tokens = 0.0, 0
        for expert in experts:
            prompt = self.prompt_tokens(expert, payload)
            worst_cost = max(worst_cost, max_cost_usd(expert, prompt, max_completion_tokens))
            worst_tokens = max(worst_tokens, prompt + max_completion_tokens)
        return worst_cost, worst_tokens

    def _counter(self, expert: Expert):
        if self.data_dir is None or expert.config.backend != "llamacpp":
            return None
        with self._lock:
            if expert.name not in self._counters:
                from experts.tokenizer import chat_counter

                self._counters[expert.name] = chat_counter(expert, data_dir=self.data_dir)
            return self._counters[expert.name]
