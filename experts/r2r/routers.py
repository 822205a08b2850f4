"""Hand-over rules: given the SLM's proposal, keep it or let the LLM write this token.

``LearnedRouter`` is the R2R router (a tiny MLP read from an artifact, run in numpy: no torch
at serving time). The others are the baselines the benchmark compares it with at equal LLM
share: ``ConfidenceRouter`` hands over when the SLM's top probability is low, ``RandomRouter``
hands over with a fixed probability, ``NeverRouter`` is the SLM alone.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from experts.r2r.artifact import RouterArtifact, RouterArtifactError, load_artifact
from experts.r2r.features import N_BUCKETS, N_DENSE, Proposal, dense_features, token_bucket


class Router(ABC):
    name = "router"
    needs_hidden = False

    def reset(self) -> None:  # noqa: B027 - stateless by default
        """Called at the start of every generation."""

    @abstractmethod
    def hand_over(self, p: Proposal) -> bool:
        """True: the LLM writes this token instead of the SLM."""

    def describe(self) -> dict:
        return {"router": self.name}


class NeverRouter(Router):
    name = "slm-only"

    def hand_over(self, p: Proposal) -> bool:
        return False


class RandomRouter(Router):
    name = "random"

    def __init__(self, share: float, seed: int = 0) -> None:
        self.share, self.seed = share, seed
        self._generation = 0
        self._rng = random.Random(seed)

    def reset(self) -> None:
        """A new, reproducible stream per generation: the same router object replays the same runs."""
        self._rng = random.Random(self.seed * 1_000_003 + self._generation)
        self._generation += 1

    def hand_over(self, p: Proposal) -> bool:
        return self._rng.random() < self.share

    def describe(self) -> dict:
        return {"router": self.name, "share": self.share}


class ConfidenceRouter(Router):
    name = "confidence"

    def __init__(self, min_top_prob: float) -> None:
        self.min_top_prob = min_top_prob

    def hand_over(self, p: Proposal) -> bool:
        return p.top_prob < self.min_top_prob

    def describe(self) -> dict:
        return {"router": self.name, "min_top_prob": self.min_top_prob}


class RouterNet:
    """The MLP: [normalised dense features, token-bucket embedding, normalised hidden] → 2 ReLU
    layers → logit of "this token sends the answer down a different path"."""

    REQUIRED = ("dense_mean", "dense_std", "bucket_emb", "w1", "b1", "w2", "b2", "w3", "b3")

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        missing = [k for k in self.REQUIRED if k not in weights]
        if missing:
            raise RouterArtifactError(f"router weights lack {', '.join(missing)}")
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        if self.w["dense_mean"].shape != (N_DENSE,) or self.w["bucket_emb"].shape[0] != N_BUCKETS:
            raise RouterArtifactError(f"router weights do not match this feature set ({N_DENSE} dense features, "
                                      f"{N_BUCKETS} token buckets)")
        self.uses_hidden = "hidden_mean" in self.w
        expected = N_DENSE + self.w["bucket_emb"].shape[1] + (self.w["hidden_mean"].shape[0] if self.uses_hidden else 0)
        if self.w["w1"].shape[1] != expected:
            raise RouterArtifactError(f"router weights: first layer takes {self.w['w1'].shape[1]} inputs, features give {expected}")

    def inputs(self, dense: np.ndarray, bucket: np.ndarray, hidden: np.ndarray | None) -> np.ndarray:
        w = self.w
        parts = [(dense - w["dense_mean"]) / w["dense_std"], w["bucket_emb"][bucket]]
        if self.uses_hidden:
            if hidden is None:
                raise RouterArtifactError("this router needs the SLM's hidden states, which this engine does not expose "
                                          "(train one with --features logits for remote mode)")
            parts.append((hidden - w["hidden_mean"]) / w["hidden_std"])
        return np.concatenate(parts, axis=-1)

    def logits(self, x: np.ndarray) -> np.ndarray:
        w = self.w
        h = np.maximum(x @ w["w1"].T + w["b1"], 0.0)
        h = np.maximum(h @ w["w2"].T + w["b2"], 0.0)
        return (h @ w["w3"].T + w["b3"])[..., 0]

    def score(self, dense: np.ndarray, bucket: np.ndarray, hidden: np.ndarray | None = None) -> np.ndarray:
        """Probability of divergence, for one row or a batch."""
        z = self.logits(self.inputs(dense, bucket, hidden))
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


class LearnedRouter(Router):
    name = "learned"

    def __init__(self, artifact: RouterArtifact, threshold: float | None = None) -> None:
        self.artifact = artifact
        self.net = RouterNet(artifact.weights)
        self.threshold = artifact.default_threshold if threshold is None else float(threshold)
        self.needs_hidden = self.net.uses_hidden

    @classmethod
    def load(cls, path: str | Path, threshold: float | None = None) -> LearnedRouter:
        return cls(load_artifact(Path(path)), threshold)

    def score(self, p: Proposal) -> float:
        return float(self.net.score(dense_features(p), np.asarray(token_bucket(p.piece, p.is_eog)), p.hidden))

    def hand_over(self, p: Proposal) -> bool:
        return self.score(p) >= self.threshold

    def describe(self) -> dict:
        return {"router": self.name, "threshold": self.threshold, "router_version": self.artifact.version}
