"""Graph networks: Kipf normalization vs the dense formula, aggregations, permutation equivariance/invariance."""

import pytest
import torch

from mlcanon.nn import GNN, GATConv, GCNConv, SAGEConv, global_pool, normalized_adjacency, to_dense_adjacency


def _graph(n=7, p=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.rand(n, n, generator=g).triu(1)
    upper = (r > 0) & (r < p)  # strictly upper triangle: no self-loops
    A = (upper | upper.T).float()  # undirected
    return A.nonzero().T.contiguous(), torch.randn(n, 5, generator=g)


def _permute(edge_index, x, perm):
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))  # node perm[k] becomes node k
    return inv[edge_index], x[perm]


def test_gcn_equals_dense_kipf_formula():
    torch.manual_seed(0)
    ei, x = _graph()
    conv = GCNConv(5, 3)
    A = to_dense_adjacency(ei, 7)
    A_hat = A + torch.eye(7)
    D = torch.diag(A_hat.sum(1) ** -0.5)
    torch.testing.assert_close(normalized_adjacency(A), D @ A_hat @ D)  # D^-1/2 (A + I) D^-1/2
    torch.testing.assert_close(conv(x, ei), D @ A_hat @ D @ x @ conv.lin.weight.T + conv.bias)
    A_loop = A.clone()
    A_loop[0, 0] = 1.0  # a self-loop in A: A + I has a 2 there
    ei_loop = torch.cat([ei, torch.tensor([[0], [0]])], 1)
    torch.testing.assert_close(conv(x, ei_loop), normalized_adjacency(A_loop) @ conv.lin(x) + conv.bias)
    # the normalized adjacency has spectrum in (-1, 1]; its top eigenvector is D^1/2 1
    evals = torch.linalg.eigvalsh(normalized_adjacency(A))
    assert evals.max() == pytest.approx(1.0, abs=1e-5) and evals.min() > -1


@pytest.mark.parametrize("aggr", ["mean", "max", "sum"])
def test_neighbour_aggregation_matches_a_loop(aggr):
    torch.manual_seed(0)
    ei, x = _graph()
    conv = SAGEConv(5, 3, aggr)
    A = to_dense_adjacency(ei, 7)
    rows = []
    for i in range(7):
        nb = x[A[i] > 0]
        agg = torch.zeros(5) if len(nb) == 0 else {"mean": nb.mean(0), "max": nb.max(0).values,
                                                      "sum": nb.sum(0)}[aggr]
        rows.append(conv.lin_self(x[i]) + conv.lin_nbr(agg))
    torch.testing.assert_close(conv(x, ei), torch.stack(rows))


def test_gat_attention_is_a_softmax_over_the_neighbourhood():
    torch.manual_seed(0)
    ei, x = _graph()
    gat = GATConv(5, 4, heads=2)
    out = gat(x, ei)
    assert out.shape == (7, 8)
    A_hat = to_dense_adjacency(ei, 7) + torch.eye(7)
    z = gat.lin(x).view(7, 2, 4)
    for h in range(2):  # dense re-derivation: e_ij = LeakyReLU(a^T [z_i || z_j]) over j in N(i) u {i}
        e = (z[:, h] @ gat.att_dst[h])[:, None] + (z[:, h] @ gat.att_src[h])[None, :]
        e = torch.nn.functional.leaky_relu(e, 0.2).masked_fill(A_hat == 0, float("-inf"))
        alpha = torch.softmax(e, dim=1)
        torch.testing.assert_close(out[:, 4 * h: 4 * h + 4], alpha @ z[:, h] + gat.bias[4 * h: 4 * h + 4])


@pytest.mark.parametrize("conv", ["gcn", "sage-mean", "sage-max", "gat"])
def test_node_outputs_are_equivariant_and_readout_invariant(conv):
    torch.manual_seed(0)
    ei, x = _graph()
    perm = torch.randperm(7)
    ei_p, x_p = _permute(ei, x, perm)
    node = GNN(5, 8, 3, num_layers=2, conv=conv, task="node")
    torch.testing.assert_close(node(x_p, ei_p), node(x, ei)[perm])  # f(P x) = P f(x)
    for readout in ("mean", "sum", "max"):
        graph = GNN(5, 8, 3, num_layers=2, conv=conv, task="graph", readout=readout)
        torch.testing.assert_close(graph(x_p, ei_p), graph(x, ei))  # g(P x) = g(x)
    edge = GNN(5, 8, 1, conv=conv, task="edge")
    pairs = torch.tensor([[0, 2, 5], [1, 6, 3]])
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(7)
    torch.testing.assert_close(edge(x_p, ei_p, edge_pairs=inv[pairs]), edge(x, ei, edge_pairs=pairs))


def test_batched_graph_readout():
    x = torch.arange(10.0).view(5, 2)
    batch = torch.tensor([0, 0, 1, 1, 1])
    torch.testing.assert_close(global_pool(x, batch, mode="mean"), torch.stack([x[:2].mean(0), x[2:].mean(0)]))
    torch.testing.assert_close(global_pool(x, batch, mode="max"), torch.stack([x[1], x[4]]))
    torch.testing.assert_close(global_pool(x, batch, mode="sum"), torch.stack([x[:2].sum(0), x[2:].sum(0)]))


def test_bad_graph_inputs():
    with pytest.raises(ValueError, match="outside"):
        GCNConv(2, 2)(torch.randn(3, 2), torch.tensor([[0, 5], [1, 0]]))
    with pytest.raises(ValueError, match="edge_pairs"):
        GNN(2, 4, 1, task="edge")(torch.randn(3, 2), torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="conv"):
        GNN(2, 4, 1, conv="gin")


def test_gcn_learns_node_labels_from_neighbours():
    # two communities; a node's label is its community, features are noisy copies of it
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 40
    y = torch.arange(n) % 2
    same = (y[:, None] == y[None, :]) & (torch.rand(n, n, generator=g) < 0.4)
    A = (same.triu(1) | same.triu(1).T)
    ei = A.nonzero().T.contiguous()
    x = (2 * y - 1).float()[:, None] * 0.5 + torch.randn(n, 1, generator=g)  # weak signal per node
    net = GNN(1, 16, 2, num_layers=2, conv="gcn")
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(net(x, ei), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    acc_gcn = (net(x, ei).argmax(1) == y).float().mean()
    acc_node_only = ((x[:, 0] > 0).long() == y).float().mean()  # best rule from the node's own feature
    assert acc_gcn >= 0.95 > acc_node_only
