"""Sample-quality metrics on features: FID, KID, improved precision/recall, Inception Score.

All take feature (or class-posterior) arrays, so they work with any feature network; the fixed MNIST one is
in :mod:`mlcanon.metrics.mnist_features`. Statistics are computed in float64.

- FID (Heusel et al. 2017): the squared 2-Wasserstein distance between Gaussian fits,
  ``||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2``.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  random subsets.
- Improved precision and recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls around
  its points with radius the distance to the k-th nearest neighbour in the same set.
- Inception Score (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` per split.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_f64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _as_2d(name: str, a) -> np.ndarray:
    a = _as_f64(a)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, D] features, got shape {a.shape}")
    return a


def sqrtm_psd(S) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition.

    S = V diag(l) V^T  ->  S^1/2 = V diag(sqrt(max(l, 0))) V^T (negative round-off eigenvalues clipped).
    """
    S = _as_f64(S)
    S = (S + S.T) / 2                                    # symmetrize round-off
    lam, V = np.linalg.eigh(S)
    return (V * np.sqrt(np.clip(lam, 0, None))) @ V.T


def trace_sqrt_product(S1, S2) -> float:
    """tr (S1 S2)^1/2 for PSD S1, S2, as tr (S1^1/2 S2 S1^1/2)^1/2: the inner matrix is symmetric PSD and has
    the eigenvalues of S1 S2, so its eigenvalues' square roots sum to the trace (no complex sqrtm needed)."""
    r = sqrtm_psd(S1)
    M = r @ _as_f64(S2) @ r
    lam = np.linalg.eigvalsh((M + M.T) / 2)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_distance(mu1, S1, mu2, S2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2)."""
    mu1, mu2, S1, S2 = _as_f64(mu1), _as_f64(mu2), _as_f64(S1), _as_f64(S2)
    if mu1.shape != mu2.shape or mu1.ndim != 1 or S1.shape != S2.shape or S1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; S {S1.shape}, {S2.shape}")
    d = mu1 - mu2
    # FID = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)   (Heusel et al. 2017, eq. 6)
    fd = d @ d + np.trace(S1) + np.trace(S2) - 2 * trace_sqrt_product(S1, S2)
    return float(max(fd, 0.0))   # >= 0 in exact arithmetic; round-off can give -1e-12


def gaussian_fit(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1, as pytorch-fid) of [N, D] features, float64."""
    f = _as_2d("features", features)
    if len(f) < 2:
        raise ValueError("need at least 2 feature vectors for a covariance")
    return f.mean(0), np.cov(f, rowvar=False)


def fid_from_features(f1, f2) -> float:
    """FID between two feature sets [N1, D], [N2, D] (Gaussian fits of each)."""
    return frechet_distance(*gaussian_fit(f1), *gaussian_fit(f2))


# ---------------------------------------------------------------------------------------------- KID
def polynomial_kernel(X, Y, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (x.y / d + coef0)^degree, the KID kernel (Binkowski et al. 2018), for all pairs."""
    X, Y = _as_f64(X), _as_f64(Y)
    return (X @ Y.T / X.shape[1] + coef0) ** degree


def mmd2_unbiased(X, Y, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3): the mean of k over distinct pairs within X and within Y,
    minus twice the mean of k over X x Y."""
    X, Y = _as_2d("X", X), _as_2d("Y", Y)
    m, n = len(X), len(Y)
    if m < 2 or n < 2:
        raise ValueError("unbiased MMD needs at least 2 points in each set")
    Kxx, Kyy, Kxy = polynomial_kernel(X, X, degree, coef0), polynomial_kernel(Y, Y, degree, coef0), \
        polynomial_kernel(X, Y, degree, coef0)
    return float((Kxx.sum() - np.trace(Kxx)) / (m * (m - 1))      # 1/(m(m-1)) sum_{i != j} k(x_i, x_j)
                 + (Kyy.sum() - np.trace(Kyy)) / (n * (n - 1))    # 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
                 - 2 * Kxy.mean())                                # 2/(mn) sum_{i, j} k(x_i, y_j)


def kernel_inception_distance(f1, f2, num_subsets: int = 100, subset_size: int = 1000, degree: int = 3,
                              coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """KID: mean and standard deviation of the unbiased MMD^2 over ``num_subsets`` random subsets of
    ``min(subset_size, N1, N2)`` points drawn without replacement from each set (as torch-fidelity)."""
    f1, f2 = _as_2d("f1", f1), _as_2d("f2", f2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    m = min(subset_size, len(f1), len(f2))
    rng = np.random.default_rng(seed)
    vals = np.array([mmd2_unbiased(f1[rng.choice(len(f1), m, replace=False)],
                                   f2[rng.choice(len(f2), m, replace=False)], degree, coef0)
                     for _ in range(num_subsets)])
    return float(vals.mean()), float(vals.std())


# ------------------------------------------------------------------------------- precision / recall
def _sq_dists(A: torch.Tensor, B: torch.Tensor, chunk: int):
    """Squared Euclidean distances |a|^2 + |b|^2 - 2 a.b in float64, in row chunks of A (a matrix product:
    10k x 10k takes seconds, not the minutes of exact differences). The same call on the same rows gives the
    same bits, so a set compared with itself sees the same self-distances as its radii."""
    nb = (B * B).sum(1)
    for i in range(0, len(A), chunk):
        a = A[i:i + chunk]
        yield ((a * a).sum(1)[:, None] + nb[None, :] - 2 * a @ B.T).clamp_min(0)


def knn_radii(F, k: int = 3, chunk: int = 1000) -> torch.Tensor:
    """Squared distance from each row of F to its k-th nearest neighbour among the other rows."""
    F = torch.as_tensor(_as_2d("features", F))
    if not 1 <= k < len(F):
        raise ValueError(f"k must be in [1, {len(F) - 1}], got {k}")
    # the (k+1)-th smallest distance counts the point itself (distance 0) as the first
    return torch.cat([d.topk(k + 1, dim=1, largest=False).values[:, -1] for d in _sq_dists(F, F, chunk)])


def manifold_coverage(support, radii_sq: torch.Tensor, queries, chunk: int = 1000) -> float:
    """Fraction of ``queries`` inside the union of balls B(support_i, r_i), ``radii_sq`` = r_i^2
    (Kynkaanniemi et al. 2019, eq. 1: f(q) = 1 iff |q - s_i| <= r_i for some i)."""
    S, Q = torch.as_tensor(_as_2d("support", support)), torch.as_tensor(_as_2d("queries", queries))
    inside = torch.cat([(d <= radii_sq[None, :]).any(dim=1) for d in _sq_dists(Q, S, chunk)])
    return float(inside.double().mean())


def precision_recall(real, fake, k: int = 3, chunk: int = 1000) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold)."""
    real, fake = _as_2d("real", real), _as_2d("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    precision = manifold_coverage(real, knn_radii(real, k, chunk), fake, chunk)
    recall = manifold_coverage(fake, knn_radii(fake, k, chunk), real, chunk)
    return precision, recall


# ---------------------------------------------------------------------------------- Inception Score
def inception_score(probs, splits: int = 10, eps: float = 1e-12) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) on each of ``splits`` consecutive splits of the [N, C] class
    posteriors, p(y) the split's mean posterior; returns the mean and standard deviation over splits."""
    p = _as_2d("probs", probs)
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("probs must be rows of class probabilities (non-negative, summing to 1)")
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits must be in [1, {len(p)}], got {splits}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(part + eps) - np.log(py + eps))).sum(1)   # KL(p(y|x) || p(y)) per x
        scores.append(np.exp(kl.mean()))                                 # IS = exp E_x KL
    return float(np.mean(scores)), float(np.std(scores))
