"""What one R2R answer cost: both models' token counts, the LLM's share, a price for the mix.

Token accounting per model:

- SLM: input = its prompt; output = every position (it decodes each one, including the ones the
  router hands to the LLM);
- LLM: input = its prompt (only if it was asked at all) + the transcript tokens it read that the
  SLM wrote (catch-up); output = the tokens it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from experts.r2r.engine import GenerationStats


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens."""

    slm_input: float = 0.0
    slm_output: float = 0.0
    llm_input: float = 0.0
    llm_output: float = 0.0


def usage(stats: GenerationStats, prices: Prices, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI ``usage`` plus the R2R fields (the proxy records the non-standard ones)."""
    slm_in = stats.slm.prompt_tokens
    slm_out = stats.tokens
    llm_in = stats.llm.prompt_tokens + max(0, stats.llm.generated_evaluated - stats.llm_tokens)
    llm_out = stats.llm_tokens
    cost = (slm_in * prices.slm_input + slm_out * prices.slm_output + llm_in * prices.llm_input
            + llm_out * prices.llm_output) / 1e6
    return {
        "prompt_tokens": stats.slm.prompt_tokens,
        "completion_tokens": stats.tokens,
        "total_tokens": stats.slm.prompt_tokens + stats.tokens,
        **details(stats, llm_in=llm_in, cost=cost),
        **(extra or {}),
    }


def details(stats: GenerationStats, *, llm_in: int, cost: float) -> dict[str, Any]:
    return {
        "slm_tokens": stats.slm_tokens,
        "llm_tokens": stats.llm_tokens,
        "llm_share": round(stats.llm_share, 4),
        "llm_input_tokens": llm_in,
        "retokenized_tokens": stats.slm.retokenized + stats.llm.retokenized,
        "cost_usd": cost,
        **stats.extra,
    }


STANDARD = ("prompt_tokens", "completion_tokens", "total_tokens")


def split(full: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(standard usage, R2R extras)."""
    return {k: full[k] for k in STANDARD}, {k: v for k, v in full.items() if k not in STANDARD}
