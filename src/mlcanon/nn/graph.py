"""Graph neural networks on ``edge_index`` [2, E] (row 0 = source j, row 1 = target i; messages go j -> i).

- GCN (Kipf & Welling 2017): H' = sigma(D^-1/2 (A + I) D^-1/2 H W), D the degree matrix of A + I; per edge
  the message from j to i is weighted by 1 / sqrt(deg_i deg_j).
- Neighbourhood aggregation (GraphSAGE-style, Hamilton et al. 2017):
  h_i' = W_self h_i + W_nbr AGG_{j in N(i)} h_j, AGG = mean | max | sum (a node with no neighbour gets 0).
- Attention aggregation (GAT, Velickovic et al. 2018): z = W h; e_ij = LeakyReLU(a^T [z_i || z_j]);
  alpha_ij = softmax_{j in N(i) u {i}} e_ij; h_i' = sum_j alpha_ij z_j (heads concatenated or averaged).
- Readouts: graph level = permutation-invariant pooling (mean/sum/max) of node states; node level = a
  linear head per node; edge level = a head on [h_u || h_v] for the asked pairs (u, v).
Node outputs are permutation-equivariant: relabelling nodes by P maps outputs to P outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GNN",
    "GATConv",
    "GCNConv",
    "SAGEConv",
    "add_self_loops",
    "global_pool",
    "normalized_adjacency",
    "to_dense_adjacency",
]


def _check_edges(edge_index: torch.Tensor, num_nodes: int) -> None:
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.dtype != torch.long:
        raise ValueError(f"edge_index must be a long tensor [2, E], got {edge_index.dtype} {list(edge_index.shape)}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise ValueError(f"edge_index refers to nodes outside 0..{num_nodes - 1}")


def to_dense_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """A [N, N] with A[i, j] = 1 for each edge j -> i."""
    _check_edges(edge_index, num_nodes)
    A = torch.zeros(num_nodes, num_nodes, device=edge_index.device)
    A[edge_index[1], edge_index[0]] = 1.0
    return A


def normalized_adjacency(A: torch.Tensor) -> torch.Tensor:
    """Dense Kipf normalization D^-1/2 (A + I) D^-1/2, D_ii = sum_j (A + I)_ij."""
    A_hat = A + torch.eye(A.shape[0], dtype=A.dtype, device=A.device)  # A + I
    d = A_hat.sum(1).rsqrt()  # D^-1/2
    return d[:, None] * A_hat * d[None, :]


def add_self_loops(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """edge_index with one (i, i) edge per node appended (existing self-loops removed first)."""
    keep = edge_index[0] != edge_index[1]
    loops = torch.arange(num_nodes, device=edge_index.device).repeat(2, 1)
    return torch.cat([edge_index[:, keep], loops], dim=1)


class GCNConv(nn.Module):
    """GCN layer H' = D^-1/2 (A + I) D^-1/2 H W + b (sparse, by message passing)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.lin = nn.Linear(in_features, out_features, bias=False)  # W
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """x [N, F_in] -> [N, F_out]."""
        N = x.shape[0]
        _check_edges(edge_index, N)
        loops = torch.arange(N, device=edge_index.device).repeat(2, 1)
        ei = torch.cat([edge_index, loops], dim=1)  # A + I, literally (a self-loop already in A counts twice)
        src, dst = ei
        deg = torch.zeros(N, dtype=x.dtype, device=x.device).index_add_(0, dst, torch.ones_like(dst, dtype=x.dtype))
        norm = deg[src].rsqrt() * deg[dst].rsqrt()  # 1 / sqrt(deg_i deg_j)
        h = self.lin(x)  # H W
        out = torch.zeros_like(h).index_add_(0, dst, norm[:, None] * h[src])  # sum_j Ahat_ij h_j
        return out if self.bias is None else out + self.bias


def _aggregate(msg: torch.Tensor, dst: torch.Tensor, N: int, aggr: str) -> torch.Tensor:
    out = msg.new_zeros(N, msg.shape[1])
    if aggr == "sum":
        return out.index_add_(0, dst, msg)  # sum_j h_j
    if aggr == "mean":
        cnt = msg.new_zeros(N).index_add_(0, dst, torch.ones_like(dst, dtype=msg.dtype)).clamp(min=1)
        return out.index_add_(0, dst, msg) / cnt[:, None]  # (1/|N(i)|) sum_j h_j
    idx = dst[:, None].expand_as(msg)
    return out.scatter_reduce(0, idx, msg, "amax", include_self=False)  # max_j h_j (0 if no neighbour)


class SAGEConv(nn.Module):
    """h_i' = W_self h_i + W_nbr AGG_{j in N(i)} h_j with AGG in {mean, max, sum}."""

    AGGREGATIONS = ("mean", "max", "sum")

    def __init__(self, in_features: int, out_features: int, aggr: str = "mean"):
        super().__init__()
        if aggr not in self.AGGREGATIONS:
            raise ValueError(f"SAGEConv: aggr must be one of {', '.join(self.AGGREGATIONS)}, got {aggr!r}")
        self.aggr = aggr
        self.lin_self = nn.Linear(in_features, out_features)  # W_self
        self.lin_nbr = nn.Linear(in_features, out_features, bias=False)  # W_nbr

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """x [N, F_in] -> [N, F_out]."""
        N = x.shape[0]
        _check_edges(edge_index, N)
        src, dst = edge_index
        agg = _aggregate(x[src], dst, N, self.aggr)
        return self.lin_self(x) + self.lin_nbr(agg)


def segment_softmax(scores: torch.Tensor, dst: torch.Tensor, N: int) -> torch.Tensor:
    """Softmax of per-edge scores [E, h] over the edges sharing a target node."""
    idx = dst[:, None].expand_as(scores)
    mx = scores.new_full((N, scores.shape[1]), float("-inf")).scatter_reduce(0, idx, scores, "amax")
    ex = torch.exp(scores - mx[dst])  # subtract the per-node max for stability
    den = torch.zeros_like(mx).index_add_(0, dst, ex)
    return ex / den[dst]


class GATConv(nn.Module):
    """Graph attention layer: alpha_ij = softmax_j LeakyReLU(a^T [W h_i || W h_j]), h_i' = sum_j alpha_ij W h_j."""

    def __init__(self, in_features: int, out_features: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2):
        super().__init__()
        self.heads, self.out_features, self.concat, self.slope = heads, out_features, concat, negative_slope
        self.lin = nn.Linear(in_features, heads * out_features, bias=False)  # W
        self.att_dst = nn.Parameter(torch.randn(heads, out_features) * 0.1)  # a, half that meets z_i
        self.att_src = nn.Parameter(torch.randn(heads, out_features) * 0.1)  # a, half that meets z_j
        self.bias = nn.Parameter(torch.zeros(heads * out_features if concat else out_features))
        self.last_alpha: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """x [N, F_in] -> [N, heads*F_out] (concat) or [N, F_out] (mean over heads)."""
        N = x.shape[0]
        _check_edges(edge_index, N)
        src, dst = add_self_loops(edge_index, N)  # N(i) u {i}
        z = self.lin(x).view(N, self.heads, self.out_features)  # z = W h
        e = (z[dst] * self.att_dst).sum(-1) + (z[src] * self.att_src).sum(-1)  # a^T [z_i || z_j]
        alpha = segment_softmax(F.leaky_relu(e, self.slope), dst, N)  # [E, heads]
        self.last_alpha = alpha.detach()
        out = z.new_zeros(N, self.heads, self.out_features).index_add_(0, dst, alpha[..., None] * z[src])
        out = out.reshape(N, -1) if self.concat else out.mean(1)
        return out + self.bias


def global_pool(x: torch.Tensor, batch: torch.Tensor | None = None, num_graphs: int | None = None,
                mode: str = "mean") -> torch.Tensor:
    """Graph readout: mean / sum / max of node states per graph ([N, F] -> [G, F]); invariant to node order."""
    if mode not in ("mean", "sum", "max"):
        raise ValueError(f"global_pool: mode must be mean, sum or max, got {mode!r}")
    if batch is None:
        batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    G = int(batch.max()) + 1 if num_graphs is None else num_graphs
    return _aggregate(x, batch, G, mode)


class GNN(nn.Module):
    """Stack of graph layers with a node-, graph- or edge-level head.

    ``conv``: gcn | sage-mean | sage-max | sage-sum | gat. ``task``: node ([N, out]), graph ([G, out], pooled
    by ``readout``) or edge ([P, out] for the pairs given as ``edge_pairs`` [2, P]).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, num_layers: int = 2,
                 conv: str = "gcn", task: str = "node", readout: str = "mean", heads: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if task not in ("node", "graph", "edge"):
            raise ValueError(f"GNN: task must be node, graph or edge, got {task!r}")
        if num_layers < 1:
            raise ValueError(f"GNN: num_layers must be >= 1, got {num_layers}")
        self.task, self.readout, self.dropout = task, readout, dropout
        layers = []
        d = in_features
        for _ in range(num_layers):
            if conv == "gcn":
                layers.append(GCNConv(d, hidden))
            elif conv.startswith("sage-"):
                layers.append(SAGEConv(d, hidden, conv.split("-", 1)[1]))
            elif conv == "gat":
                layers.append(GATConv(d, hidden // heads if hidden % heads == 0 else hidden, heads,
                                      concat=hidden % heads == 0))
            else:
                raise ValueError(f"GNN: conv must be gcn, sage-mean, sage-max, sage-sum or gat, got {conv!r}")
            d = hidden
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(2 * hidden if task == "edge" else hidden, out_features)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None,
                edge_pairs: torch.Tensor | None = None, num_graphs: int | None = None) -> torch.Tensor:
        """Node features [N, F] and edges [2, E] -> node, graph or edge outputs."""
        h = x
        for layer in self.layers:
            h = F.relu(layer(h, edge_index))  # h^{l+1} = relu(conv(h^l))
            h = F.dropout(h, self.dropout, self.training)
        if self.task == "node":
            return self.head(h)
        if self.task == "graph":
            return self.head(global_pool(h, batch, num_graphs, self.readout))
        if edge_pairs is None:
            raise ValueError("GNN(task='edge') needs edge_pairs= [2, P], the node pairs to score")
        return self.head(torch.cat([h[edge_pairs[0]], h[edge_pairs[1]]], dim=1))  # head([h_u || h_v])
