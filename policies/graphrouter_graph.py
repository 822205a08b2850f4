"""The GraphRouter graph: node features of LLMs and the training graph's edges and attributes
(query ↔ task, query ↔ LLM, task ↔ LLM) in the order the network's ``layers`` takes them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.types import ExpertInfo
from policies.graphrouter_net import E_LQ, E_LT, E_QL, E_QT, E_TL, E_TQ, L, Q, T


def llm_numeric(experts: Sequence[ExpertInfo]) -> np.ndarray:
    """log10 parameters (B) and log10 prices (USD per 1M tokens), with a flag for unknown size."""
    rows = []
    for e in experts:
        size = np.log10(e.params_b) if e.params_b else 0.0
        rows.append([size / 2.0, float(e.params_b is None), np.log10(1.0 + e.input_usd_per_mtok),
                     np.log10(1.0 + e.output_usd_per_mtok)])
    return np.asarray(rows, dtype=np.float32)


@dataclass(frozen=True)
class GraphNodes:
    """What the training graph is built from: node features and the observed query–LLM outcomes
    (NaN where unknown); ``seen`` marks the LLMs that have observations to send."""

    train_x: np.ndarray  # query nodes (one per training row)
    task_x: np.ndarray
    llm_x: np.ndarray
    train_task: np.ndarray  # each training query's category
    effect: np.ndarray
    cost_norm: np.ndarray
    seen: np.ndarray


def training_graph(nodes: GraphNodes, targets: np.ndarray, oof: np.ndarray, unseen: Sequence[int],
                   dropped: np.ndarray | None = None, top_tasks: int = 3):
    """Node features, edges and edge attributes of the training graph (one query node per
    training row), with the ``targets`` rows masked as new queries (linked to their ``top_tasks``
    predicted categories in ``oof``) and the ``unseen`` LLMs stripped of every observed edge.
    Returned in the order ``Net.layers`` takes."""
    import torch

    n, m = nodes.effect.shape
    is_target = np.zeros(n, dtype=bool)
    is_target[targets] = True
    silent = is_target.copy()
    if dropped is not None:
        silent[dropped] = True
    msg = np.flatnonzero(~silent)
    observed = ~np.isnan(nodes.effect)
    llm_ok = nodes.seen.copy()
    llm_ok[list(unseen)] = False
    # query -> task (messages only from message queries, to their own category)
    qt_src, qt_dst = msg, nodes.train_task[msg]
    # task -> query: message queries from their category; targets from top predicted ones
    tq_dst, tq_dst_t, tq_attr = [msg], [nodes.train_task[msg]], [np.ones(len(msg))]
    if len(targets):
        k = min(top_tasks, oof.shape[1])
        top = np.argsort(-oof[targets], axis=1)[:, :k]
        tq_dst.append(np.repeat(targets, k))
        tq_dst_t.append(top.ravel())
        tq_attr.append(np.take_along_axis(oof[targets], top, axis=1).ravel())
    tq_q, tq_t, tq_a = np.concatenate(tq_dst), np.concatenate(tq_dst_t), np.concatenate(tq_attr)
    # query <-> llm: observed attributes from message queries to seen LLMs, zeros otherwise
    obs = observed & ~silent[:, None] & llm_ok[None, :]
    ql_q, ql_l = np.nonzero(obs)
    ql_attr = np.stack([nodes.effect[ql_q, ql_l], nodes.cost_norm[ql_q, ql_l], np.ones(len(ql_q))], axis=1)
    # An LLM without observations (held out this epoch, excluded, or added for serving) sends
    # no messages: a new LLM node never changes the scores of the others.
    senders = np.flatnonzero(llm_ok)
    active = np.r_[msg, np.flatnonzero(is_target)]  # queries that take part this time
    lq_q, lq_l = active.repeat(len(senders)), np.tile(senders, len(active))
    lq_attr = np.zeros((len(lq_q), 3), dtype=np.float32)
    o = obs[lq_q, lq_l]
    lq_attr[o] = np.stack([nodes.effect[lq_q[o], lq_l[o]], nodes.cost_norm[lq_q[o], lq_l[o]], np.ones(o.sum())], axis=1)

    # task <-> llm: the LLM's mean effect and cost over the task's message queries
    k = nodes.task_x.shape[0]
    onehot = np.zeros((n, k), dtype=np.float32)
    onehot[msg, nodes.train_task[msg]] = 1.0
    cnt = onehot.T @ obs.astype(np.float32)
    mean_eff = (onehot.T @ np.where(obs, nodes.effect, 0.0)) / np.maximum(cnt, 1.0)
    mean_cost = (onehot.T @ np.where(obs, nodes.cost_norm, 0.0)) / np.maximum(cnt, 1.0)
    lt_t, lt_l = np.divmod(np.arange(k * m), m)
    has = (cnt > 0).astype(np.float32)
    lt_attr = np.stack([mean_eff[lt_t, lt_l], mean_cost[lt_t, lt_l], has[lt_t, lt_l]], axis=1)
    lt_send = llm_ok[lt_l]  # task -> llm edges reach every LLM; llm -> task only from senders

    def ei(a, b):
        return torch.as_tensor(np.stack([a, b]).astype(np.int64))

    def fa(a):
        return torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(len(a), -1))

    x = {Q: torch.as_tensor(nodes.train_x), T: torch.as_tensor(nodes.task_x), L: torch.as_tensor(nodes.llm_x)}
    edges = {E_QT: ei(qt_src, qt_dst), E_TQ: ei(tq_t, tq_q), E_QL: ei(ql_q, ql_l), E_LQ: ei(lq_l, lq_q),
             E_LT: ei(lt_l[lt_send], lt_t[lt_send]), E_TL: ei(lt_t, lt_l)}
    attrs = {E_QT: fa(np.ones(len(qt_src))), E_TQ: fa(tq_a), E_QL: fa(ql_attr), E_LQ: fa(lq_attr),
             E_LT: fa(lt_attr[lt_send]), E_TL: fa(lt_attr)}
    return x, edges, attrs
