"""GraphRouter: a heterogeneous graph of task, query and LLM nodes; a GNN predicts the attributes
of query–LLM edges (effect, cost), and LLM nodes built from text descriptors let it score LLMs it
was never trained on (inductive).

The graph (torch-geometric, ``HeteroConv``):

* query nodes: the query embedding, projected on its ``query_dim`` principal directions (with the
  full 384 dimensions the network memorised training queries); task nodes: the embedding of the
  task's description next to the mean embedding of its training queries (categories: task
  labels, or clusters when the data has none); LLM nodes: the embedding of the model's text
  descriptor (``descriptors.yaml``, else the expert's configured description) plus log
  parameters and log prices;
* edges query ↔ task (a training query to its category; a new query to its top predicted
  categories, weighted by probability), query ↔ LLM carrying the observed effect and cost
  (masked to zero where unknown, with an "observed" flag), and task ↔ LLM carrying the LLM's
  mean effect and cost on the task's training queries (so that two layers carry what a task's
  queries say about each LLM to a new query of that task).

Messages are conditioned on the edge attributes (``EdgeConditionedConv``: a separate linear map
of the sender per attribute, so an LLM node gathers *which* queries it answers well, not just how
often). Two layers, then an MLP on (query, LLM) node pairs predicts the effect (and the
normalised log cost, an auxiliary target).

Training mimics serving. Each epoch a random share of the training queries become targets: their
LLM edges are masked and their task edges are the cross-fitted classifier's predictions, as for a
new query; the loss is on their edges. With probability ``unseen_llm_prob`` one LLM also loses
every observed edge that epoch, so the model learns to score an LLM from its descriptor alone.
An LLM without observations sends no messages, so adding one never changes the others' scores.
Each epoch only a share of the other queries sends messages (neighbour sampling: faster, and less
memorisation). A grouped hold-out of training queries stops training early, judged as routing
reads the model: by the error of each hold-out query's predicted *differences* between LLMs
(centred per query), in eval mode, and only after ``min_epochs``. The pooled edge loss is the
wrong judge: with few LLMs it is dominated by how hard a query is for all of them, flattens
early, and stops training before the per-query differences (all routing reads) are learned.

At serving time the task and LLM node states of the full training graph are computed once and
cached; a new query only needs its own two layers (sub-millisecond after the embedding).
``for_experts`` adds LLM nodes for live experts no trained model maps to, from their config
description, price and size.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from core.errors import PolicyError
from core.types import ExpertInfo
from policies.base import MappedPolicy, check_expert_map
from policies.categories import CategoryModel, cross_fitted_proba, fit_categories
from policies.descriptors import model_descriptor, task_description
from policies.embeddings import get_encoder
from policies.graphrouter_graph import GraphNodes, llm_numeric, training_graph
from policies.graphrouter_net import E_LQ, E_TQ, L, Q, T, build_net, compile_query_side, predict_compiled
from policies.learned import EmbeddingPolicy
from policies.neural import holdout_split, load_net_state, net_state, single_thread
from policies.progress import report


def routing_error(p, y, m) -> float:
    """Mean squared error of the differences between a query's LLMs: predictions ``p`` and
    outcomes ``y`` (queries × LLMs, tensors) centred per query over its known LLMs (mask ``m``);
    queries with fewer than two known LLMs carry no difference and are left out."""
    k = m.sum(1, keepdim=True)
    ok = k[:, 0] >= 2
    if not bool(ok.any()):
        return float("inf")
    centred = (p - (p * m).sum(1, keepdim=True) / k.clamp_min(1)) - (y - (y * m).sum(1, keepdim=True) / k.clamp_min(1))
    return float(((centred ** 2) * m)[ok].sum() / m[ok].sum())


class GraphRouterPolicy(EmbeddingPolicy):
    name = "graphrouter"

    def __init__(
        self,
        hidden: int = 64,
        query_dim: int = 8,
        dropout: float = 0.3,
        epochs: int = 400,
        lr: float = 5e-3,
        weight_decay: float = 1e-2,
        target_share: float = 0.3,
        message_share: float = 0.5,
        unseen_llm_prob: float = 0.5,
        top_tasks: int = 3,
        cost_weight: float = 0.1,
        patience: int = 60,
        min_epochs: int = 150,
        eval_every: int = 5,
        val_fraction: float = 0.1,
        categories: str = "auto",
        n_clusters: int = 16,
        C: float = 10.0,
        exclude_models: tuple[str, ...] = (),
        encoder: str = "minilm",
        random_state: int = 0,
    ) -> None:
        self.hidden = hidden
        self.query_dim = query_dim
        self.dropout = dropout
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.target_share = target_share
        self.message_share = message_share
        self.unseen_llm_prob = unseen_llm_prob
        self.top_tasks = top_tasks
        self.cost_weight = cost_weight
        self.patience = patience
        self.min_epochs = min_epochs
        self.eval_every = eval_every
        self.val_fraction = val_fraction
        self.categories = categories
        self.n_clusters = n_clusters
        self.C = C
        self.exclude_models = exclude_models
        self.encoder = encoder
        self.random_state = random_state

    # ---- node features ----------------------------------------------------------------------------
    def _fit_query_basis(self, X: np.ndarray) -> None:
        """Principal directions of the training embeddings: query nodes get ``query_dim`` of them
        (the full 384-d embedding lets the network memorise training queries)."""
        self.query_mean_ = X.mean(axis=0).astype(np.float32)
        k = int(min(self.query_dim, X.shape[1], len(X)))
        if k <= 0:
            self.query_basis_ = np.zeros((X.shape[1], 0), dtype=np.float32)
            return
        _, _, vt = np.linalg.svd(X - self.query_mean_, full_matrices=False)
        self.query_basis_ = vt[:k].T.astype(np.float32)

    def _query_features(self, X: np.ndarray) -> np.ndarray:
        if self.query_basis_.shape[1] == 0:
            return np.ones((len(X), 1), dtype=np.float32)
        return ((np.asarray(X, dtype=np.float32) - self.query_mean_) @ self.query_basis_).astype(np.float32)

    def _llm_features(self, experts: Sequence[ExpertInfo]) -> tuple[np.ndarray, list[str]]:
        texts = [model_descriptor(e) for e in experts]
        emb = get_encoder(self.encoder).encode(texts)
        return np.hstack([emb, llm_numeric(experts)]).astype(np.float32), texts

    def _task_features(self, model: CategoryModel) -> np.ndarray:
        if model.source == "task":
            desc = get_encoder(self.encoder).encode([task_description(n) for n in model.names])
        else:
            desc = model.centroids
        return np.hstack([desc, model.centroids]).astype(np.float32)

    # ---- fitting ------------------------------------------------------------------------------------
    def _fit(self, train) -> None:
        import torch

        names = self.expert_names
        unknown = sorted(set(self.exclude_models) - set(names))
        if unknown:
            raise PolicyError(f"policy 'graphrouter': exclude_models {unknown} are not experts of this fit; experts: {names}")
        X, Y, known = self._prepare(train)
        excluded = np.array([n in set(self.exclude_models) for n in names])
        known = known & ~excluded[None, :]
        if not known.any():
            raise PolicyError("policy 'graphrouter': no known outcome left to learn from")
        costs = train.cost_matrix()
        self.cost_scale_ = float(np.median(costs[known])) if (costs[known] > 0).any() else 1.0
        cost_norm = np.log(np.clip(costs / self.cost_scale_, 1e-6, None))
        stage = "graph neural network"
        model, y = fit_categories(train, X, mode=self.categories, n_clusters=self.n_clusters, C=self.C, seed=self.random_state)
        folds = train.grouped_folds(5, seed=self.random_state) if len(train) >= 20 else []
        oof = cross_fitted_proba(train, X, y, model.n, folds, C=self.C, seed=self.random_state) if folds else np.eye(model.n)[y]
        self.categories_ = model
        self.task_x_ = self._task_features(model)
        self.llm_x_, self.descriptors_ = self._llm_features(self.experts_)
        self._fit_query_basis(X)
        self.train_x_, self.train_task_ = self._query_features(X), y
        self.effect_ = np.where(known, Y, np.nan).astype(np.float32)
        self.cost_norm_ = np.where(known, cost_norm, np.nan).astype(np.float32)
        self.seen_ = ~excluded
        fit_rows, val_rows = holdout_split(train, self.val_fraction, self.random_state)
        torch.manual_seed(self.random_state)
        self.net_ = build_net(self.train_x_.shape[1], self.task_x_.shape[1], self.llm_x_.shape[1], self.hidden, self.dropout)
        with single_thread():
            self.train_stats_ = self._train(oof, fit_rows, val_rows, stage)
            self._refresh_cache()

    def _train(self, oof: np.ndarray, fit_rows: np.ndarray, val_rows: np.ndarray, stage: str) -> dict[str, float]:
        import torch

        rng = np.random.default_rng(self.random_state)
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        effect = torch.as_tensor(np.nan_to_num(self.effect_))
        cost = torch.as_tensor(np.nan_to_num(self.cost_norm_))
        mask = torch.as_tensor(~np.isnan(self.effect_), dtype=torch.float32)
        bce = torch.nn.BCEWithLogitsLoss(reduction="none")
        seen = np.flatnonzero(self.seen_)
        # the hold-out as served: its queries new, every other query and LLM sending messages
        held_out = training_graph(self._nodes(), val_rows, oof, [], None, self.top_tasks) if len(val_rows) else None
        best, best_state, since, epochs_run = float("inf"), None, 0, 0
        for epoch in range(self.epochs):
            draw = rng.random(len(fit_rows))
            targets = fit_rows[draw < self.target_share]
            # a random share of the other queries sends messages this epoch (neighbour sampling);
            # the hold-out never does, and is not scored here either
            dropped = np.r_[fit_rows[draw >= self.target_share + (1 - self.target_share) * self.message_share], val_rows]
            unseen = [int(rng.choice(seen))] if len(seen) > 1 and rng.random() < self.unseen_llm_prob else []
            batch = training_graph(self._nodes(), targets, oof, unseen, dropped, self.top_tasks)
            self.net_.train()
            hs = self.net_.layers(*batch)
            t = torch.as_tensor(targets)
            pred = self.net_.score(hs[-1][Q][t], hs[-1][L])
            m = mask[t]
            err = bce(pred[..., 0], effect[t]) + self.cost_weight * (pred[..., 1] - cost[t]) ** 2
            loss = (err * m).sum() / m.sum().clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            epochs_run = epoch + 1
            report(stage, epochs_run, self.epochs)
            if held_out is None or epochs_run < self.min_epochs or epochs_run % self.eval_every:
                continue
            val = self._routing_loss(held_out, val_rows, effect, mask)
            if val < best - 1e-6:
                best, since = val, 0
                best_state = copy.deepcopy(self.net_.state_dict())
            else:
                since += self.eval_every
                if since >= self.patience:
                    break
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.net_.eval()
        report(stage, epochs_run, epochs_run)
        return {"epochs": float(epochs_run), "val_loss": best if best_state is not None else float("nan")}

    def _routing_loss(self, graph, rows: np.ndarray, effect, mask) -> float:
        """Mean squared error of the predicted effect differences between a query's LLMs (each
        query's predictions and outcomes centred on their mean over its known LLMs): a constant
        per query, which no routing decision reads, costs nothing."""
        import torch

        self.net_.eval()
        with torch.no_grad():
            t = torch.as_tensor(rows)
            hs = self.net_.layers(*graph)
            p = torch.sigmoid(self.net_.score(hs[-1][Q][t], hs[-1][L])[..., 0])
        return routing_error(p, effect[t], mask[t])

    def _nodes(self) -> GraphNodes:
        return GraphNodes(self.train_x_, self.task_x_, self.llm_x_, self.train_task_, self.effect_, self.cost_norm_, self.seen_)

    def _refresh_cache(self) -> None:
        """Task and LLM node states of the full training graph (every query a message query)."""
        import torch

        with torch.no_grad(), single_thread():
            self.net_.eval()
            hs = self.net_.layers(*training_graph(self._nodes(), np.zeros(0, dtype=np.int64), np.zeros((0, self.categories_.n)), []))
            self.cache_ = [{T: h[T].detach(), L: h[L].detach()} for h in hs]
            self.fast_ = compile_query_side(self.net_, self.cache_, self.seen_, len(self.llm_x_))

    # ---- prediction -----------------------------------------------------------------------------
    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        self._check_fitted()
        out = self._predict(self.embed(prompts))
        return self.from_unit(out)

    def _predict(self, X: np.ndarray, batch: int = 2048) -> np.ndarray:
        """Effect probability of every (query, LLM) pair, through the compiled query side."""
        outs = []
        for start in range(0, len(X), batch):
            xb = X[start : start + batch]
            proba = self.categories_.proba(xb)
            k = min(self.top_tasks, proba.shape[1])
            cut = np.sort(proba, axis=1)[:, -k][:, None]
            weights = np.where(proba >= cut, proba, 0.0).astype(np.float32)  # the top-k task edges
            outs.append(predict_compiled(self.fast_, self._query_features(xb), weights))
        return np.concatenate(outs) if outs else np.zeros((0, len(self.llm_x_)))

    def _predict_graph(self, X: np.ndarray, batch: int = 2048) -> np.ndarray:
        """The same through torch-geometric's layers (reference for ``_predict``; tests)."""
        import torch

        m = self.llm_x_.shape[0]
        outs = []
        with torch.no_grad(), single_thread():
            for start in range(0, len(X), batch):
                xb = X[start : start + batch]
                n = len(xb)
                proba = self.categories_.proba(xb)
                k = min(self.top_tasks, proba.shape[1])
                top = np.argsort(-proba, axis=1)[:, :k]
                tq_q = np.repeat(np.arange(n), k)
                senders = np.flatnonzero(self.seen_)
                edges = {E_TQ: torch.as_tensor(np.stack([top.ravel(), tq_q]).astype(np.int64)),
                         E_LQ: torch.as_tensor(np.stack([np.tile(senders, n), np.repeat(np.arange(n), len(senders))]).astype(np.int64))}
                attrs = {E_TQ: torch.as_tensor(np.take_along_axis(proba, top, axis=1).reshape(-1, 1).astype(np.float32)),
                         E_LQ: torch.zeros((n * len(senders), 3))}
                hs = self.net_.layers({Q: torch.as_tensor(self._query_features(xb))}, edges, attrs, cached=self.cache_)
                pred = self.net_.score(hs[-1][Q], self.cache_[-1][L])
                outs.append(torch.sigmoid(pred[..., 0]).numpy())
        return np.concatenate(outs) if outs else np.zeros((0, m))

    # ---- serving experts it was not trained on ---------------------------------------------------
    def for_experts(self, experts: Sequence[ExpertInfo], expert_map: Mapping[str, str]) -> MappedPolicy:
        """Live experts: mapped ones use their trained model's node; every other expert gets a new
        LLM node from its config description, price and size (scored from the descriptor alone)."""
        self._check_fitted()
        expert_map = dict(expert_map or {})
        if expert_map:
            check_expert_map(expert_map, self.expert_names, experts, policy=self.name)
        mapped = set(expert_map.values())
        unmapped = [e for e in experts if e.name not in mapped]
        trained = set(self.expert_names)
        # a new node is named after its expert; "@live" keeps it apart from a trained model of that name
        nodes = [e if e.name not in trained else replace(e, name=f"{e.name}@live") for e in unmapped]
        policy = self.with_new_llms(nodes)
        full_map = {**expert_map, **{node.name: e.name for node, e in zip(nodes, unmapped)}}
        return MappedPolicy(policy, experts, full_map)

    def with_new_llms(self, new: Sequence[ExpertInfo]) -> GraphRouterPolicy:
        """A copy with extra LLM nodes (no observed edges), scored from their descriptors."""
        self._check_fitted()
        policy = copy.copy(self)
        if not new:
            return policy
        feats, texts = self._llm_features(new)
        policy.experts_ = [*self.experts_, *new]
        policy.llm_x_ = np.vstack([self.llm_x_, feats])
        policy.descriptors_ = [*self.descriptors_, *texts]
        n = len(self.train_x_)
        policy.effect_ = np.hstack([self.effect_, np.full((n, len(new)), np.nan, dtype=np.float32)])
        policy.cost_norm_ = np.hstack([self.cost_norm_, np.full((n, len(new)), np.nan, dtype=np.float32)])
        policy.seen_ = np.r_[self.seen_, np.zeros(len(new), dtype=bool)]
        policy.mean_quality_ = np.r_[self.mean_quality_, np.full(len(new), float(np.mean(self.mean_quality_)))]
        from policies.costs import CostModel

        fresh = CostModel.from_prices(new)
        policy.cost_model_ = CostModel(self.cost_model_.kind, np.r_[self.cost_model_.intercept, fresh.intercept],
                                       np.r_[self.cost_model_.slope, fresh.slope])
        policy._refresh_cache()
        return policy

    # ---- artifacts ------------------------------------------------------------------------------
    def _get_state(self):
        arrays, meta = self._embedding_state()
        cat_arrays, cat_meta = self.categories_.state()
        arrays.update(net_state(self.net_))
        arrays.update(cat_arrays, task_x=self.task_x_, llm_x=self.llm_x_, train_x=self.train_x_,
                      query_mean=self.query_mean_, query_basis=self.query_basis_, train_task=self.train_task_,
                      effect=self.effect_, cost_norm=self.cost_norm_, seen=self.seen_)
        meta.update(categories=cat_meta, descriptors=list(self.descriptors_), cost_scale=self.cost_scale_,
                    train={k: float(v) for k, v in self.train_stats_.items()})
        return arrays, meta

    def _set_state(self, arrays, meta):
        self._set_embedding_state(arrays, meta)
        self.categories_ = CategoryModel.from_state(arrays, meta["categories"])
        self.task_x_ = np.asarray(arrays["task_x"], dtype=np.float32)
        self.llm_x_ = np.asarray(arrays["llm_x"], dtype=np.float32)
        self.train_x_ = np.asarray(arrays["train_x"], dtype=np.float32)
        self.query_mean_ = np.asarray(arrays["query_mean"], dtype=np.float32)
        self.query_basis_ = np.asarray(arrays["query_basis"], dtype=np.float32)
        self.train_task_ = np.asarray(arrays["train_task"], dtype=np.int64)
        self.effect_ = np.asarray(arrays["effect"], dtype=np.float32)
        self.cost_norm_ = np.asarray(arrays["cost_norm"], dtype=np.float32)
        self.seen_ = np.asarray(arrays["seen"], dtype=bool)
        m = len(self.experts_)
        if self.llm_x_.shape[0] != m or self.effect_.shape != (len(self.train_x_), m):
            raise ValueError(f"graph has {self.llm_x_.shape[0]} LLM nodes and outcomes {self.effect_.shape}; expected {m} experts")
        self.descriptors_ = list(meta["descriptors"])
        self.cost_scale_ = float(meta["cost_scale"])
        self.train_stats_ = dict(meta.get("train") or {})
        self.net_ = build_net(self.train_x_.shape[1], self.task_x_.shape[1], self.llm_x_.shape[1], self.hidden, self.dropout)
        load_net_state(self.net_, arrays)
        self._refresh_cache()

