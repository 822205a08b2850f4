"""One model's view of the shared transcript, and how it catches up after a switch.

Both models read the same generated text, each in its own tokens after its own prompt. A track
remembers which of its tokens cover which bytes of the text and which of them are already in the
model's KV cache. When the other model has written, ``sync`` makes the cache cover the whole
text again while evaluating as little as possible:

- pairs that share a tokenizer (fast path): the other model's token ids are appended as they are;
- pairs that do not: only the tail since the last word start among the track's own last few
  tokens is re-tokenised; tokens of the new tail that equal the old ones stay in the cache, the
  rest is rolled back and evaluated. The prefix is never evaluated again.

A model's own token (``push``) is appended without tokenising and evaluated lazily: the LLM pays
for the tokens after its last turn only when it is asked again.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from dataclasses import dataclass

from experts.r2r.lm import TokenLM

_SPACE = frozenset(b" \t\n\r")


@dataclass(slots=True)
class TrackStats:
    prompt_tokens: int = 0  # tokens of this model's prompt
    prompt_evaluated: int = 0  # of which evaluated (the rest came from the prefix cache)
    generated_evaluated: int = 0  # transcript tokens evaluated (own and the other model's)
    retokenized: int = 0  # cached tokens rolled back because the tail re-tokenised differently
    syncs: int = 0
    unevaluated: int = 0  # tokens written but never read back (the model's last token, usually)
    prompt_seconds: float = 0.0  # time spent evaluating the prompt
    eval_seconds: float = 0.0  # time spent evaluating transcript tokens


class Track:
    def __init__(self, lm: TokenLM, *, max_backoff: int = 4) -> None:
        self.lm = lm
        self.max_backoff = max_backoff
        self.started = False
        self.n_prompt = 0
        self.ids: list[int] = []  # this model's tokens of the transcript
        self.ends: list[int] = []  # byte offset in the transcript where each token ends
        self.stats = TrackStats()

    # -- state -----------------------------------------------------------------------------------
    @property
    def covered(self) -> int:
        """Bytes of the transcript these tokens cover."""
        return self.ends[-1] if self.ends else 0

    @property
    def n_cached(self) -> int:
        """Transcript tokens already in the KV cache."""
        return len(self.lm.history) - self.n_prompt

    def start(self, prompt_ids: list[int]) -> None:
        """Evaluate the prompt, reusing whatever prefix of it the cache still holds."""
        t0 = time.perf_counter()
        kept = self.lm.reuse_prefix(prompt_ids)
        self.lm.eval(prompt_ids[kept:])
        self.n_prompt = len(prompt_ids)
        self.ids, self.ends = [], []
        self.stats = TrackStats(prompt_tokens=len(prompt_ids), prompt_evaluated=len(prompt_ids) - kept,
                                prompt_seconds=time.perf_counter() - t0)
        self.started = True

    # -- growing the transcript --------------------------------------------------------------------
    def push(self, token: int, piece: bytes) -> None:
        """Record this model's own token (evaluated at the next ``sync``)."""
        self.ids.append(token)
        self.ends.append(self.covered + len(piece))

    def rewind(self, n_bytes: int) -> None:
        """Cut the transcript back to its first ``n_bytes``: tokens ending after it are forgotten
        (and dropped from the cache). Used to branch a continuation from an earlier point."""
        keep = bisect_right(self.ends, n_bytes)
        if keep < self.n_cached:
            self.lm.truncate(self.n_prompt + keep)
        del self.ids[keep:], self.ends[keep:]

    def sync(self, text: bytes, shared_ids: list[int] | None = None) -> int:
        """Bring the KV cache up to the end of ``text``; returns the tokens evaluated.

        ``shared_ids`` (fast path): the transcript as token ids of this model's own vocabulary.
        """
        self.stats.syncs += 1
        if shared_ids is not None:
            for t in shared_ids[len(self.ids):]:
                self.push(t, self.lm.piece(t))
        elif self.covered != len(text):
            self._retokenize_tail(text)
        return self._flush()

    def _flush(self) -> int:
        t0 = time.perf_counter()
        todo = self.ids[self.n_cached:]
        if todo:
            self.lm.eval(todo)
            self.stats.generated_evaluated += len(todo)
        elif not self.lm.logits_fresh:
            self._refresh_last()
        self.stats.eval_seconds += time.perf_counter() - t0
        return len(todo)

    def _refresh_last(self) -> None:
        """Re-evaluate the last cached token so its logits are current (after a pure rollback)."""
        last = self.lm.history[-1]
        self.lm.truncate(len(self.lm.history) - 1)
        self.lm.eval([last])
        self.stats.retokenized += 1

    def _boundary(self, text: bytes) -> int:
        """Index of the first token to re-tokenise: the start of the word the junction is in."""
        n = len(self.ids)
        if n == 0 or text[self.covered] in _SPACE:
            return n  # the new text starts a new word: nothing of ours can merge with it
        for j in range(n - 1, max(n - 1 - self.max_backoff, -1), -1):
            start = self.ends[j - 1] if j else 0
            if j == 0 or text[start] in _SPACE or text[start - 1] == 0x0A:
                return j
        return n  # no word start within reach: append without re-tokenising

    def _retokenize_tail(self, text: bytes) -> None:
        j = self._boundary(text)
        start = self.ends[j - 1] if j else 0
        new = self.lm.tokenize(text[start:])
        old = self.ids[j:]
        common = 0
        while common < min(len(old), len(new)) and old[common] == new[common]:
            common += 1
        keep = j + common
        if keep < self.n_cached:
            self.stats.retokenized += self.n_cached - keep
            self.lm.truncate(self.n_prompt + keep)
        del self.ids[keep:], self.ends[keep:]
        end = self.ends[-1] if self.ends else 0
        for t in new[common:]:
            end += len(self.lm.piece(t))
            self.ids.append(t)
            self.ends.append(end)
        if end != len(text):
            raise RuntimeError(f"{self.lm.name}: tokens of the tail cover {end} bytes, the transcript has {len(text)}")
