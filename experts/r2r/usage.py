"""What one R2R answer cost: both models' token counts, the LLM's share, a price for the mix.

Token accounting per model:

- SLM: input = its prompt; output = every position (it decodes each one, including the ones the
  router hands to the LLM); in remote mode also the chunk tokens dropped after a hand-over, which
  its server generated all the same;
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
    discarded = stats.extra.get("slm_discarded_tokens")
    slm_out = stats.tokens if discarded is None else stats.slm_tokens + int(discarded)
    # the LLM reads back its own tokens (all but the ones never evaluated) as output, like any decoder
    own_read = stats.llm_tokens - stats.llm.unevaluated
    llm_in = stats.llm.prompt_tokens + max(0, stats.llm.generated_evaluated - own_read)
    llm_out = stats.llm_tokens
    slm_cost = (slm_in * prices.slm_input + slm_out * prices.slm_output) / 1e6
    llm_cost = (llm_in * prices.llm_input + llm_out * prices.llm_output) / 1e6
    return {
        "prompt_tokens": stats.slm.prompt_tokens,
        "completion_tokens": stats.tokens,
        "total_tokens": stats.slm.prompt_tokens + stats.tokens,
        "slm_tokens": stats.slm_tokens,  # written by each model: slm_tokens + llm_tokens = completion_tokens
        "llm_tokens": stats.llm_tokens,
        "llm_share": round(stats.llm_share, 4),
        "slm_input_tokens": slm_in,  # what each model processed, as priced
        "slm_output_tokens": slm_out,
        "llm_input_tokens": llm_in,
        "llm_output_tokens": llm_out,
        "retokenized_tokens": stats.slm.retokenized + stats.llm.retokenized,
        "slm_cost_usd": slm_cost,
        "llm_cost_usd": llm_cost,
        "cost_usd": slm_cost + llm_cost,
        **stats.extra,
        **(extra or {}),
    }


STANDARD = ("prompt_tokens", "completion_tokens", "total_tokens")


def split(full: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(standard usage, R2R extras)."""
    return {k: full[k] for k in STANDARD}, {k: v for k, v in full.items() if k not in STANDARD}
