"""What the router reads from the SLM's proposal of the next token.

The dense features depend only on the SLM's top-k log-probabilities, the proposed token's text
and its position, so the same router runs over a local model (full logits) and over a remote
server that returns ``top_logprobs`` (remote mode). The token's identity enters as a hashed
bucket of its text (an embedding in the router); the SLM's last hidden state is an optional
extra, available only in-process.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

TOP_K = 10
N_BUCKETS = 512
FLOOR = -30.0  # log-probabilities below this carry no information

DENSE_NAMES = (
    [f"logprob_{i + 1}" for i in range(TOP_K)]
    + ["top_k_mass", "top_k_entropy", "margin", "log_position", "is_eog", "starts_space", "has_newline",
       "is_alpha", "is_digit", "is_punct", "continues_word", "piece_len"]
)
N_DENSE = len(DENSE_NAMES)


@dataclass(slots=True)
class Proposal:
    """The SLM's next token and what the router may read about it."""

    token: int | None  # SLM vocabulary id (None in remote mode)
    piece: bytes  # its text
    is_eog: bool
    position: int  # index of the token in the generated text
    top_logprobs: np.ndarray  # (TOP_K,), descending, normalised over the whole vocabulary
    hidden: np.ndarray | None = None

    @property
    def top_prob(self) -> float:
        return math.exp(float(self.top_logprobs[0]))


def top_logprobs_from_logits(logits: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """(ids, log-probabilities) of the k most likely tokens, descending."""
    logits = logits.astype(np.float64, copy=False)
    idx = np.argpartition(logits, -k)[-k:]
    idx = idx[np.argsort(-logits[idx])]
    m = logits[idx[0]]
    lse = m + math.log(float(np.exp(logits - m).sum()))
    return idx, (logits[idx] - lse).astype(np.float32)


def token_bucket(piece: bytes, is_eog: bool = False) -> int:
    return 0 if is_eog else 1 + zlib.crc32(piece) % (N_BUCKETS - 1)


def dense_features(p: Proposal) -> np.ndarray:
    lp = np.full(TOP_K, FLOOR, dtype=np.float32)
    n = min(TOP_K, len(p.top_logprobs))
    lp[:n] = np.maximum(p.top_logprobs[:n], FLOOR)
    probs = np.exp(lp)
    mass = float(probs.sum())
    q = probs / mass if mass > 0 else probs
    entropy = float(-(q * np.log(np.maximum(q, 1e-12))).sum())
    text = p.piece.decode("utf-8", errors="replace")
    stripped = text.strip()
    flags = [
        float(p.is_eog),
        float(text[:1].isspace()),
        float("\n" in text),
        float(bool(stripped) and stripped.isalpha()),
        float(any(c.isdigit() for c in text)),
        float(bool(stripped) and not any(c.isalnum() for c in stripped)),
        float(bool(text) and not text[:1].isspace() and text[:1].isalnum()),
        min(len(p.piece), 16) / 8.0,
    ]
    head = [mass, entropy, float(lp[0] - lp[1]), math.log1p(p.position)]
    return np.concatenate([lp, np.asarray(head + flags, dtype=np.float32)])
