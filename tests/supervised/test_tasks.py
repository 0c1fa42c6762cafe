"""The supervised tasks behind the CLI: gcn-karate, gcn-graphs, segmentation, seq2seq, transfer.

Each learns on a small instance, and its run folder goes through `mlcanon eval` / `mlcanon sample`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mlcanon.cli import build_config, main
from mlcanon.errors import UserError
from mlcanon.registry import get


def _train(name, tmp_runs, *flags):
    algo = get(name)
    return algo.train(build_config(algo, [*flags, "--out-dir", str(tmp_runs), "--progress", "false"]))


def _cli_roundtrip(run_dir: str, tmp_runs: Path, out_name: str) -> dict:
    assert main(["eval", run_dir]) == 0
    out = tmp_runs / out_name
    assert main(["sample", run_dir, "-n", "4", "--out", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 100
    return json.loads((Path(run_dir) / "eval.json").read_text())


# ------------------------------------------------------------------------------------------------ graphs
def test_gcn_karate_reaches_90_percent_from_4_labels(tmp_runs):
    from mlcanon.supervised.graphs import LABELLED, karate_graph
    edge_index, y, N = karate_graph()
    assert N == 34 and edge_index.shape == (2, 156)
    assert y[0] == 0 and y[33] == 1 and len(LABELLED) == 4 and {0, 33} <= set(LABELLED)
    assert [int(y[i]) for i in LABELLED].count(0) == 2          # 2 labelled nodes per class
    res = _train("gcn-karate", tmp_runs, "--epochs", "50", "--lr", "0.05")
    assert res["test_accuracy"] >= 0.9, res                      # on the 30 unlabelled nodes
    ev = _cli_roundtrip(res["run_dir"], tmp_runs, "karate.png")
    assert ev["test/accuracy"] == pytest.approx(res["test_accuracy"])


def test_missing_networkx_is_a_user_error(monkeypatch):
    import sys

    from mlcanon.supervised.graphs import karate_graph
    monkeypatch.setitem(sys.modules, "networkx", None)          # import networkx -> ImportError
    with pytest.raises(UserError, match="pip install"):
        karate_graph()


def test_graph_generators_and_batching():
    from mlcanon.supervised.graphs import make_graphs, random_graph, to_edge_index
    g = torch.Generator().manual_seed(0)
    for kind, edges, max_deg in (("cycle", 7, 2), ("path", 6, 2), ("star", 6, 6), ("tree", 6, None)):
        A = random_graph(kind, 7, g)
        assert torch.equal(A, A.T) and A.diagonal().sum() == 0
        assert int(A.sum()) // 2 == edges, kind                   # a tree on n nodes has n - 1 edges
        if max_deg:
            assert int(A.sum(1).max()) == max_deg, kind
    d = make_graphs(3, 4, 6, seed=1)
    mask = d["mask"]
    edge_index, batch = to_edge_index(d["adj"], mask)
    assert len(batch) == int(mask.sum()) and edge_index.shape[1] == int(d["adj"].sum())
    assert torch.equal(torch.bincount(batch), mask.sum(1))
    # every edge stays inside its own graph
    assert torch.equal(batch[edge_index[0]], batch[edge_index[1]])


def test_graph_classifier_is_permutation_invariant():
    from mlcanon.supervised.graphs import GraphClassifier, make_graphs
    torch.manual_seed(0)
    model = GraphClassifier(16, 4, 2, "mean", 0.0).eval()
    d = make_graphs(2, 5, 5, seed=3)
    p = torch.randperm(5)
    adj_p = d["adj"][:, p][:, :, p]                              # P A P^T (all 5 nodes are real)
    torch.testing.assert_close(model(d["adj"], d["mask"]), model(adj_p, d["mask"]))


def test_gcn_graphs_learns(tmp_runs):
    res = _train("gcn-graphs", tmp_runs, "--num-train", "400", "--num-val", "100", "--num-test", "200",
                 "--max-nodes", "10", "--epochs", "5")
    assert res["test_accuracy"] >= 0.9, res
    ev = _cli_roundtrip(res["run_dir"], tmp_runs, "graphs.png")
    assert ev["test/accuracy"] == pytest.approx(res["test_accuracy"])


# ------------------------------------------------------------------------------------------ segmentation
def test_iou_against_hand_counts():
    from mlcanon.supervised.segmentation import confusion, iou_from_confusion, per_image_mean_iou
    y = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]])
    pred = y.clone()
    pred[0, 0, 0] = 1                                           # one background pixel called circle
    C = confusion(pred, y)[0]
    assert int(C.sum()) == 16 and int(C[0, 1]) == 1
    iou, present = iou_from_confusion(C)
    # background: 7 / 8, circle: 4 / 5, square: 4 / 4, triangle absent
    torch.testing.assert_close(iou[:3], torch.tensor([7 / 8, 4 / 5, 1.0]))
    assert present.tolist() == [True, True, True, False]
    torch.testing.assert_close(per_image_mean_iou(pred, y), torch.tensor([(7 / 8 + 4 / 5 + 1) / 3]))
    assert float(per_image_mean_iou(y, y)) == 1.0


def test_shapes_labels_match_pixels():
    from mlcanon.supervised.segmentation import make_shapes
    x, y = make_shapes(20, 16, max_shapes=2, noise=0.0, seed=0)
    assert x.shape == (20, 1, 16, 16) and y.shape == (20, 16, 16)
    assert torch.equal(x[:, 0] > 0.5, y > 0)                    # without noise: bright exactly on shapes
    assert set(y.unique().tolist()) == {0, 1, 2, 3}


def test_segmentation_unet_learns(tmp_runs):
    res = _train("segmentation", tmp_runs, "--image-size", "16", "--num-train", "600", "--num-val", "50",
                 "--num-test", "100", "--base-channels", "8", "--max-shapes", "2", "--epochs", "4",
                 "--batch-size", "16")
    assert res["test_mean_iou"] >= 0.7, res
    assert res["test_pixel_accuracy"] >= 0.9, res
    recs = [json.loads(l) for l in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert any("val/mean_iou" in r for r in recs)
    ev = _cli_roundtrip(res["run_dir"], tmp_runs, "seg.png")
    assert ev["test/mean_iou"] == pytest.approx(res["test_mean_iou"], abs=1e-6)
    with pytest.raises(UserError, match="divisible"):
        build_config(get("segmentation"), ["--image-size", "18"])


# -------------------------------------------------------------------------------------------------- seq2seq
def test_seq2seq_data_is_held_out_and_encoded():
    from mlcanon.supervised.seq2seq import (
        BOS,
        EOS,
        PAD,
        Seq2SeqConfig,
        decode_text,
        encode_pairs,
        make_strings,
    )
    c = Seq2SeqConfig(min_len=1, max_len=3, num_train=200, num_val=20, num_test=50)
    s = make_strings(c)
    train = {tuple(t) for t in s["train"]}
    assert not train & {tuple(t) for t in s["test"]}
    d = encode_pairs([[1, 2, 3], [4]], "reverse", 3)
    y = d["tgt_out"]
    assert decode_text(d["src"][0]) == "123" and decode_text(y[0]) == "321" and decode_text(y[1]) == "4"
    assert d["tgt_in"][1].tolist() == [BOS, 4 + 3, PAD, PAD] and y[1].tolist() == [4 + 3, EOS, PAD, PAD]
    assert decode_text(encode_pairs([[3, 1, 2]], "sort", 3)["tgt_out"][0]) == "123"


def test_seq2seq_transformer_learns_to_reverse(tmp_runs):
    from mlcanon.supervised.seq2seq import _data, batch_metrics, exact_match
    res = _train("seq2seq", tmp_runs, "--min-len", "1", "--max-len", "4", "--num-train", "3000", "--num-val", "200",
                 "--num-test", "300", "--d-model", "64", "--d-ff", "128", "--epochs", "4", "--batch-size", "64",
                 "--lr", "3e-3")
    assert res["test_exact_match"] >= 0.9, res
    # teacher-forced "all argmaxes right" == greedy exact match (see the module docstring)
    model, config = res["model"], get("seq2seq").config_cls(min_len=1, max_len=4, num_train=3000, num_val=200,
                                                             num_test=300)
    d = _data(config)["test"]
    with torch.no_grad():
        tf = float(batch_metrics(model, d)["exact_match"])
    assert tf == pytest.approx(exact_match(model, d["src"], d["tgt_out"])[0])
    ev = _cli_roundtrip(res["run_dir"], tmp_runs, "seq.txt")
    assert ev["test/exact_match"] == pytest.approx(res["test_exact_match"])
    assert "->" in (tmp_runs / "seq.txt").read_text()


# ------------------------------------------------------------------------------------------------- transfer
def test_transfer_fine_tuning_beats_scratch_with_few_labels(tmp_runs):
    res = _train("transfer", tmp_runs, "--dataset", "digits", "--model", "cnn", "--width", "64",
                 "--pretrain-epochs", "10", "--finetune-epochs", "60", "--labels-per-class", "3")
    assert res["pretrain_test_accuracy_0_4"] >= 0.95, res
    for k in ("head_only_accuracy", "full_accuracy", "scratch_accuracy"):
        assert 0.2 < res[k] <= 1.0, res                         # better than chance (5 classes)
    assert res["full_accuracy"] > res["scratch_accuracy"], res   # measured: 0.91 vs 0.84 with 3 labels/class
    run_dir = res["run_dir"]
    ev = _cli_roundtrip(run_dir, tmp_runs, "bars.png")
    assert ev["test/full_accuracy"] == pytest.approx(res["full_accuracy"])
    # resume: a run stopped before its last phase redoes that phase only, to the same result
    shutil.rmtree(Path(run_dir) / "scratch")
    (Path(run_dir) / "result.json").unlink()
    assert main(["train", "--resume", run_dir, "--progress", "false"]) == 0
    again = json.loads((Path(run_dir) / "result.json").read_text())
    assert again["scratch_accuracy"] == res["scratch_accuracy"] and again["full_accuracy"] == res["full_accuracy"]


def test_transfer_few_labels_and_head_replacement():
    from mlcanon.supervised.transfer import HeadOnly, few_labels, new_head
    y = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
    x = torch.arange(8.0)[:, None]
    _xs, ys = few_labels(x, y, 2, seed=0)
    assert torch.bincount(ys).tolist() == [2, 2, 2]
    with pytest.raises(UserError, match="labels-per-class"):
        few_labels(x, y, 3, seed=0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 5))
    head = new_head(net, 5)
    assert net[2] is head
    HeadOnly(net).train()
    assert not net[1].training and head.training                 # body stays in eval mode
    assert [p.requires_grad for p in net.parameters()] == [False] * 4 + [True] * 2
