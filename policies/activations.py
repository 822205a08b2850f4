"""Prefill activations of a small causal LM as query features (for probe policies).

An open-weight causal LM reads the prompt once (prefill, no generation); the hidden states after
a few of its blocks, pooled over the prompt's tokens (mean) and at its last token, are the
features. The encoder is decoupled from the targets: a cheap model is read, every expert's
outcome is predicted from what it saw ("LLM Router: Prefill is All You Need", arXiv 2603.20895).

* Models: the packaged SmolLM2-135M-Instruct and Gemma-3-270M (``core.model_files``), a GGUF
  path, or an HF model folder. A GGUF is dequantized once into ``<data_dir>/models/<name>-hf``
  (the conversion the Router-R1 and vLLM code already use); nothing comes from a model hub.
* Cost levers: only the blocks up to the deepest probed one run (the rest are cut off), the
  prompt is capped at ``max_tokens`` tokens (its *last* ones, so the last-token state is the
  end of the question; the BOS token is kept), bfloat16 weights where the CPU computes them
  natively (AVX-512 BF16 or AMX: 1.7× the float32 speed, pooled states at cosine 0.99998 of
  float32's) and float32 elsewhere (``dtype="auto"``: on an AVX2-only CPU bfloat16 is emulated and
  slower); ``dtype="int8"``: int8 linear layers with one scale per output channel (2× float32's
  speed for one prompt on an AVX2 CPU; its features move, so they are cached and served apart).
  torch quantises int8 activations with one scale per forward pass, so a prompt batched with
  others would get features that depend on them (cosine 0.92 on average for the last-token
  state): int8 runs one prompt per pass, and a prompt's features are the same in training and
  serving. Other types run length-sorted batches within a token budget; torch runs on
  ``threads`` threads.
* Caching: the flattened features (layer × pooling × hidden, float32) go through the shared
  text-hash cache of ``policies.embeddings`` under their own backend id (model, layers, cap),
  in small shards so an interrupted extraction resumes where it stopped.

Layout of one feature vector: for each probed layer (in order), ``mean`` then ``last``, each
``hidden`` wide; ``feature_block`` cuts one (layer, pooling) block out of it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import PolicyError
from policies import model_home

POOLINGS = ("mean", "last")
# Blocks probed by default: up to ~60 % of the depth (SmolLM2 has 30 blocks, Gemma-3-270M 18); the
# blocks after the deepest one never run.
DEFAULT_LAYERS = {"smollm2-135m-instruct": (3, 6, 9, 12, 15, 18), "gemma3-270m": (2, 4, 6, 8, 10, 12)}
DEFAULT_MAX_TOKENS = 64
DTYPES = ("auto", "float32", "bfloat16", "int8")


def default_layers(model: str) -> tuple[int, ...]:
    return DEFAULT_LAYERS.get(model, (2, 4, 6, 8, 10, 12))


def native_dtype() -> str:
    """``bfloat16`` where the CPU has bfloat16 kernels (AVX-512 BF16, AMX), else ``float32``."""
    import torch

    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:  # a torch without the probes: assume emulation
        native = False
    return "bfloat16" if native else "float32"


def backend_id(model: str, layers: Sequence[int], max_tokens: int, dtype: str = "bfloat16") -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", Path(model).stem if model.endswith(".gguf") else Path(model).name)
    tag = {"bfloat16": "-bf16", "float32": "", "int8": "-int8-1"}.get(dtype, f"-{dtype}")  # int8: one prompt per pass
    return f"act-{slug}-L{'-'.join(str(int(x)) for x in layers)}-t{int(max_tokens)}{tag}"


class ActivationBackend:
    """``encode(texts) -> (n, len(layers) · 2 · hidden)`` from hooks on the probed blocks."""

    def __init__(self, model: str, layers: Sequence[int], *, max_tokens: int = DEFAULT_MAX_TOKENS, token_budget: int = 1024,
                 threads: int = 2, dtype: str = "auto") -> None:
        if not layers or min(layers) < 1:
            raise PolicyError(f"activation layers are 1-based block indices, got {list(layers)}")
        self.model = model
        self.layers = tuple(int(x) for x in layers)
        self.max_tokens = int(max_tokens)
        self.token_budget = int(token_budget)
        self.threads = int(threads)
        if dtype not in DTYPES:
            raise PolicyError(f"activation dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype = native_dtype() if dtype == "auto" else dtype
        self.id = backend_id(model, self.layers, self.max_tokens, self.dtype)
        self._tok = None
        self._net = None
        self._hidden: int | None = None

    # ---- the model -----------------------------------------------------------------------------
    def model_dir(self) -> Path:
        from policies.router_r1.lm import ensure_hf_model

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return ensure_hf_model(self.model, data_dir=model_home.data_dir())

    @property
    def hidden(self) -> int:
        if self._hidden is None:
            cfg = json.loads((self.model_dir() / "config.json").read_text())
            cfg = cfg.get("text_config", cfg)
            self._hidden = int(cfg["hidden_size"])
            n_layers = int(cfg["num_hidden_layers"])
            if max(self.layers) > n_layers:
                raise PolicyError(f"{self.model} has {n_layers} blocks; cannot probe {max(self.layers)}")
        return self._hidden

    @property
    def dim(self) -> int:
        return len(self.layers) * len(POOLINGS) * self.hidden

    @property
    def loaded(self) -> bool:
        return self._net is not None

    def _load(self):
        if self._net is not None:
            return self._tok, self._net
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = self.model_dir()
        tok = AutoTokenizer.from_pretrained(path)
        int8 = self.dtype == "int8"  # float32 weights, then int8 linear layers (one scale per output channel)
        net = AutoModel.from_pretrained(path, dtype=torch.float32 if int8 else getattr(torch, self.dtype))
        net = getattr(net, "language_model", net)  # multimodal wrappers: the text stack
        blocks = net.layers
        net.layers = blocks[: max(self.layers)]  # the blocks after the deepest probe never run
        net.config.num_hidden_layers = len(net.layers)
        if hasattr(net.config, "layer_types") and net.config.layer_types:
            net.config.layer_types = net.config.layer_types[: len(net.layers)]
        net.norm = torch.nn.Identity()
        net.eval()
        if int8:
            from policies.embeddings import _quantise_linear_layers

            _quantise_linear_layers(net)
        self._captured: dict[int, object] = {}
        for layer in self.layers:
            def hook(_mod, _inp, out, layer=layer):
                self._captured[layer] = out[0] if isinstance(out, tuple) else out
            blocks[layer - 1].register_forward_hook(hook)
        self._tok, self._net = tok, net
        self._hidden = int(net.config.hidden_size)
        return tok, net

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids: BOS (if the model has one) + its last ``max_tokens − 1`` tokens."""
        tok, _ = self._load()
        bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        keep = self.max_tokens - len(bos)
        out = []
        for ids in tok(list(texts), add_special_tokens=False)["input_ids"]:
            ids = list(ids)[-keep:] if ids else [tok.eos_token_id or 0]
            out.append(bos + ids)
        return out

    # ---- encoding ------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        tok, net = self._load()
        ids = self.token_ids(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            start = 0
            one_per_pass = self.dtype == "int8"  # its activations are quantised per pass: batch-mates would move them
            while start < len(order):
                width = len(ids[order[start]])
                stop = start + 1
                while (not one_per_pass and stop < len(order)
                       and (stop - start + 1) * max(width, len(ids[order[stop]])) <= self.token_budget):
                    width = max(width, len(ids[order[stop]]))
                    stop += 1
                rows = order[start:stop]
                out[rows] = self._forward([ids[i] for i in rows], pad, net)
                start = stop
        finally:
            torch.set_num_threads(before)
        return out

    def _forward(self, batch: list[list[int]], pad: int, net) -> np.ndarray:
        import torch

        width = max(len(x) for x in batch)
        x = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            x[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        self._captured.clear()
        with torch.inference_mode():
            net(input_ids=x, attention_mask=mask, use_cache=False)
        lengths = mask.sum(dim=1)
        body = mask.clone()
        if self._tok.bos_token_id is not None:  # the BOS state is a constant attention sink: not in the mean
            body[lengths > 1, 0] = 0
        m = body.unsqueeze(-1).float()
        parts = []
        for layer in self.layers:
            h = self._captured[layer].float()
            parts.append((h * m).sum(dim=1) / m.sum(dim=1))
            parts.append(h[torch.arange(len(batch)), lengths - 1])
        return torch.cat(parts, dim=1).numpy()


def activation_encoder(model: str, layers: Sequence[int] | None = None, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                       threads: int = 2, dtype: str = "auto"):
    """The shared, disk-cached ``policies.embeddings.Encoder`` of these activation features."""
    from policies.embeddings import _ENCODERS, get_encoder, register_encoder

    layers = tuple(layers) if layers else default_layers(model)
    dtype = native_dtype() if dtype == "auto" else dtype
    name = backend_id(model, layers, max_tokens, dtype)
    if name not in _ENCODERS:
        register_encoder(name, lambda: ActivationBackend(model, layers, max_tokens=max_tokens, threads=threads, dtype=dtype))
        enc = get_encoder(name)
        enc.chunk = 64  # texts per backend call: progress and persistence granularity
        enc.shard_size = 256  # a shard per 256 prompts: an interrupted extraction loses little
    return get_encoder(name)


def feature_block(X: np.ndarray, layers: Sequence[int], hidden: int, layer: int, pooling: str) -> np.ndarray:
    """The (layer, pooling) block of flattened activation features; ``pooling``: mean | last | both."""
    layers = list(layers)
    if layer not in layers:
        raise PolicyError(f"layer {layer} was not probed; probed layers: {layers}")
    base = layers.index(layer) * len(POOLINGS) * hidden
    if pooling == "both":
        return X[:, base : base + 2 * hidden]
    if pooling not in POOLINGS:
        raise PolicyError(f"pooling must be one of {POOLINGS} or 'both', got {pooling!r}")
    k = POOLINGS.index(pooling)
    return X[:, base + k * hidden : base + (k + 1) * hidden]
