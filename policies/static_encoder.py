"""A static sentence encoder distilled from the packaged MiniLM.

A static encoder has one vector per word piece; a prompt's vector is the weighted mean of its word
pieces' vectors, with no transformer pass at serving time (model2vec). The vectors are made from
the served all-MiniLM-L6-v2 itself: every word piece of its vocabulary goes through MiniLM once,
the outputs are reduced to 256 dimensions by PCA and weighted by token frequency (model2vec's
``distill``, SIF weighting). Nothing comes from a model hub, and the distillation runs once per
data folder (about a minute on 2 cores, on first use: ``expertmux train`` does it before the
proxy serves the policy): the result is kept in ``<data_dir>/models/<id>`` and reused by every
process that shares that folder.

On 2 AVX2 cores it encodes one prompt in 3.5 ms (MiniLM: 25 ms) and about 6,900 prompts/s batched
on one thread (MiniLM: 37). Its vectors are not MiniLM's, so it has its own id and cache, and a
policy trained on it is served with it (``encoder="minilm-static"``); speed and routing quality
against MiniLM: benchmarks/SIGNALS.md §15.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.errors import PolicyError
from policies import model_home

log = logging.getLogger(__name__)


class StaticBackend:
    """``encode(texts) -> (n, 256)`` unit vectors from a model2vec model distilled from MiniLM."""

    dim = 256
    max_tokens = 512  # word pieces read per prompt: a static encoder's cost is a table lookup each

    def __init__(self, teacher: Callable[[], Path]) -> None:
        self.teacher = teacher  # the MiniLM folder the vectors are distilled from
        self.id = f"static-MiniLM-L6-v2-pca{self.dim}"
        self._model = None
        self._lock = threading.Lock()

    def model_dir(self) -> Path:
        """``<data_dir>/models/<id>``, beside the converted probe models."""
        return model_home.models_dir() / self.id

    def _load(self):
        with self._lock:  # two first decisions at once distil once
            if self._model is None:
                try:
                    from model2vec import StaticModel
                except ImportError:
                    raise PolicyError("encoder 'minilm-static' needs the package model2vec (pip install 'expertmux[ml]')") from None
                folder = self.model_dir()
                if not (folder / "config.json").exists():
                    distil(folder, self.teacher())
                self._model = StaticModel.from_pretrained(str(folder))
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        vecs = model.encode(list(texts), max_length=self.max_tokens, normalize=True, use_multiprocessing=False)
        return np.asarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)


def distil(folder: Path, teacher: Path, *, dims: int = StaticBackend.dim) -> Path:
    """Distil the sentence-transformers model at ``teacher`` into a static model saved at ``folder``
    (atomic: written beside it, then renamed; a process that loses the race keeps the winner's copy)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from model2vec.distill import distill

    log.info("distilling the static encoder from %s (once per data folder, about a minute)", teacher)
    model = distill(model_name=str(teacher), pca_dims=dims, device="cpu", quantize_to="float32")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".distil-", dir=folder.parent))
    try:
        model.save_pretrained(str(tmp))
        try:
            tmp.replace(folder)
        except OSError:
            if not (folder / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
