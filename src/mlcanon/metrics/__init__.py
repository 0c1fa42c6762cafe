"""Evaluation metrics, one trusted implementation each: likelihoods, sample quality, RL statistics.

- :mod:`~mlcanon.metrics.likelihood`: nats <-> bits/dim with the dequantization correction, the logit
  pre-processing log-det, the chunked importance-weighted (IWAE) bound.
- :mod:`~mlcanon.metrics.sample_quality`: FID, KID, improved precision/recall, Inception Score on features.
- :mod:`~mlcanon.metrics.mnist_features`: the fixed, hash-pinned MNIST feature network (``mnist_fid``,
  ``label_accuracy``, ...); optional Inception FID from user-supplied weights.
- :mod:`~mlcanon.metrics.rl`: Student-t intervals, IQM, stratified bootstrap, performance profiles,
  steps/episodes to a threshold.

Submodules are imported on demand (``from mlcanon.metrics import likelihood``), so this package is light.
"""
