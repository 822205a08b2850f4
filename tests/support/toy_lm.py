"""A deterministic toy language model for the R2R engine's unit tests.

Its vocabulary is a list of byte strings (greedy longest-match tokenizer) and its logits are a
pure function of the text it has in its KV cache: it wants to write one of its ``targets`` after
the prompt (the first one the text so far is a prefix of) and puts its mass on the longest
vocabulary token that continues it (EOS once it is written or the text has left every target).
A cache that held the wrong tokens would therefore produce the wrong next token, and
``eval_log`` records every batch evaluated.
"""

from __future__ import annotations

import numpy as np

from experts.r2r.lm import TokenLM

EOS = 0


class ToyLM(TokenLM):
    def __init__(self, vocab: list[bytes], targets: list[bytes], *, name: str = "toy",
                 confidence: dict[int, float] | None = None, marker: bytes = b"Answer:") -> None:
        super().__init__()
        self.vocab = [b"<eos>"] + [v for v in vocab if v]
        self.targets = targets  # preferred first; the first one the text so far is a prefix of is followed
        self.name = name
        self.marker = marker
        self.confidence = confidence or {}  # position → logit of the chosen token (default 8)
        self.eval_log: list[list[int]] = []

    @property
    def n_vocab(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            best = max((t for t in range(1, len(self.vocab)) if text.startswith(self.vocab[t], i)),
                       key=lambda t: len(self.vocab[t]), default=None)
            if best is None:
                raise ValueError(f"{self.name}: cannot tokenize {text[i:]!r}")
            ids.append(best)
            i += len(self.vocab[best])
        return ids

    def piece(self, token: int) -> bytes:
        return b"" if token == EOS else self.vocab[token]

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def _truncate(self, n: int) -> None:
        pass  # the history list is the whole cache

    def _decode(self, tokens: list[int], n_past: int, all_logits: bool):
        self.eval_log.append(list(tokens))
        if not all_logits:
            return None
        before = self.history[:n_past]
        return np.stack([self._logits_after(before + tokens[: j + 1]) for j in range(len(tokens))])

    def generated(self, history: list[int] | None = None) -> bytes:
        text = b"".join(self.piece(t) for t in (self.history if history is None else history))
        return text.split(self.marker, 1)[1] if self.marker in text else b""

    def logits(self) -> np.ndarray:
        return self._logits_after(self.history)

    def _logits_after(self, history: list[int]) -> np.ndarray:
        done = self.generated(history)
        out = np.zeros(self.n_vocab, dtype=np.float32)
        n_generated = len(self.tokenize(done)) if done else 0
        target = next((t for t in self.targets if t.startswith(done)), None)
        if target is not None and len(done) < len(target):
            rest = target[len(done):]
            choice = max((t for t in range(1, self.n_vocab) if rest.startswith(self.vocab[t])),
                         key=lambda t: len(self.vocab[t]))
        else:
            choice = EOS
        out[choice] = self.confidence.get(n_generated, 8.0)
        return out


def words(*texts: bytes) -> list[bytes]:
    """Word-level vocabulary for ``texts`` (each word with its leading space) plus single bytes."""
    out = {bytes([b]) for b in range(32, 127)} | {b"\n"}
    for text in texts:
        for i, w in enumerate(text.split(b" ")):
            out.add(w if i == 0 else b" " + w)
    return sorted(out)
