"""GraphRouter's network (torch-geometric) and its query side compiled to plain matrices.

``build_net`` makes the heterogeneous GNN trained by ``policies.graphrouter``. At serving time a
new query's only neighbours are task nodes (weighted by the classifier's probabilities) and the
LLM nodes that send messages (with masked attributes, so their message is the same for every
query), so with the task and LLM states of the training graph cached each layer reduces to
``act(P·A + c + B·h)``: ``compile_query_side`` extracts those matrices once and ``predict_compiled``
runs them in numpy (a single decision went from ~13 ms through the graph layers to well under 1 ms).
"""

from __future__ import annotations

import numpy as np

Q, T, L = "query", "task", "llm"
E_TQ, E_QT, E_LQ, E_QL = (T, "has", Q), (Q, "in", T), (L, "serves", Q), (Q, "rates", L)
E_LT, E_TL = (L, "scores", T), (T, "scored", L)


def build_net(dq: int, dt: int, dl: int, hidden: int, dropout: float = 0.0):
    import torch
    from torch_geometric.nn import HeteroConv, MessagePassing

    class EdgeConditionedConv(MessagePassing):
        """message = W₀·x_j + Σ_k attr_k · W_k·x_j (mean over senders), plus a linear map of the receiver."""

        def __init__(self, dim: int, edge_dim: int) -> None:
            super().__init__(aggr="mean", node_dim=0)
            self.k = edge_dim + 1
            self.dim = dim
            self.lin_src = torch.nn.Linear(dim, self.k * dim)
            self.lin_dst = torch.nn.Linear(dim, dim, bias=False)

        def forward(self, x, edge_index, edge_attr):
            src, dst = x
            xs = self.lin_src(src).view(-1, self.k, self.dim)
            out = self.propagate(edge_index, xs=xs, edge_attr=edge_attr, size=(src.shape[0], dst.shape[0]))
            return out + self.lin_dst(dst)

        def message(self, xs_j, edge_attr):
            coeff = torch.cat([torch.ones_like(edge_attr[:, :1]), edge_attr], dim=1)
            return (xs_j * coeff.unsqueeze(-1)).sum(dim=1)

    class WeightedConv(MessagePassing):
        """message = w · W·x_j, summed: with probabilities as weights, the expected sender state."""

        def __init__(self, dim: int) -> None:
            super().__init__(aggr="sum", node_dim=0)
            self.lin_src = torch.nn.Linear(dim, dim)
            self.lin_dst = torch.nn.Linear(dim, dim, bias=False)

        def forward(self, x, edge_index, edge_attr):
            src, dst = x
            out = self.propagate(edge_index, xs=self.lin_src(src), edge_attr=edge_attr, size=(src.shape[0], dst.shape[0]))
            return out + self.lin_dst(dst)

        def message(self, xs_j, edge_attr):
            return xs_j * edge_attr[:, :1]

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.ModuleDict({Q: torch.nn.Linear(dq, hidden), T: torch.nn.Linear(dt, hidden),
                                             L: torch.nn.Linear(dl, hidden)})
            self.convs = torch.nn.ModuleList([
                HeteroConv({E_TQ: WeightedConv(hidden), E_QT: EdgeConditionedConv(hidden, 1),
                            E_LQ: EdgeConditionedConv(hidden, 3), E_QL: EdgeConditionedConv(hidden, 3),
                            E_LT: EdgeConditionedConv(hidden, 3), E_TL: EdgeConditionedConv(hidden, 3)}, aggr="sum")
                for _ in range(2)
            ])
            self.head = torch.nn.Sequential(torch.nn.Linear(3 * hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                                            torch.nn.Linear(hidden, 2))
            self.drop = torch.nn.Dropout(dropout)

        def layers(self, x, edge_index, edge_attr, cached=None):
            """Node states per layer [h0, h1, h2]; ``cached`` supplies task/LLM states by layer."""
            h = {k: self.proj[k](self.drop(v) if k == Q else v) for k, v in x.items()}
            if cached is not None:
                h = {**cached[0], **h}
            out = [h]
            for i, conv in enumerate(self.convs):
                new = conv(h, edge_index, edge_attr_dict=edge_attr)
                new = {k: (torch.relu(v) if i == 0 else v) for k, v in new.items()}
                h = {**(cached[i + 1] if cached is not None else {}), **{k: v for k, v in new.items()
                                                                        if cached is None or k == Q}}
                out.append(h)
            return out

        def score(self, hq, hl):
            """(n_queries, n_llms, 2): effect logit and normalised log cost for every pair."""
            n, m = hq.shape[0], hl.shape[0]
            a = hq.unsqueeze(1).expand(n, m, -1)
            b = hl.unsqueeze(0).expand(n, m, -1)
            return self.head(torch.cat([a, b, a * b], dim=-1))

    return Net()


def compile_query_side(net, cache: list[dict], seen: np.ndarray, n_llms: int) -> dict:
    """The query side of ``net`` as matrices, given the cached task/LLM states of every layer and
    which LLMs send messages (``seen``: those with observed edges)."""
    import torch

    def arr(t):
        return t.detach().cpu().numpy().astype(np.float32)

    senders = np.flatnonzero(seen)
    layers = []
    with torch.no_grad():
        for i, conv in enumerate(net.convs):
            tq, lq = conv.convs[E_TQ], conv.convs[E_LQ]
            A = arr(tq.lin_src(cache[i][T]))
            xs = arr(lq.lin_src(cache[i][L])).reshape(n_llms, lq.k, lq.dim)[:, 0, :]
            c = xs[senders].mean(axis=0) if len(senders) else np.zeros(lq.dim, dtype=np.float32)
            B = arr(tq.lin_dst.weight) + arr(lq.lin_dst.weight)
            layers.append((A, c, B.T))
        lin1, lin2 = net.head[0], net.head[3]
        h = net.proj[Q]
        W1 = arr(lin1.weight).T  # (3H, H)
        hid = W1.shape[1]
        hl = arr(cache[-1][L])
        return {"proj_w": arr(h.weight).T, "proj_b": arr(h.bias), "layers": layers,
                "w_q": W1[:hid], "w_ql": W1[2 * hid :], "llm_term": hl @ W1[hid : 2 * hid] + arr(lin1.bias),
                "llm_state": hl, "w_out": arr(lin2.weight)[0], "b_out": float(arr(lin2.bias)[0])}


def predict_compiled(f: dict, query_features: np.ndarray, task_weights: np.ndarray) -> np.ndarray:
    """Effect probability of every (query, LLM) pair: ``task_weights`` are the new queries' edge
    weights to the task nodes (zero outside their top tasks)."""
    h = query_features @ f["proj_w"] + f["proj_b"]
    for i, (A, c, Bt) in enumerate(f["layers"]):
        h = task_weights @ A + c + h @ Bt
        if i == 0:
            h = np.maximum(h, 0.0)
    z = (h @ f["w_q"])[:, None, :] + f["llm_term"][None, :, :] + (h[:, None, :] * f["llm_state"][None]) @ f["w_ql"]
    logit = np.maximum(z, 0.0) @ f["w_out"] + f["b_out"]
    return 1.0 / (1.0 + np.exp(-logit))
