"""One R2R request end to end, independent of HTTP: messages in, text pieces and usage out.

The engine is not thread-safe (one KV cache per model), so generations take turns behind a
lock; the server runs them in worker threads and relays pieces as they come. Pieces are decoded
incrementally (a token may end inside a UTF-8 character) and held back while they could be the
start of a stop string.
"""

from __future__ import annotations

import codecs
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from experts.r2r.engine import LLM, SLM, GenerationStats
from experts.r2r.routers import Router
from experts.r2r.usage import Prices, usage


class StopScanner:
    """Finds stop strings in streamed text; ``feed`` returns what is safe to emit."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return buf[:min(hits)]
        keep = 0
        for s in self.stops:  # longest tail of buf that is a prefix of a stop string
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep] if keep else buf

    def flush(self) -> str:
        out, self._held = ("" if self.stopped else self._held), ""
        return out


@dataclass(slots=True)
class Outcome:
    text: str = ""
    finish_reason: str = "length"
    usage: dict[str, Any] = field(default_factory=dict)
    stats: GenerationStats | None = None


class R2RService:
    """The pair, its router and prices; ``run`` serves one request."""

    def __init__(self, engine, router: Router, prices: Prices, *, default_max_tokens: int = 256) -> None:
        self.engine = engine
        self.router = router
        self.prices = prices
        self.default_max_tokens = default_max_tokens
        self._lock = threading.Lock()

    def check(self, messages: list[dict[str, Any]]) -> None:
        """Refuse a prompt either model cannot hold before a stream starts (a 400, not an error event).

        Tokenising reads only the vocabulary, so it needs no lock."""
        prompt_ids = getattr(self.engine, "prompt_ids", None)
        if prompt_ids is not None:
            for which in (SLM, LLM):
                prompt_ids(which, messages)

    def run(self, messages: list[dict[str, Any]], *, max_tokens: int | None, stop: list[str] | None = None,
            on_piece: Callable[[str], None] | None = None, cancelled: Callable[[], bool] = lambda: False) -> Outcome:
        """Generate (blocking); ``on_piece`` receives text as it becomes final."""
        out = Outcome()
        pieces: list[str] = []
        scanner = StopScanner(stop or [])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stats = GenerationStats()

        def emit(text: str) -> None:
            if text:
                pieces.append(text)
                if on_piece is not None:
                    on_piece(text)

        with self._lock:
            gen: Iterator = self.engine.generate(messages, router=self.router,
                                                 max_tokens=max_tokens or self.default_max_tokens, stats=stats)
            try:
                for step in gen:
                    emit(scanner.feed(decoder.decode(step.piece)))
                    if scanner.stopped or cancelled():
                        break
            finally:
                gen.close()
        if scanner.stopped:
            stats.finish_reason = "stop"
        else:
            emit(scanner.feed(decoder.decode(b"", final=True)) + scanner.flush())
        out.text, out.finish_reason, out.stats = "".join(pieces), stats.finish_reason, stats
        out.usage = usage(stats, self.prices, extra=self.router.describe())
        return out
