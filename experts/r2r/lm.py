"""The token model the R2R engine drives: tokenize, evaluate tokens into a KV cache, read logits.

``TokenLM`` is the whole contract (tests implement it with scripted logits); ``LlamaCppLM``
implements it in-process over llama-cpp-python. The KV cache is the model's memory of the
transcript: ``history`` lists the tokens it holds, ``truncate`` drops a tail, ``eval`` appends.
``evaluated`` counts every token ever pushed through the model, so tests and stats can prove a
model never re-processes what it has already seen.
"""

from __future__ import annotations

import ctypes
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import ConfigError


class TokenLM(ABC):
    """A causal LM with an explicit KV cache (one sequence)."""

    name: str = "lm"

    def __init__(self) -> None:
        self.history: list[int] = []  # tokens currently in the KV cache, in order
        self.evaluated = 0  # tokens ever evaluated (prompt, catch-up, own tokens)
        self.decode_calls = 0
        self.logits_fresh = False  # logits() belongs to the last cached token

    # -- vocabulary ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def n_vocab(self) -> int: ...

    @abstractmethod
    def tokenize(self, text: bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        """Token ids of ``text`` (UTF-8 bytes); ``special`` parses control tokens in prompts."""

    @abstractmethod
    def piece(self, token: int) -> bytes:
        """The bytes a token adds to the text (empty for control tokens)."""

    @abstractmethod
    def is_eog(self, token: int) -> bool:
        """End of generation (EOS, end-of-turn)."""

    def vocab_fingerprint(self) -> str:
        """Equal fingerprints mean token ids can be exchanged without re-tokenising."""
        h = hashlib.sha256(str(self.n_vocab).encode())
        step = max(1, self.n_vocab // 4096)
        for t in range(0, self.n_vocab, step):
            h.update(self.piece(t) + b"\x00")
        return h.hexdigest()[:16]

    # -- KV cache ------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return 1 << 30

    def truncate(self, n: int) -> None:
        """Forget every cached position from ``n`` on."""
        if n < len(self.history):
            self._truncate(n)
            del self.history[n:]
            self.logits_fresh = False

    def eval(self, tokens: Sequence[int], *, all_logits: bool = False) -> np.ndarray | None:
        """Append ``tokens`` to the cache; returns per-position logits when ``all_logits``."""
        tokens = [int(t) for t in tokens]
        if not tokens:
            return None
        if len(self.history) + len(tokens) > self.n_ctx:
            raise ContextFullError(f"{self.name}: {len(self.history) + len(tokens)} tokens exceed the context of {self.n_ctx}")
        out = self._decode(tokens, len(self.history), all_logits)
        self.history.extend(tokens)
        self.evaluated += len(tokens)
        self.decode_calls += 1
        self.logits_fresh = True
        return out

    def reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the longest cached prefix of ``tokens``; returns how many are kept.

        At least the last token is re-evaluated so its logits are fresh.
        """
        keep = 0
        limit = min(len(tokens), len(self.history)) - 1
        while keep < limit and self.history[keep] == tokens[keep]:
            keep += 1
        self.truncate(keep)
        return keep

    @abstractmethod
    def _truncate(self, n: int) -> None: ...

    @abstractmethod
    def _decode(self, tokens: list[int], n_past: int, all_logits: bool) -> np.ndarray | None: ...

    @abstractmethod
    def logits(self) -> np.ndarray:
        """Next-token logits after the last evaluated token (float32, n_vocab)."""

    def hidden(self) -> np.ndarray | None:
        """Last-layer hidden state of the last evaluated token, if the model exposes it."""
        return None

    @property
    def has_hidden(self) -> bool:
        return False


class ContextFullError(RuntimeError):
    """The transcript no longer fits the model's context window."""


class LlamaCppLM(TokenLM):
    """A GGUF model in-process (llama-cpp-python), logits of the last position only.

    ``hidden=True`` turns on llama.cpp's per-token embeddings (the final normed hidden state)
    for the last token of each evaluation; the rest of a batch (prompt, catch-up) runs with them
    off, because with them on llama.cpp computes outputs for every position of the batch.
    """

    def __init__(self, path: str | Path, *, n_ctx: int = 2048, n_threads: int = 2, n_batch: int = 512,
                 hidden: bool = False, name: str | None = None) -> None:
        super().__init__()
        import llama_cpp

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"GGUF model not found: {path}")
        self._lib = llama_cpp
        kwargs = dict(n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, n_batch=n_batch, verbose=False)
        if hidden:
            kwargs.update(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
        self.llama = llama_cpp.Llama(str(path), **kwargs)
        self.name = name or path.stem
        self.path = path
        self._hidden_on = hidden
        self._emb_state = hidden
        self._vocab = self.llama._model.vocab
        self._ctx = self.llama._ctx.ctx
        self._n_vocab = self.llama.n_vocab()
        self._n_embd = self.llama.n_embd()
        self._pieces: dict[int, bytes] = {}
        self.batch_hidden: np.ndarray | None = None  # per-position hidden states of the last all_logits batch
        self._buf = ctypes.create_string_buffer(256)

    @property
    def n_vocab(self) -> int:
        return self._n_vocab

    @property
    def n_ctx(self) -> int:
        return self.llama.n_ctx()

    @property
    def has_hidden(self) -> bool:
        return self._hidden_on

    def tokenize(self, text: bytes, *, bos: bool = False, special: bool = False) -> list[int]:
        return self.llama.tokenize(text, add_bos=bos, special=special) if text or bos else []

    def piece(self, token: int) -> bytes:
        p = self._pieces.get(token)
        if p is None:
            n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
            p = self._buf.raw[:max(n, 0)]
            self._pieces[token] = p
        return p

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def bos_token(self) -> int:
        return self.llama.token_bos()

    def _truncate(self, n: int) -> None:
        self.llama._ctx.kv_cache_seq_rm(-1, n, -1)
        self.llama.n_tokens = n

    def _set_embeddings(self, on: bool) -> None:
        if self._hidden_on and on != self._emb_state:
            self._lib.llama_set_embeddings(self._ctx, on)
            self._emb_state = on

    def _decode(self, tokens: list[int], n_past: int, all_logits: bool) -> np.ndarray | None:
        if self._hidden_on and not all_logits and len(tokens) > 1:
            # hidden states make llama.cpp output every position of a batch: run the batch without
            # them and the last token alone with them (the router reads only the last one)
            self._decode_batch(tokens[:-1], n_past, False, embeddings=False)
            return self._decode_batch(tokens[-1:], n_past + len(tokens) - 1, False, embeddings=True)
        return self._decode_batch(tokens, n_past, all_logits, embeddings=len(tokens) == 1 or all_logits)

    def _decode_batch(self, tokens: list[int], n_past: int, all_logits: bool, *, embeddings: bool) -> np.ndarray | None:
        llama = self.llama
        llama._ctx.kv_cache_seq_rm(-1, n_past, -1)
        self._set_embeddings(embeddings)
        rows: list[np.ndarray] = []
        hidden_rows: list[np.ndarray] = []
        for i in range(0, len(tokens), llama.n_batch):
            batch = tokens[i: i + llama.n_batch]
            llama._batch.set_batch(batch=batch, n_past=n_past + i, logits_all=all_logits)
            llama._ctx.decode(llama._batch)
            if all_logits:
                ptr = self._lib.llama_get_logits(self._ctx)
                rows.append(np.ctypeslib.as_array(ptr, shape=(len(batch) * self._n_vocab,)).reshape(len(batch), -1).copy())
                if self._hidden_on:
                    ptr = self._lib.llama_get_embeddings(self._ctx)
                    hidden_rows.append(np.ctypeslib.as_array(ptr, shape=(len(batch) * self._n_embd,))
                                       .reshape(len(batch), -1).copy())
        self.batch_hidden = np.concatenate(hidden_rows) if hidden_rows else None
        llama.input_ids[n_past: n_past + len(tokens)] = tokens
        llama.n_tokens = n_past + len(tokens)
        return np.concatenate(rows) if all_logits else None

    def logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))

    def hidden(self) -> np.ndarray | None:
        if not self._hidden_on or not self._emb_state:
            return None
        ptr = self._lib.llama_get_embeddings_ith(self._ctx, -1)
        return None if not ptr else np.ctypeslib.as_array(ptr, shape=(self._n_embd,)).copy()
