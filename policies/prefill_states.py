"""Probe features read from a GGUF model's own prefill (the probe's ``runtime="llamacpp"``).

The same hidden states a local llama.cpp expert computes when it prefills a prompt
(``core.layer_states``): the prompt as the user's message in the model's chat template, read in
that context (the expert evaluates all of it), pooled over the message's text as the
``transformers`` runtime pools (mean of its last 63 tokens, and its last token's state), from the
GGUF's own weights (quantised as shipped).
A probe fitted on these features can be served from the expert itself — it hands its states over
and keeps the prompt in its KV cache, so the routing forward pass is the expert's prefill — or,
when no such expert is up, from this process with the same code.

Layout as ``policies.activations``: per block, ``mean`` then ``last``, each ``hidden`` wide, so
``feature_block`` applies. Cached through ``policies.embeddings`` under ``prefill-<model>-L…``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import PolicyError
from policies import model_home

N_CTX = 4096  # longer prompts keep their last tokens (a local expert's context is smaller still)


def backend_id(model: str, layers: Sequence[int]) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(model).stem if model.endswith(".gguf") else Path(model).name)
    from core.layer_states import WINDOW

    return f"prefill-{slug}-L{'-'.join(str(int(x)) for x in layers)}-u{WINDOW}"


def as_messages(text: str) -> list[dict[str, str]]:
    """How a training prompt reaches an expert: the user's only message."""
    return [{"role": "user", "content": text}]


class PrefillStateBackend:
    """``encode(texts) -> (n, len(layers) · 2 · hidden)``, one prompt per llama.cpp evaluation."""

    def __init__(self, model: str, layers: Sequence[int], *, threads: int = 2, hidden: int | None = None) -> None:
        if not layers or min(layers) < 1:
            raise PolicyError(f"prefill layers are 1-based block indices, got {list(layers)}")
        self.model = model
        self.layers = tuple(int(x) for x in layers)
        self.threads = int(threads)
        self.id = backend_id(model, self.layers)
        self._hidden = hidden  # known from a fitted probe: features handed over need no model here
        self._llama = None
        self._capture = None
        self._lock = threading.Lock()  # one llama.cpp context: one evaluation at a time

    def _load(self):
        if self._llama is None:
            from core import llama_thread

            llama_thread.spin_briefly()  # the local experts share these cores
            import llama_cpp

            from core import layer_states
            from core.errors import ConfigError
            from core.model_files import resolve_gguf

            try:
                path = resolve_gguf(self.model, data_dir=model_home.data_dir())
            except ConfigError as exc:
                raise PolicyError(f"probe runtime llamacpp: {exc.message}") from exc
            llama_thread.pin_evaluations()  # callers come from several threads (features, fitting)
            capture = layer_states.LayerCapture()
            with layer_states.install(capture):
                llama = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=self.threads, n_threads_batch=self.threads,
                                        verbose=False)
            deepest = layer_states.n_blocks(llama) - 1
            if max(self.layers) > deepest:
                raise PolicyError(f"{self.model} has {deepest + 1} blocks; its prefill states can be read after blocks 1…{deepest}")
            self._llama, self._capture = llama, capture
        return self._llama, self._capture

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    @property
    def hidden(self) -> int:
        if self._hidden is None:
            self._hidden = int(self._load()[0].n_embd())
        return self._hidden

    @property
    def dim(self) -> int:
        return len(self.layers) * 2 * self.hidden

    def prompts(self, texts: Sequence[str]) -> list:
        """Each text's chat prompt as its only user message (how training prompts are read)."""
        return self.conversation_prompts([as_messages(t) for t in texts])

    def conversation_prompts(self, conversations: Sequence[list[dict[str, str]]]) -> list:
        """Each conversation's chat prompt, cut to its last ``N_CTX`` tokens (the span of the last
        user message's text shifted with it)."""
        from core import layer_states

        llama, _ = self._load()
        out = []
        for messages in conversations:
            p = layer_states.chat_prompt(llama, messages)
            cut = max(0, len(p.tokens) - N_CTX)
            span = None if p.span is None or p.span[1] <= cut else (max(p.span[0] - cut, 0), p.span[1] - cut)
            out.append(layer_states.ChatPrompt(p.tokens[cut:], span))
        return out

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return [p.tokens for p in self.prompts(texts)]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_conversations([as_messages(t) for t in texts])

    def encode_conversations(self, conversations: Sequence[list[dict[str, str]]]) -> np.ndarray:
        """The states an expert's prefill of each whole conversation hands over (the same blocks,
        pooled over the last user message's text), uncached."""
        from core import layer_states

        with self._lock:
            llama, capture = self._load()
            out = np.zeros((len(conversations), self.dim), dtype=np.float32)
            for i, p in enumerate(self.conversation_prompts(conversations)):
                out[i] = layer_states.read(llama, capture, p.tokens, self.layers, span=p.span, keep=False)
            return out


def prefill_encoder(model: str, layers: Sequence[int], *, threads: int = 2, hidden: int | None = None):
    """The shared, disk-cached ``policies.embeddings.Encoder`` of these features."""
    from policies.embeddings import _ENCODERS, get_encoder, register_encoder

    layers = tuple(int(x) for x in layers)
    name = backend_id(model, layers)
    if name not in _ENCODERS:
        register_encoder(name, lambda: PrefillStateBackend(model, layers, threads=threads, hidden=hidden))
        enc = get_encoder(name)
        enc.chunk = 32
        enc.shard_size = 256  # an interrupted extraction loses little
    return get_encoder(name)
