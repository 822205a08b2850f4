"""Token-level generation over two in-process models: the SLM proposes, the router decides.

At every position the SLM (its cache synced with the transcript) proposes its greedy token;
the router reads the proposal and either keeps it or lets the LLM write this position (greedy).
The LLM reads the prompt only when first asked, and after that only the text written since its
last turn (``Track.sync``); the SLM reads every token once. Positions never switch model inside a
UTF-8 character, so both models always see whole characters.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import ConfigError, PromptTooLongError
from experts.r2r.features import TOP_K, Proposal, top_logprobs_from_logits
from experts.r2r.lm import ContextFullError, TokenLM
from experts.r2r.prompts import render
from experts.r2r.routers import Router
from experts.r2r.track import Track, TrackStats

SLM, LLM = "slm", "llm"


@dataclass(slots=True)
class Step:
    writer: str  # "slm" | "llm"
    token: int
    piece: bytes
    proposal: Proposal | None = None  # the SLM's proposal at this position (None for single-model runs)


@dataclass(slots=True)
class GenerationStats:
    slm_tokens: int = 0
    llm_tokens: int = 0
    finish_reason: str = "length"
    seconds: float = 0.0
    shared_vocab: bool = False
    slm: TrackStats = field(default_factory=TrackStats)
    llm: TrackStats = field(default_factory=TrackStats)
    router: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific counters (remote calls …)

    @property
    def tokens(self) -> int:
        return self.slm_tokens + self.llm_tokens

    @property
    def llm_share(self) -> float:
        return self.llm_tokens / self.tokens if self.tokens else 0.0


def incomplete_utf8(text: bytes | bytearray) -> bool:
    """True if ``text`` ends inside a multi-byte UTF-8 character."""
    for back in range(1, min(4, len(text)) + 1):
        b = text[-back]
        if b & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return need > back
    return False


class R2REngine:
    """Two models and their prompt formats; ``generate`` runs one request."""

    def __init__(self, slm: TokenLM, llm: TokenLM, *, slm_format: str, llm_format: str, max_backoff: int = 4,
                 top_k: int = TOP_K) -> None:
        self.slm, self.llm = slm, llm
        self.slm_format, self.llm_format = slm_format, llm_format
        self.max_backoff = max_backoff
        self.top_k = top_k
        self.shared_vocab = slm.vocab_fingerprint() == llm.vocab_fingerprint()

    # -- prompts -----------------------------------------------------------------------------------
    def prompt_ids(self, which: str, messages: list[dict[str, Any]]) -> list[int]:
        lm, fmt = (self.slm, self.slm_format) if which == SLM else (self.llm, self.llm_format)
        ids = lm.tokenize(render(fmt, messages).encode(), bos=True, special=True)
        if len(ids) >= lm.n_ctx:
            raise PromptTooLongError(f"prompt has {len(ids)} tokens for {lm.name}; its context holds {lm.n_ctx}",
                                     param="messages")
        return ids

    # -- one request ------------------------------------------------------------------------------
    def generate(self, messages: list[dict[str, Any]], *, router: Router, max_tokens: int,
                 stats: GenerationStats | None = None) -> Generator[Step, None, GenerationStats]:
        """Yield each generated token; the generator's return value (and ``stats``) hold the totals."""
        if router.needs_hidden and not self.slm.has_hidden:
            raise ConfigError("this router reads the SLM's hidden states: load the SLM with hidden=True")
        stats = stats if stats is not None else GenerationStats()
        stats.shared_vocab, stats.router = self.shared_vocab, router.describe()
        t0 = time.perf_counter()
        router.reset()
        slm_t = Track(self.slm, max_backoff=self.max_backoff)
        llm_t = Track(self.llm, max_backoff=self.max_backoff)
        slm_t.start(self.prompt_ids(SLM, messages))
        text = bytearray()
        shared = [] if self.shared_vocab else None
        last_writer = SLM
        try:
            for pos in range(max_tokens):
                slm_t.sync(bytes(text), shared)
                prop = self._propose(pos, router.needs_hidden)
                if incomplete_utf8(text):
                    to_llm = last_writer == LLM  # finish the character with the model that began it
                else:
                    to_llm = router.hand_over(prop)
                if to_llm:
                    if not llm_t.started:
                        llm_t.start(self.prompt_ids(LLM, messages))
                    llm_t.sync(bytes(text), shared)
                    token = int(np.argmax(self.llm.logits()))
                    piece, eog, track = self.llm.piece(token), self.llm.is_eog(token), llm_t
                else:
                    token, piece, eog, track = prop.token, prop.piece, prop.is_eog, slm_t
                if eog:
                    stats.finish_reason = "stop"
                    break
                track.push(token, piece)
                text += piece
                if shared is not None:
                    shared.append(token)
                last_writer = LLM if to_llm else SLM
                if to_llm:
                    stats.llm_tokens += 1
                else:
                    stats.slm_tokens += 1
                yield Step(last_writer, token, piece, prop)
        except ContextFullError:
            stats.finish_reason = "length"
        finally:
            if llm_t.started:
                llm_t.stats.unevaluated = max(0, len(llm_t.ids) - llm_t.n_cached)
            stats.slm, stats.llm = slm_t.stats, llm_t.stats
            stats.seconds = time.perf_counter() - t0
        return stats

    def _propose(self, position: int, with_hidden: bool) -> Proposal:
        ids, lps = top_logprobs_from_logits(self.slm.logits(), self.top_k)
        token = int(ids[0])
        return Proposal(token=token, piece=self.slm.piece(token), is_eog=self.slm.is_eog(token), position=position,
                        top_logprobs=lps, hidden=self.slm.hidden() if with_hidden else None)

    def generate_single(self, which: str, messages: list[dict[str, Any]], *, max_tokens: int,
                        stats: GenerationStats | None = None) -> Generator[Step, None, GenerationStats]:
        """One model alone, greedy (the SLM-only and LLM-only references)."""
        stats = stats if stats is not None else GenerationStats()
        stats.router = {"router": f"{which}-only"}
        t0 = time.perf_counter()
        lm = self.slm if which == SLM else self.llm
        track = Track(lm, max_backoff=self.max_backoff)
        track.start(self.prompt_ids(which, messages))
        try:
            for _ in range(max_tokens):
                track.sync(b"", [])  # evaluates the last pushed token, if any
                token = int(np.argmax(lm.logits()))
                if lm.is_eog(token):
                    stats.finish_reason = "stop"
                    break
                piece = lm.piece(token)
                track.push(token, piece)
                if which == SLM:
                    stats.slm_tokens += 1
                else:
                    stats.llm_tokens += 1
                yield Step(which, token, piece)
        except ContextFullError:
            stats.finish_reason = "length"
        finally:
            setattr(stats, which, track.stats)
            stats.seconds = time.perf_counter() - t0
        return stats
