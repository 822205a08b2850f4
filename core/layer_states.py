"""Hidden states of chosen blocks, read from a llama.cpp model's own prefill.

A probe policy's features are the residual stream after a few blocks of a small LM, pooled over
the prompt. When that LM is also a local expert, the expert's prefill of the prompt computes those
states anyway: reading them there, and keeping the prompt in the expert's KV cache, means the
routing forward pass is not paid a second time when the expert then answers.

llama.cpp offers no API for intermediate states; its graph scheduler does take an evaluation
callback (``cb_eval``), asked about every graph node and handed the ones it wants once computed.
The residual stream after block ``b`` (1-based, the count of blocks applied, as in
``transformers``' ``hidden_states[b]``) is the node llama.cpp names ``l_out-{b-1}``.

Used by both sides of the split: the expert server (``experts.llamacpp_server``) and the probe's
feature extraction for training (``policies.prefill_states``), so a feature means the same in
both. ``install()`` must wrap the construction of the ``llama_cpp.Llama`` (the callback is a
context parameter); ``read()`` then evaluates a prompt into the model's KV cache and returns its
pooled states. llama-cpp-python is imported lazily.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

POOLINGS = ("mean", "last")
WINDOW = 63  # positions in the mean, as the transformers runtime reads a BOS and the last 63 tokens
_PLACEHOLDER = "\u2063expertmux-user-text\u2063"  # stands in for the user's text when locating it
_NE_OFFSET = 16  # struct ggml_tensor: enum type (4 bytes, padded to 8), buffer pointer, then int64 ne[4]
_install_lock = threading.Lock()


def node_name(block: int) -> bytes:
    return f"l_out-{int(block) - 1}".encode()


class _Ggml:
    """The three ggml functions the callback needs, from the library llama-cpp-python ships."""

    def __init__(self) -> None:
        import llama_cpp

        lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.lib = lib


class LayerCapture:
    """The evaluation callback of one llama.cpp context. Idle (no block requested) it answers
    every node's question with "no", so generation runs as without it."""

    def __init__(self) -> None:
        import llama_cpp.llama_cpp as C

        self._ggml = _Ggml().lib
        self._wanted: dict[bytes, int] = {}  # node name -> block
        self._stop_after: bytes | None = None
        self._rows: dict[int, list[np.ndarray]] = {}
        self.callback = C.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with this object

    def _on_node(self, tensor: int, ask: bool, _user: int) -> bool:
        if ask:
            return bool(self._wanted) and self._ggml.ggml_get_name(tensor) in self._wanted
        name = self._ggml.ggml_get_name(tensor)
        ne = (ctypes.c_int64 * 4).from_address(tensor + _NE_OFFSET)
        size = self._ggml.ggml_nbytes(tensor)
        rows = np.empty((ne[1], ne[0]), dtype=np.float32)
        if rows.nbytes == size:  # an F32 [hidden, tokens] tensor, as every l_out is
            self._ggml.ggml_backend_tensor_get(tensor, rows.ctypes.data, 0, size)
            self._rows[self._wanted[name]].append(rows)
        # False stops the graph: extraction needs nothing past the deepest requested block
        return name != self._stop_after

    @contextlib.contextmanager
    def armed(self, blocks: Sequence[int], *, stop_after_deepest: bool) -> Iterator[dict[int, list[np.ndarray]]]:
        self._rows = {int(b): [] for b in blocks}
        self._wanted = {node_name(b): int(b) for b in blocks}
        self._stop_after = node_name(max(blocks)) if stop_after_deepest else None
        try:
            yield self._rows
        finally:
            self._wanted, self._stop_after = {}, None


@contextlib.contextmanager
def install(capture: LayerCapture) -> Iterator[None]:
    """Every ``llama_cpp.Llama`` constructed inside gets ``capture`` as its evaluation callback."""
    import llama_cpp.llama_cpp as C

    with _install_lock:
        original = C.llama_context_default_params

        def params() -> Any:
            p = original()
            p.cb_eval = capture.callback
            p.cb_eval_user_data = None
            return p

        C.llama_context_default_params = params
        try:
            yield
        finally:
            C.llama_context_default_params = original


class ChatPrompt(NamedTuple):
    tokens: list[int]
    span: tuple[int, int] | None  # token positions of the last user message's text, if found


def chat_prompt(llama: Any, messages: list[dict[str, Any]]) -> ChatPrompt:
    """The prompt tokens llama-cpp-python's chat completion builds for ``messages`` with the
    model's own chat template (equal tokens are what lets that completion reuse the KV cache),
    and where in them the last user message's text lies: the probe reads that text, not the
    template's system prompt and role markers around it."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("the model has no chat template in its GGUF metadata")
    model = llama._model
    fmt = Jinja2ChatFormatter(template=template, eos_token=model.token_get_text(llama.token_eos()),
                              bos_token=model.token_get_text(llama.token_bos()))
    result = fmt(messages=messages)
    text = result.prompt
    ids = llama.tokenize(text.encode("utf-8"), add_bos=not result.added_special, special=True)
    where = _text_location(fmt, messages, text)
    return ChatPrompt(ids, _token_span(llama, ids, text, *where) if where else None)


def _text_location(fmt: Any, messages: list[dict[str, Any]], text: str) -> tuple[int, int] | None:
    """(start, length) of the last user message's text in the rendered prompt ``text``: the
    conversation rendered once more with a placeholder for that text shows what surrounds it (a
    search for the text itself could match inside the template, and a template may trim it)."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if last is None or not isinstance(messages[last].get("content"), str) or not messages[last]["content"].strip():
        return None
    marked = [*messages[:last], {**messages[last], "content": _PLACEHOLDER}, *messages[last + 1:]]
    shape = fmt(messages=marked).prompt
    if shape.count(_PLACEHOLDER) != 1:
        return None
    before, after = shape.split(_PLACEHOLDER)
    length = len(text) - len(before) - len(after)
    if length <= 0 or not text.startswith(before) or not text.endswith(after):
        return None
    return len(before), length


def _token_span(llama: Any, ids: list[int], text: str, start: int, length: int) -> tuple[int, int] | None:
    """The tokens covering characters ``start:start+length`` of ``text`` (a token across the edge
    counts in), by the byte length of each token's piece; None if the pieces do not spell ``text``."""
    import llama_cpp

    buf = ctypes.create_string_buffer(256)
    pieces = []
    for t in ids:
        n = llama_cpp.llama_token_to_piece(llama._model.vocab, t, buf, len(buf), 0, True)
        pieces.append(buf.raw[: max(n, 0)])
    spelled, raw = b"".join(pieces), text.encode("utf-8")
    if not spelled.endswith(raw):
        return None
    a = len(spelled) - len(raw) + len(text[:start].encode("utf-8"))  # a BOS the tokenizer added comes first
    b = a + len(text[start: start + length].encode("utf-8"))
    ends = np.cumsum([len(p) for p in pieces])
    first, last = int(np.searchsorted(ends, a, side="right")), int(np.searchsorted(ends, b, side="left"))
    return (first, last + 1) if first <= last < len(ids) else None


def n_blocks(llama: Any) -> int:
    import llama_cpp

    return int(llama_cpp.llama_model_n_layer(llama._model.model))


def pool(rows: dict[int, list[np.ndarray]], blocks: Sequence[int], span: tuple[int, int] | None = None) -> np.ndarray:
    """Per block, in order: the mean over the last ``WINDOW`` positions of ``span`` (the user's
    message; the whole prompt but its first position, an attention sink, when None), then the
    state at the span's last position. The same pooling as the ``transformers`` runtime of
    ``policies.activations`` (a BOS and the text's last 63 tokens), here inside the chat template."""
    parts = []
    for b in blocks:
        h = np.concatenate(rows[int(b)])
        start, stop = span if span is not None else (min(1, len(h) - 1), len(h))
        body = h[max(start, stop - WINDOW):stop]
        parts.append(body.mean(axis=0))
        parts.append(h[stop - 1])
    return np.concatenate(parts).astype(np.float32)


def reusable_prefix(llama: Any, tokens: Sequence[int], span: tuple[int, int] | None) -> int:
    """How many leading ``tokens`` a kept read can take from the KV cache instead of evaluating
    them: chat prompts open alike (the template's system prompt and role marker, 24 of
    SmolLM2's tokens), as llama-cpp-python's own completions exploit. Only positions before the
    pooled ``span`` qualify, since the read needs the state of every pooled position; and only
    what the context holds (``n_tokens``: whole-model entries, as a stopped extraction resets)."""
    if span is None or getattr(llama, "_is_recurrent", False) or getattr(llama, "_is_hybrid", False):
        return 0
    limit = min(span[0], len(tokens) - 1, int(llama.n_tokens))
    if limit <= 0:
        return 0
    differ = np.flatnonzero(np.asarray(llama.input_ids[:limit]) != np.asarray(tokens[:limit]))
    return int(differ[0]) if len(differ) else limit


def read(llama: Any, capture: LayerCapture, tokens: Sequence[int], blocks: Sequence[int], *,
         span: tuple[int, int] | None = None, keep: bool = True) -> np.ndarray:
    """Evaluate ``tokens`` and return their pooled states of ``blocks`` (``pool`` over ``span``).

    ``keep=True`` (an expert): a prefix already in the KV cache is kept (``reusable_prefix``),
    the whole model runs over the rest and the prompt stays in the cache, so a completion of the
    same tokens starts decoding at once. ``keep=False`` (extraction): the prompt is evaluated
    from an empty cache, the graph stops after the deepest block and the cache is cleared.
    """
    blocks = [int(b) for b in blocks]
    if not blocks or not tokens:
        raise ValueError("read needs at least one block and one token")
    n_layer = n_blocks(llama)
    if min(blocks) < 1 or max(blocks) >= n_layer:  # the last block's output keeps only the rows for logits
        raise ValueError(f"blocks must lie in 1..{n_layer - 1} for this model, got {blocks}")
    kept = reusable_prefix(llama, tokens, span) if keep else 0
    llama.reset()
    llama.n_tokens = kept  # eval() drops the cache from here on
    with capture.armed(blocks, stop_after_deepest=not keep) as rows:
        llama.eval(list(tokens[kept:]))
    if not keep:  # the later blocks never ran: nothing in the cache may be reused
        llama.reset()
    if any(sum(len(r) for r in rows[b]) != len(tokens) - kept for b in blocks):
        raise RuntimeError("llama.cpp did not hand over every position's state")
    return pool(rows, blocks, None if span is None else (span[0] - kept, span[1] - kept))
