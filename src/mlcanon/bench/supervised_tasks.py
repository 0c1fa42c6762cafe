"""Benchmarks of issue 3's supervised tasks (seq2seq, GCN, segmentation, transfer) and the long classifier targets.

Every row runs the exact CLI command it shows (default flags of each algorithm unless written), seed 0, on
this machine's device. The ResNet / ViT MNIST rows are long CPU runs (suite "full" only). They measure MNIST;
the Fashion-MNIST files arrived later (../shared/data/fashion-mnist) and the same commands with
``--dataset fashion-mnist`` have not been run yet.

Measured by hand (CPU, 2 shared cores, seed 0, the commands below with default flags): seq2seq reverse
99.9% exact match on 2,000 held-out strings (130 s); gcn-karate 96.7% on the 30 unlabelled nodes (seeds 1-3:
96.7 / 93.3 / 96.7%); gcn-graphs 99.0% (13 s); segmentation mean IoU 0.949 per image, 0.942 VOC (225 s);
transfer MNIST 10 labels/class: head-only 81.9%, full 92.3%, scratch 89.9%, pretrained 0-4 99.3% (283 s).
The ResNet / ViT MNIST rows were measured by `mlcanon bench --suite full --only classifier-resnet,classifier-vit`
(their sections in docs/BENCHMARKS.md: 99.54% and 97.26%).
"""

from __future__ import annotations

import shlex
import tempfile
import time

from mlcanon.bench import Row, bench
from mlcanon.config import build_config
from mlcanon.registry import get

# (row name, algorithm, CLI flags, result key, scale to %, target %, notes)
TASKS = [
    ("seq2seq transformer: reverse digit strings (len 2-10), greedy exact match", "seq2seq", "--task reverse",
     "test_exact_match", 99.0, "held-out strings; 2-layer encoder-decoder, d_model 64"),
    ("GCN karate club: accuracy on the 30 unlabelled nodes (4 labelled)", "gcn-karate", "",
     "test_accuracy", 90.0, "2-layer GCN, X = I, Kipf & Welling settings"),
    ("GCN graph classification: cycle / path / star / tree", "gcn-graphs", "", "test_accuracy", 95.0,
     "3 GCN layers, one-hot degree features, mean readout"),
    ("U-Net segmentation of shapes (32x32): test mean IoU", "segmentation", "", "test_mean_iou", 90.0,
     "per-image class-mean IoU; data-set (VOC) mean IoU in notes"),
]

CLASSIFIERS = {
    "resnet": ("classifier resnet mnist: test accuracy", ("--dataset mnist --model resnet --width 128 --depth 3 "
               "--epochs 5 --batch-size 128 --lr 2e-3 --lr-schedule cosine --augment crop"), 99.3),
    "vit": ("classifier vit mnist: test accuracy", ("--dataset mnist --model vit --width 128 --depth 4 --epochs 8 "
            "--batch-size 128 --lr 1e-3 --lr-schedule cosine"), 97.0),
}


def _train(algorithm: str, flags: str) -> tuple[dict, float]:
    algo = get(algorithm)
    with tempfile.TemporaryDirectory() as d:
        config = build_config(algo, shlex.split(flags) + ["--out-dir", d, "--progress", "false"])
        t = time.perf_counter()
        result = algo.train(config)
        return result, time.perf_counter() - t


def _command(algorithm: str, flags: str) -> str:
    return f"mlcanon train {algorithm} {flags}".strip()


@bench("supervised-tasks", suites=("full",),
       description="seq2seq >= 99% exact match, GCN karate >= 90%, graph classification, U-Net mean IoU, transfer")
def tasks() -> list[Row]:
    rows = []
    for name, algo, flags, key, target, notes in TASKS:
        res, wall = _train(algo, flags)
        if algo == "segmentation":
            notes = f"{notes}: {res['test_dataset_mean_iou']:.3f}"
        rows.append(Row(name=name, command=_command(algo, flags), ours=100 * res[key], unit="%", reference=target,
                        reference_label="target", wall_s=wall, notes=notes + "; seed 0"))
    flags = "--dataset mnist --labels-per-class 10"
    res, wall = _train("transfer", flags)
    for key, label in (("head_only_accuracy", "head-only fine-tune"), ("full_accuracy", "full fine-tune"),
                       ("scratch_accuracy", "from scratch")):
        rows.append(Row(name=f"transfer MNIST 0-4 -> 5-9, 10 labels/class: {label}", command=_command("transfer", flags),
                        ours=100 * res[key], unit="%", wall_s=wall,
                        notes=f"all three from one run; pretrained 0-4 test accuracy "
                              f"{100 * res['pretrain_test_accuracy_0_4']:.2f}%"))
    return rows


def _long_classifier(model: str) -> list[Row]:
    name, flags, target = CLASSIFIERS[model]
    res, wall = _train("classifier", flags)
    return [Row(name=name, command=_command("classifier", flags), ours=100 * res["test_accuracy"], unit="%",
                reference=target, reference_label="target", wall_s=wall,
                notes=f"{res['epochs']} epochs, seed 0, CPU; the issue's Fashion-MNIST target is not measured yet "
                      "(same command with --dataset fashion-mnist)")]


@bench("classifier-resnet", suites=("full",), description="ResNet >= 99.3% on MNIST (long CPU run)")
def resnet_mnist() -> list[Row]:
    return _long_classifier("resnet")


@bench("classifier-vit", suites=("full",), description="ViT >= 97% on MNIST (long CPU run)")
def vit_mnist() -> list[Row]:
    return _long_classifier("vit")
