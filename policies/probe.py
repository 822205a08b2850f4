"""Activation probes: per-expert ridge heads on a small LM's prefill hidden states.

A cheap causal LM (SmolLM2-135M, Gemma-3-270M, or any local GGUF/HF model) reads the prompt; the
hidden state after one of its blocks, mean-pooled over the prompt and/or taken at its last token
(``policies.activations``), is standardised and a ridge regression per expert predicts that
expert's outcome ("LLM Router: Prefill is All You Need", arXiv 2603.20895: the encoder is decoupled
from the experts it predicts). Optionally the MiniLM sentence embedding is appended.

Which block, which pooling and the ridge strength are chosen on the training rows only, by
grouped K-fold cross-validation (mean squared error of the cross-fitted predictions, or the mean
outcome of routing by them at λ = 0: ``select_by``). The per-layer curve is kept in the artifact
with two label-free-of-routing diagnostics per layer: Fisher separability (Δμᵀ S_w⁻¹ Δμ between
queries an expert gets right and wrong, top 64 principal components) and effective
dimensionality (participation ratio of the feature spectrum).

``dtype`` picks the probed model's weights (``auto``, ``float32``, ``bfloat16``, ``int8``: see
``policies.activations``) and the artifact keeps it. ``auto`` resolves on each machine (bfloat16
where the CPU has native kernels, float32 elsewhere: pooled states at cosine 0.99998 of each
other); ``int8`` features differ more, and a probe fitted on them is served on them.

``runtime="llamacpp"`` reads the GGUF model's own prefill states of the chat-formatted prompt
(``policies.prefill_states``) instead of a ``transformers`` copy of it: the states a local
llama.cpp expert serving that model computes anyway. The router then asks that expert for them
(``served_prefill``, ``accept_prefill``), and the expert keeps the prompt in its KV cache for the
answer; without such an expert they are computed here, the same way.

``conditioning="category"`` adds Tryage's structure on top: a category posterior from the
sentence embedding (task labels, or clusters) mixes ridge heads fitted on each category's rows,
so the probe's features only have to tell queries apart *within* a kind of query. With
``posterior_from="probe"`` the posterior comes from the probe's own features instead, so a
decision needs one forward pass, not two (and none in the proxy when an expert hands them over).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import PolicyError
from policies.base import Policy
from policies.features import (
    activation_matrix,
    category_heads,
    effective_dimension,
    fisher_separability,
    fold_ridge_predictions,
    impute_targets,
    mix_heads,
    ridge_path,
    routed_quality,
    standardiser,
)
from policies.neural import single_thread
from policies.progress import report

POOLING_CHOICES = ("mean", "last", "both")
RUNTIMES = ("transformers", "llamacpp")


class ProbePolicy(Policy):
    name = "probe"
    requires_training = True
    reads_prompt = True

    def __init__(
        self,
        probe_model: str = "smollm2-135m-instruct",
        layer: int | None = None,
        pooling: str = "auto",
        with_embedding: bool = False,
        conditioning: str = "none",
        alphas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0),
        select_by: str = "mse",
        max_tokens: int = 64,
        dtype: str = "auto",
        cv_folds: int = 5,
        encoder: str = "minilm",
        posterior_from: str = "embedding",
        runtime: str = "transformers",
        random_state: int = 0,
    ) -> None:
        self.probe_model = probe_model
        self.layer = layer
        self.pooling = pooling
        self.with_embedding = with_embedding
        self.conditioning = conditioning
        self.alphas = alphas
        self.select_by = select_by
        self.max_tokens = max_tokens
        self.dtype = dtype
        self.cv_folds = cv_folds
        self.encoder = encoder
        self.posterior_from = posterior_from
        self.runtime = runtime
        self.random_state = random_state

    # ---- features ---------------------------------------------------------------------------
    def _block(self, X: np.ndarray, E: np.ndarray | None, layer: int, pooling: str) -> np.ndarray:
        from policies.activations import feature_block

        B = feature_block(X, self.layers_, self.hidden_, layer, pooling)
        return np.hstack([B, E]) if E is not None else B

    def _encoder(self, layers: Sequence[int]):
        if self.runtime == "llamacpp":
            from policies.prefill_states import prefill_encoder

            return prefill_encoder(self.probe_model, layers, hidden=getattr(self, "hidden_", None))
        from policies.activations import activation_encoder

        return activation_encoder(self.probe_model, layers, max_tokens=self.max_tokens, dtype=self.dtype)

    def _features(self, prompts: Sequence[str]) -> np.ndarray:
        """The chosen block's features. Where the model with every probe block is at hand (it is
        loaded in this process, as when fitting, or every prompt's features are cached, as in an
        evaluation) they are read from it; otherwise (a served probe) only the blocks up to the
        chosen one run, in a model of that depth. Both give the same features."""
        from policies.activations import default_layers, feature_block

        layers = default_layers(self.probe_model)
        enc = self._encoder(layers)
        if not getattr(enc.backend, "loaded", False) and enc.missing(prompts):
            layers = (self.layer_,)
            enc = self._encoder(layers)
        B = feature_block(enc.encode(list(prompts)), layers, self.hidden_, self.layer_, self.pooling_)
        return np.hstack([B, self._embedding(prompts)]) if self.with_embedding else B

    def served_prefill(self) -> tuple[str, tuple[int, ...]] | None:
        """(GGUF model, blocks) whose prefill states this fitted probe reads, when a local
        llama.cpp expert serving that model can hand them over; None for other runtimes."""
        if self.runtime != "llamacpp" or not hasattr(self, "layer_"):
            return None
        return self.probe_model, (int(self.layer_),)

    def accept_prefill(self, prompt: str, features: np.ndarray) -> None:
        """The states of ``served_prefill``'s blocks that an expert computed while prefilling
        ``prompt``: ``decide`` reads them instead of computing them here."""
        blocks = self.served_prefill()
        if blocks is None:
            raise PolicyError(f"probe with runtime {self.runtime!r} reads no expert's prefill")
        self._encoder(blocks[1]).put(prompt, features)

    def _embedding(self, prompts: Sequence[str]) -> np.ndarray:
        from policies.embeddings import get_encoder

        return get_encoder(self.encoder).encode(list(prompts))

    # ---- fitting ------------------------------------------------------------------------------
    def _fit(self, train) -> None:
        if self.select_by not in ("mse", "routing"):
            raise PolicyError(f"probe: select_by must be 'mse' or 'routing', got {self.select_by!r}")
        if self.conditioning not in ("none", "category"):
            raise PolicyError(f"probe: conditioning must be 'none' or 'category', got {self.conditioning!r}")
        if self.posterior_from not in ("embedding", "probe"):
            raise PolicyError(f"probe: posterior_from must be 'embedding' or 'probe', got {self.posterior_from!r}")
        if self.runtime not in RUNTIMES:
            raise PolicyError(f"probe: runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.pooling not in ("auto", *POOLING_CHOICES):
            raise PolicyError(f"probe: pooling must be 'auto' or one of {POOLING_CHOICES}, got {self.pooling!r}")
        X, layers, hidden = activation_matrix(self.probe_model, train.prompts, max_tokens=self.max_tokens, dtype=self.dtype,
                                              runtime=self.runtime)
        self.layers_, self.hidden_ = tuple(int(x) for x in layers), int(hidden)
        E = self._embedding(train.prompts) if self.with_embedding else None
        scores = train.scores
        Y, _ = impute_targets(scores)
        lo, hi = np.nanmin(scores), np.nanmax(scores)
        self.score_lo_, self.score_hi_ = float(lo), float(hi if hi > lo else lo + 1.0)
        cand_layers = [int(self.layer)] if self.layer is not None else list(self.layers_)
        cand_pool = list(POOLING_CHOICES) if self.pooling == "auto" else [self.pooling]
        alphas = [float(a) for a in self.alphas]
        grid = [(la, po) for la in cand_layers for po in cand_pool]
        self.curve_: dict[str, dict[str, float]] = {}
        folds = train.grouped_folds(self.cv_folds, seed=self.random_state) if len(train) >= 4 * self.cv_folds else []
        known = ~np.isnan(scores)
        with single_thread():
            if folds and (len(grid) > 1 or len(alphas) > 1):
                best = (np.inf, None)
                for i, (la, po) in enumerate(grid):
                    report("probe layers (cross-validation)", i, len(grid))
                    B = self._block(X, E, la, po)
                    P = fold_ridge_predictions(B, Y, folds, alphas)
                    mse = [float(((P[a] - np.nan_to_num(scores)) ** 2)[known].mean()) for a in range(len(alphas))]
                    routed = [routed_quality(P[a], scores) for a in range(len(alphas))]
                    a_best = int(np.argmin(mse)) if self.select_by == "mse" else int(np.argmax(routed))
                    entry = {"cv_mse": round(mse[a_best], 6), "cv_routed_quality": round(routed[a_best], 6),
                             "alpha": alphas[a_best]}
                    if po != "both" and E is None:
                        entry["fisher"] = round(fisher_separability(B, scores), 4)
                        entry["effective_dim"] = round(effective_dimension(B), 2)
                    self.curve_[f"{la}:{po}"] = entry
                    key = mse[a_best] if self.select_by == "mse" else -routed[a_best]
                    if key < best[0]:
                        best = (key, (la, po, alphas[a_best]))
                report("probe layers (cross-validation)", len(grid), len(grid))
                self.layer_, self.pooling_, self.alpha_ = best[1]
            else:
                self.layer_, self.pooling_, self.alpha_ = grid[0][0], grid[0][1], alphas[len(alphas) // 2]
            B = self._block(X, E, self.layer_, self.pooling_)
            self.mean_, self.scale_ = standardiser(B)
            Z = (B - self.mean_) / self.scale_
            ym = Y.mean(axis=0)
            (W,) = ridge_path(Z, Y - ym, [self.alpha_])
            self.weight_, self.bias_ = W.astype(np.float32), ym.astype(float)
            self.categories_ = None
            if self.conditioning == "category":
                self._fit_category_heads(train, Z, Y, scores, folds, alphas)

    def _fit_category_heads(self, train, Z, Y, scores, folds, alphas) -> None:
        """Tryage's structure on the probe's features: a category posterior from the sentence
        embedding mixes ridge heads fitted per category; the strength is chosen by cross-fitting
        (validation rows routed by posteriors of classifiers that never saw them)."""
        from policies.categories import cross_fitted_proba, fit_categories

        E = Z if self.posterior_from == "probe" else self._embedding(train.prompts)
        model, y = fit_categories(train, E, mode="auto", C=10.0, seed=self.random_state)
        k = model.n
        self.category_alpha_ = alphas[len(alphas) // 2]
        if folds and len(alphas) > 1:
            oof = cross_fitted_proba(train, E, y, k, folds, C=10.0, seed=self.random_state)
            P = np.zeros((len(alphas), *Y.shape))
            for tr, te in folds:
                W, b = category_heads(Z[tr], Y[tr], y[tr], k, alphas)
                for ai in range(len(alphas)):
                    P[ai, te] = mix_heads(Z[te], oof[te], W[ai], b[ai])
            known = ~np.isnan(scores)
            mse = [float(((P[a] - np.nan_to_num(scores)) ** 2)[known].mean()) for a in range(len(alphas))]
            routed = [routed_quality(P[a], scores) for a in range(len(alphas))]
            a_best = int(np.argmin(mse)) if self.select_by == "mse" else int(np.argmax(routed))
            self.category_alpha_ = alphas[a_best]
            self.curve_["category_heads"] = {"cv_mse": round(mse[a_best], 6), "cv_routed_quality": round(routed[a_best], 6),
                                             "alpha": self.category_alpha_}
        W, b = category_heads(Z, Y, y, k, [self.category_alpha_])
        self.categories_, self.cat_weight_, self.cat_bias_ = model, W[0], b[0]

    # ---- prediction ---------------------------------------------------------------------------
    def _head(self, Z: np.ndarray, posterior: np.ndarray | None) -> np.ndarray:
        if posterior is not None:
            return np.clip(mix_heads(Z, posterior, self.cat_weight_, self.cat_bias_), self.score_lo_, self.score_hi_)
        return np.clip(Z @ self.weight_ + self.bias_, self.score_lo_, self.score_hi_)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        embedding = self._embedding(prompts) if self.categories_ is not None and self.posterior_from != "probe" else None
        return self.quality_from_features(self._features(prompts), embedding)

    def quality_from_features(self, F: np.ndarray, embedding: np.ndarray | None = None) -> np.ndarray:
        """Predicted quality from the chosen block's features, whoever computed them; a category
        posterior from a sentence encoder needs the prompts' ``embedding``."""
        Z = (np.asarray(F, dtype=np.float32) - self.mean_) / self.scale_
        posterior = None
        if self.categories_ is not None:  # from the probe's own standardised features, or a sentence encoder's
            posterior = self.categories_.proba(Z if self.posterior_from == "probe" else embedding)
        return self._head(Z, posterior)

    # ---- artifacts ------------------------------------------------------------------------------
    def _get_state(self):
        arrays = {"mean": self.mean_, "scale": self.scale_, "weight": self.weight_, "bias": self.bias_}
        if self.categories_ is not None:
            cat_arrays, cat_meta = self.categories_.state()
            arrays.update(cat_arrays, cat_weight=self.cat_weight_, cat_bias=self.cat_bias_)
        meta = {"layers": list(self.layers_), "hidden": self.hidden_, "layer": int(self.layer_), "pooling": self.pooling_,
                "alpha": float(self.alpha_), "score_lo": self.score_lo_, "score_hi": self.score_hi_, "curve": self.curve_,
                "categories": cat_meta if self.categories_ is not None else None,
                "category_alpha": getattr(self, "category_alpha_", None), "features": self._features_id()}
        return arrays, meta

    def _features_id(self) -> str | None:
        """What the llama.cpp runtime's features are (model, blocks, pooling), kept in the artifact:
        a probe is served only on the features it was fitted on."""
        if self.runtime != "llamacpp":
            return None
        from policies.prefill_states import backend_id

        return backend_id(self.probe_model, self.layers_)

    def _set_state(self, arrays, meta):
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float32)
        self.scale_ = np.asarray(arrays["scale"], dtype=np.float32)
        self.weight_ = np.asarray(arrays["weight"], dtype=np.float32)
        self.bias_ = np.asarray(arrays["bias"], dtype=float)
        if self.weight_.shape != (len(self.mean_), len(self.experts_)) or self.bias_.shape != (len(self.experts_),):
            raise ValueError(f"probe head has shape {self.weight_.shape}; expected ({len(self.mean_)}, {len(self.experts_)})")
        self.layers_, self.hidden_ = tuple(int(x) for x in meta["layers"]), int(meta["hidden"])
        if meta.get("features") != self._features_id():
            raise PolicyError(f"fitted on features {meta.get('features') or 'of an earlier version (whole-prompt pooling)'}, "
                             f"while this version reads {self._features_id()}: train the probe again")
        self.layer_, self.pooling_, self.alpha_ = int(meta["layer"]), str(meta["pooling"]), float(meta["alpha"])
        self.score_lo_, self.score_hi_ = float(meta["score_lo"]), float(meta["score_hi"])
        self.curve_ = dict(meta.get("curve") or {})
        self.categories_ = None
        if meta.get("categories"):
            from policies.categories import CategoryModel

            self.categories_ = CategoryModel.from_state(arrays, meta["categories"])
            self.cat_weight_ = np.asarray(arrays["cat_weight"], dtype=np.float32)
            self.cat_bias_ = np.asarray(arrays["cat_bias"], dtype=float)
            self.category_alpha_ = float(meta["category_alpha"])
            if self.cat_weight_.shape != (self.categories_.n, len(self.mean_), len(self.experts_)):
                raise ValueError(f"category heads have shape {self.cat_weight_.shape}")
