"""Graph convolutional networks: node classification (``gcn-karate``) and graph classification (``gcn-graphs``).

Both use :class:`mlcanon.nn.graph.GNN` with Kipf & Welling's layer H' = relu(D^-1/2 (A + I) D^-1/2 H W).

- ``gcn-karate``: Zachary's karate club (``networkx.karate_club_graph()``, 34 members, label = the
  ``club`` attribute after the split, "Mr. Hi" = 0 / "Officer" = 1). Semi-supervised as in Kipf & Welling:
  one-hot node features X = I, only 4 labelled nodes (the two leaders 0 and 33 plus one member of each
  club, fixed: ``LABELLED``), cross-entropy on those, accuracy reported on the 30 unlabelled nodes.
  networkx is an optional extra (``pip install 'mlcanon[graph]'``).
- ``gcn-graphs``: classify randomly generated graphs as cycle / path / star / random tree (nodes shuffled,
  ``min_nodes``..``max_nodes`` nodes; a node's only feature is its one-hot degree, capped at ``MAX_DEGREE``,
  the usual input for graphs without attributes), so only the structure tells them apart. Graph readout:
  mean pooling of node states. Needs only torch.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import matplotlib
import torch
import torch.nn.functional as F
from torch import nn

from mlcanon.config import option
from mlcanon.errors import UserError
from mlcanon.nn.graph import GNN
from mlcanon.registry import EvalOptions, SampleOptions, config_of, register
from mlcanon.runs import Run, load_weights
from mlcanon.training import TensorBatches, TrainConfig, Trainer, evaluate_in_batches

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt

CLUBS = ("Mr. Hi", "Officer")
LABELLED = (0, 1, 32, 33)  # the two leaders (0: Mr. Hi, 33: the officer) and one more member of each club
GRAPH_CLASSES = ("cycle", "path", "star", "tree")
MAX_DEGREE = 8  # node feature: one-hot of min(degree, MAX_DEGREE)


def _networkx():
    try:
        import networkx
    except ImportError:
        raise UserError("this needs networkx, an optional extra: pip install 'mlcanon[graph]' "
                        "(or pip install networkx)") from None
    return networkx


def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict:
    """{"loss": mean -log softmax(z)_y, "accuracy": fraction right} of a batch of logits [B, K]."""
    B = y.shape[0]
    assert logits.shape[0] == B and logits.dim() == 2, (logits.shape, y.shape)
    return {"loss": F.cross_entropy(logits.float(), y), "accuracy": (logits.argmax(-1) == y).float().mean()}


# ============================================================================================ karate club
@dataclasses.dataclass
class KarateConfig(TrainConfig):
    """Semi-supervised node classification on Zachary's karate club with a 2-layer GCN."""

    dataset: str = option("karate", "graph: karate (Zachary's karate club, via networkx)", choices=("karate",))
    hidden: int = option(16, "GCN hidden units", min=1)
    layers: int = option(2, "GCN layers", min=1)
    dropout: float = option(0.5, "dropout on hidden node states", min=0.0, max=0.99)
    epochs: int = option(200, "full-batch training steps (each epoch is one step over the 4 labelled nodes)",
                         min=1)
    batch_size: int = option(4, "labelled nodes per step (4 = full batch)", min=1, max=len(LABELLED))
    lr: float = option(0.01, "learning rate", min=0.0)
    weight_decay: float = option(5e-4, "L2 penalty (Kipf & Welling use 5e-4)", min=0.0)


def karate_graph() -> tuple[torch.Tensor, torch.Tensor, int]:
    """(edge_index [2, 2*78] both directions, club labels [34] (0 Mr. Hi, 1 Officer), number of nodes)."""
    nx = _networkx()
    G = nx.karate_club_graph()
    N = G.number_of_nodes()
    edges = torch.tensor(list(G.edges()), dtype=torch.long).T
    edge_index = torch.cat([edges, edges.flip(0)], dim=1)  # undirected: j -> i and i -> j
    y = torch.tensor([CLUBS.index(G.nodes[i]["club"]) for i in range(N)], dtype=torch.long)
    return edge_index, y, N


class NodeClassifier(nn.Module):
    """A GNN over one fixed graph; ``forward(node_ids [B])`` returns the logits of those nodes [B, K]."""

    def __init__(self, features: torch.Tensor, edge_index: torch.Tensor, hidden: int, num_classes: int,
                 layers: int, dropout: float):
        super().__init__()
        self.register_buffer("features", features, persistent=False)
        self.register_buffer("edge_index", edge_index, persistent=False)
        self.gnn = GNN(features.shape[1], hidden, num_classes, layers, conv="gcn", task="node", dropout=dropout)

    def all_logits(self) -> torch.Tensor:
        """[N, K] logits for every node (the whole graph is propagated each call)."""
        return self.gnn(self.features, self.edge_index)

    def forward(self, node_ids: torch.Tensor) -> torch.Tensor:
        return self.all_logits()[node_ids]


def karate_model(config: KarateConfig) -> tuple[NodeClassifier, torch.Tensor]:
    """(model with X = I as node features, club labels [34])."""
    edge_index, y, N = karate_graph()
    model = NodeClassifier(torch.eye(N), edge_index, config.hidden, len(CLUBS), config.layers, config.dropout)
    return model, y


def _karate_metrics(model: NodeClassifier, y: torch.Tensor) -> dict:
    with torch.no_grad():
        pred = model.eval().all_logits().argmax(-1).cpu()
    unl = torch.ones(len(y), dtype=torch.bool)
    unl[list(LABELLED)] = False
    return {"accuracy": float((pred[unl] == y[unl]).float().mean()),   # the 30 unlabelled nodes
            "accuracy_all_nodes": float((pred == y).float().mean()), "pred": pred}


def train_karate(config: KarateConfig, run: Run | None = None) -> dict:
    """Train on the 4 labelled nodes; test/accuracy is on the 30 unlabelled ones (no validation set)."""
    run = Run.start("gcn-karate", config, run)
    model, y = karate_model(config)
    trainer = Trainer(model, config, run)
    ids = torch.tensor(LABELLED)
    fit = trainer.fit(lambda b: classification_metrics(model(b["node"]), b["y"]),
                      TensorBatches({"node": ids, "y": y[ids]}, config.batch_size, seed=config.seed))
    m = _karate_metrics(model, y)
    out = {"run_dir": str(run.dir), "step": fit.step, "test_accuracy": m["accuracy"],
           "test_accuracy_all_nodes": m["accuracy_all_nodes"], "labelled_nodes": list(LABELLED),
           "predictions": m["pred"].tolist()}
    run.finish(out, step=fit.step,
               metrics={"test/accuracy": m["accuracy"], "test/accuracy_all_nodes": m["accuracy_all_nodes"]})
    out["model"] = model
    return out


def _load_karate(run_dir, tag: str = "best"):
    config = config_of(run_dir, "gcn-karate")
    model, y = karate_model(config)
    return load_weights(model, run_dir, tag), y


def evaluate_karate(run_dir: str | Path, options: EvalOptions | None = None) -> dict:
    """Accuracy on the unlabelled nodes and on all nodes."""
    model, y = _load_karate(run_dir)
    m = _karate_metrics(model, y)
    return {"test/accuracy": m["accuracy"], "test/accuracy_all_nodes": m["accuracy_all_nodes"]}


def sample_karate(run_dir: str | Path, n: int = 0, out: str | Path | None = None,
                  options: SampleOptions | None = None) -> Path:
    """PNG of the club graph coloured by predicted club; squares = labelled nodes, red rim = wrong."""
    nx = _networkx()
    model, y = _load_karate(run_dir)
    pred = _karate_metrics(model, y)["pred"]
    G = nx.karate_club_graph()
    pos = nx.spring_layout(G, seed=0)
    colours = ["tab:orange" if int(p) == 0 else "tab:purple" for p in pred]
    fig, ax = plt.subplots(figsize=(7, 5.5))
    nx.draw_networkx_edges(G, pos, ax=ax, alpha=0.3)
    for shape, nodes in (("o", [i for i in G if i not in LABELLED]), ("s", list(LABELLED))):
        nx.draw_networkx_nodes(G, pos, nodelist=nodes, node_shape=shape, ax=ax, node_size=320,
                               node_color=[colours[i] for i in nodes],
                               edgecolors=["red" if pred[i] != y[i] else "black" for i in nodes],
                               linewidths=[3 if pred[i] != y[i] else 1 for i in nodes])
    nx.draw_networkx_labels(G, pos, ax=ax, font_size=7, font_color="white")
    acc = float((pred == y).float().mean())
    ax.set_title(f"GCN prediction (orange: {CLUBS[0]}, purple: {CLUBS[1]}); squares labelled, "
                 f"red rim wrong; {acc:.0%} of all nodes right", fontsize=8)
    ax.axis("off")
    out = Path(out) if out else Path(run_dir) / "samples.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


register("gcn-karate", family="supervised", config=KarateConfig,
         description="GCN node classification on Zachary's karate club from 4 labelled nodes (Kipf & Welling)",
         evaluate=evaluate_karate, sample=sample_karate, requires=("networkx",),
         load=lambda run_dir, config, tag: _load_karate(run_dir, tag)[0],
         tiny={"epochs": 6, "hidden": 4, "checkpoint_every": 2})(train_karate)


# ===================================================================================== graph classification
@dataclasses.dataclass
class GraphsConfig(TrainConfig):
    """Graph classification (cycle / path / star / random tree) with a GCN and mean-pool readout."""

    dataset: str = option("shapes", "generated graphs: cycle, path, star, random tree", choices=("shapes",))
    min_nodes: int = option(6, "fewest nodes per graph", min=4)
    max_nodes: int = option(16, "most nodes per graph", min=4)
    num_train: int = option(1200, "generated training graphs", min=1)
    num_val: int = option(200, "generated validation graphs", min=1)
    num_test: int = option(400, "generated test graphs", min=1)
    hidden: int = option(32, "GCN hidden units", min=1)
    layers: int = option(3, "GCN layers", min=1)
    readout: str = option("mean", "graph readout", choices=("mean", "sum", "max"))
    dropout: float = option(0.0, "dropout on node states", min=0.0, max=0.99)
    epochs: int = option(30, "passes over the training set", min=1)
    batch_size: int = option(32, "graphs per mini-batch", min=1)
    lr: float = option(5e-3, "learning rate", min=0.0)

    def check(self) -> None:
        if self.min_nodes > self.max_nodes:
            raise UserError(f"--min-nodes {self.min_nodes} > --max-nodes {self.max_nodes}; swap them")


def random_graph(kind: str, n: int, g: torch.Generator) -> torch.Tensor:
    """Symmetric 0/1 adjacency [n, n] of a ``kind`` graph on n nodes, nodes randomly relabelled."""
    A = torch.zeros(n, n)
    if kind == "cycle":
        src, dst = torch.arange(n), (torch.arange(n) + 1) % n          # i -- i+1 mod n
    elif kind == "path":
        src, dst = torch.arange(n - 1), torch.arange(1, n)             # i -- i+1
    elif kind == "star":
        src, dst = torch.zeros(n - 1, dtype=torch.long), torch.arange(1, n)  # 0 -- i
    elif kind == "tree":   # random recursive tree: node i attaches to a uniform earlier node
        dst = torch.arange(1, n)
        src = (torch.rand(n - 1, generator=g) * dst).long()
    else:
        raise UserError(f"unknown graph kind {kind!r}; use one of {', '.join(GRAPH_CLASSES)}")
    A[src, dst] = 1.0
    A[dst, src] = 1.0
    p = torch.randperm(n, generator=g)
    return A[p][:, p]   # P A P^T: relabel the nodes


def make_graphs(num: int, min_nodes: int, max_nodes: int, seed: int) -> dict[str, torch.Tensor]:
    """{"adj": 0/1 adjacency [num, n, n], "mask": real nodes [num, n], "y": labels [num]}, n = max_nodes
    (graphs with fewer nodes are zero-padded; the mask says which nodes exist)."""
    g = torch.Generator().manual_seed(seed)
    adj = torch.zeros(num, max_nodes, max_nodes)
    mask = torch.zeros(num, max_nodes, dtype=torch.bool)
    y = torch.randint(len(GRAPH_CLASSES), (num,), generator=g)
    for b in range(num):
        n = int(torch.randint(min_nodes, max_nodes + 1, (1,), generator=g))
        adj[b, :n, :n] = random_graph(GRAPH_CLASSES[int(y[b])], n, g)
        mask[b, :n] = True
    return {"adj": adj, "mask": mask, "y": y}


def to_edge_index(adj: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded batch (adj [B, n, n], mask [B, n]) -> (edge_index [2, E] j->i over the real nodes, batch [N_real])."""
    B, n, _ = adj.shape
    new_id = torch.cumsum(mask.reshape(-1).long(), 0) - 1          # (b, i) -> index among real nodes
    b, i, j = (adj > 0).nonzero(as_tuple=True)                       # edge j -> i in graph b
    edge_index = torch.stack([new_id[b * n + j], new_id[b * n + i]])
    batch = torch.arange(B, device=adj.device).repeat_interleave(mask.sum(1))
    return edge_index, batch


class GraphClassifier(nn.Module):
    """GCN over a mini-batch of packed graphs; node features = one-hot capped degree; pooled readout."""

    def __init__(self, hidden: int, num_classes: int, layers: int, readout: str, dropout: float):
        super().__init__()
        self.gnn = GNN(MAX_DEGREE + 1, hidden, num_classes, layers, conv="gcn", task="graph", readout=readout, dropout=dropout)

    def forward(self, adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(adj [B, n, n], mask [B, n]) -> logits [B, K]."""
        edge_index, batch = to_edge_index(adj, mask)
        deg = adj.sum(-1)[mask].long().clamp(max=MAX_DEGREE)   # deg_i = sum_j A_ij
        feats = F.one_hot(deg, MAX_DEGREE + 1).float()
        return self.gnn(feats, edge_index, batch, num_graphs=adj.shape[0])


def graph_splits(config: GraphsConfig) -> dict[str, dict[str, torch.Tensor]]:
    """train / valid / test sets, each generated from its own seed derived from --seed."""
    c = config
    return {name: make_graphs(n, c.min_nodes, c.max_nodes, seed=1000 * c.seed + 17 + k)
            for k, (name, n) in enumerate((("train", c.num_train), ("valid", c.num_val), ("test", c.num_test)))}


def _graph_model(config: GraphsConfig) -> GraphClassifier:
    return GraphClassifier(config.hidden, len(GRAPH_CLASSES), config.layers, config.readout, config.dropout)


def _graph_metrics(model: GraphClassifier, batch: dict) -> dict:
    return classification_metrics(model(batch["adj"], batch["mask"]), batch["y"])


def train_graphs(config: GraphsConfig, run: Run | None = None) -> dict:
    """Train, keep the best by val/accuracy, report test accuracy."""
    run = Run.start("gcn-graphs", config, run)
    data = graph_splits(config)
    model = _graph_model(config)
    trainer = Trainer(model, config, run)

    def val_fn() -> dict:
        m = evaluate_in_batches(lambda b: _graph_metrics(model, b), data["valid"], device=run.device)
        return {f"val/{k}": v for k, v in m.items()}

    fit = trainer.fit(lambda b: _graph_metrics(model, b), TensorBatches(data["train"], config.batch_size,
                                                                        seed=config.seed),
                      val_fn=val_fn, monitor="val/accuracy", mode="max")
    load_weights(model, run.dir).to("cpu")
    tm = evaluate_in_batches(lambda b: _graph_metrics(model, b), data["test"])
    out = {"run_dir": str(run.dir), "step": fit.step, "epochs": fit.epoch,
           "best_val_accuracy": fit.best_value, "test_accuracy": tm["accuracy"], "test_loss": tm["loss"]}
    run.finish(out, step=fit.step, metrics={"test/accuracy": tm["accuracy"], "test/loss": tm["loss"]})
    out["model"] = model
    return out


def _load_graphs(run_dir, tag: str = "best"):
    config = config_of(run_dir, "gcn-graphs")
    return load_weights(_graph_model(config), run_dir, tag), config


@dataclasses.dataclass
class SplitOptions(EvalOptions):
    """Options of `mlcanon eval` on a gcn-graphs run."""

    split: str = option("test", "which generated held-out split to score", choices=("test", "valid"))


def evaluate_graphs(run_dir: str | Path, options: SplitOptions | None = None) -> dict:
    """Accuracy and loss of the best model on the regenerated split."""
    options = options or SplitOptions()
    model, config = _load_graphs(run_dir)
    m = evaluate_in_batches(lambda b: _graph_metrics(model, b), graph_splits(config)[options.split])
    return {f"{options.split}/accuracy": m["accuracy"], f"{options.split}/loss": m["loss"]}


def sample_graphs(run_dir: str | Path, n: int = 16, out: str | Path | None = None,
                  options: SampleOptions | None = None) -> Path:
    """PNG of ``n`` test graphs (spectral layout) titled predicted / true class."""
    model, config = _load_graphs(run_dir)
    test = graph_splits(config)["test"]
    adj, mask, y = test["adj"], test["mask"], test["y"]
    n = min(n, len(y))
    with torch.no_grad():
        pred = model(adj[:n], mask[:n]).argmax(-1)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        m = int(mask[k].sum())
        A = adj[k, :m, :m].double()
        L = torch.diag(A.sum(1)) - A                       # graph Laplacian L = D - A
        _, vec = torch.linalg.eigh(L)
        pos = vec[:, 1:3].numpy()                          # spectral layout: 2nd and 3rd eigenvectors
        for i, j in (A > 0).nonzero().tolist():
            if i < j:
                ax.plot(pos[[i, j], 0], pos[[i, j], 1], color="gray", lw=1)
        ax.scatter(pos[:, 0], pos[:, 1], s=25, zorder=3)
        ok = int(pred[k]) == int(y[k])
        ax.set_title(f"{GRAPH_CLASSES[pred[k]]} / {GRAPH_CLASSES[y[k]]}", fontsize=8,
                     color="black" if ok else "red")
    fig.suptitle("predicted / true (red: wrong)", fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "samples.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    Run(Path(run_dir)).write_json("samples.json", {"pred": pred.tolist(), "true": y[:n].tolist()})
    return out


register("gcn-graphs", family="supervised", config=GraphsConfig,
         description="GCN graph classification: cycle / path / star / random tree from structure alone",
         evaluate=evaluate_graphs, sample=sample_graphs, eval_options=SplitOptions,
         load=lambda run_dir, config, tag: _load_graphs(run_dir, tag)[0],
         tiny={"num_train": 64, "num_val": 16, "num_test": 16, "hidden": 8, "layers": 2, "epochs": 2,
               "batch_size": 16, "max_nodes": 8, "checkpoint_every": 2})(train_graphs)
