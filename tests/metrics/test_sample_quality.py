"""Sample-quality metrics against independent computations: scipy's sqrtm, closed-form Wasserstein distances,
brute-force MMD and k-NN loops, and the entropy identity of the Inception Score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from mlcanon.metrics import sample_quality as sq

EPS64 = np.finfo(np.float64).eps


def random_cov(rng, d, cond=100.0):
    """A random SPD matrix with eigenvalues spread over [1, cond]."""
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (Q * np.geomspace(1, cond, d)) @ Q.T


@pytest.mark.parametrize("d", [2, 16, 64])
def test_sqrtm_psd_matches_scipy(d):
    rng = np.random.default_rng(d)
    S = random_cov(rng, d)
    R = sq.sqrtm_psd(S)
    np.testing.assert_allclose(R, scipy.linalg.sqrtm(S).real, rtol=0, atol=1e3 * d * EPS64 * 10)
    np.testing.assert_allclose(R @ R, S, rtol=0, atol=1e3 * d * EPS64 * 100)


@pytest.mark.parametrize("d", [3, 32, 64])
def test_frechet_distance_matches_scipy_formula(d):
    rng = np.random.default_rng(10 + d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    S1, S2 = random_cov(rng, d), random_cov(rng, d, cond=10.0)
    # pytorch-fid's formula: tr sqrtm(S1 S2) with scipy's Schur-based square root of the non-symmetric product
    tr_sqrt = np.trace(scipy.linalg.sqrtm(S1 @ S2).real)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(S1) + np.trace(S2) - 2 * tr_sqrt
    scale = np.trace(S1) + np.trace(S2)
    assert sq.frechet_distance(mu1, S1, mu2, S2) == pytest.approx(ref, rel=0, abs=1e4 * d * EPS64 * scale)
    assert sq.frechet_distance(mu1, S1, mu2, S2) == pytest.approx(sq.frechet_distance(mu2, S2, mu1, S1),
                                                                  rel=0, abs=1e4 * d * EPS64 * scale)


def test_frechet_distance_closed_forms():
    # 1-D: W2^2 = (m1 - m2)^2 + (s1 - s2)^2
    assert sq.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, rel=1e-13)
    # commuting covariances (same eigenvectors): sum_i (sqrt a_i - sqrt b_i)^2 plus the mean term
    rng = np.random.default_rng(0)
    d = 20
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = sq.frechet_distance(mu1, (Q * a) @ Q.T, mu2, (Q * b) @ Q.T)
    assert got == pytest.approx(want, rel=0, abs=1e3 * d * EPS64 * (a.sum() + b.sum()))
    # identical Gaussians: 0, also with a singular covariance (clipped round-off, never negative)
    S = random_cov(rng, d)
    S[:, 0] = S[0, :] = 0
    assert 0 <= sq.frechet_distance(mu1, S, mu1, S) < 1e3 * d * EPS64 * np.trace(S)
    with pytest.raises(ValueError):
        sq.frechet_distance(mu1, S, mu2[:3], S)


def test_fid_from_features_properties():
    rng = np.random.default_rng(1)
    f = rng.standard_normal((500, 8)) @ rng.standard_normal((8, 8))
    g = rng.standard_normal((400, 8)) * 1.5 + 0.3
    assert sq.fid_from_features(f, f) < 1e4 * EPS64 * np.trace(np.cov(f, rowvar=False))
    # invariant to a common rotation and translation of both feature sets
    Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    c = rng.standard_normal(8)
    assert sq.fid_from_features(f @ Q + c, g @ Q + c) == pytest.approx(sq.fid_from_features(f, g), rel=1e-10)
    # large samples of N(0, I) and N(m, 4 I): FID -> |m|^2 + d (2 - 1)^2 (statistical; 4 standard errors)
    n, d = 20000, 4
    x, y = rng.standard_normal((n, d)), 2 * rng.standard_normal((n, d)) + 1.0
    assert sq.fid_from_features(x, y) == pytest.approx(d + d, abs=0.15)


# --------------------------------------------------------------------------------------------- KID
def brute_mmd2(X, Y):
    def k(a, b):                                   # (a.b / d + 1)^3, one product at a time
        return (sum(ai * bi for ai, bi in zip(a, b)) / len(a) + 1) ** 3

    m, n = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(X[i], Y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_unbiased_matches_double_loop():
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((7, 4)), rng.standard_normal((9, 4)) + 0.5
    assert sq.mmd2_unbiased(X, Y) == pytest.approx(brute_mmd2(X.tolist(), Y.tolist()), rel=1e-12)
    # with subsets as large as the sets, every subset is a permutation: KID = that MMD, spread 0
    X2 = rng.standard_normal((9, 4))
    mean, std = sq.kernel_inception_distance(X2, Y, num_subsets=3, subset_size=50)
    assert mean == pytest.approx(brute_mmd2(X2.tolist(), Y.tolist()), rel=1e-10)
    assert std < 1e-12


def test_kid_unbiased_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    same, same_sd = sq.kernel_inception_distance(a, b, num_subsets=20, subset_size=500)
    shifted, _ = sq.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=500)
    assert abs(same) < 4 * same_sd / math.sqrt(20) + 1e-3   # unbiased: can be negative, centred on 0
    assert shifted > 50 * max(abs(same), same_sd)


# ------------------------------------------------------------------------------- precision / recall
def brute_coverage(support, queries, k):
    n = len(support)
    radii = [sorted(np.linalg.norm(support[i] - support[j]) for j in range(n) if j != i)[k - 1]
             for i in range(n)]
    return np.mean([any(np.linalg.norm(q - support[i]) <= radii[i] for i in range(n)) for q in queries])


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(4)
    real, fake = rng.standard_normal((40, 3)), rng.standard_normal((30, 3)) * 0.8 + 0.8
    p, r = sq.precision_recall(real, fake, k=3, chunk=7)
    assert p == pytest.approx(brute_coverage(real, fake, 3), abs=1e-12)
    assert r == pytest.approx(brute_coverage(fake, real, 3), abs=1e-12)
    assert 0 < p < 1 and 0 < r < 1


def test_precision_recall_hand_example_and_extremes():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])          # k = 1: every radius is 1
    fake = np.array([[0.5], [10.0]])                        # one inside, one far away
    p, _ = sq.precision_recall(real, fake, k=1)
    assert p == 0.5
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 8))
    assert sq.precision_recall(x, x, k=3) == (1.0, 1.0)
    assert sq.precision_recall(x, x + 100.0, k=3) == (0.0, 0.0)
    with pytest.raises(ValueError):
        sq.knn_radii(x[:3], k=3)


# ---------------------------------------------------------------------------------- Inception Score
def test_inception_score_extremes_and_entropy_identity():
    C = 10
    onehot = np.eye(C)[np.arange(1000) % C]
    assert sq.inception_score(onehot, splits=1)[0] == pytest.approx(C, rel=1e-9)   # confident and balanced
    assert sq.inception_score(np.eye(C)[np.zeros(100, int)], splits=1)[0] == pytest.approx(1.0, rel=1e-9)
    assert sq.inception_score(np.full((100, C), 1 / C), splits=1)[0] == pytest.approx(1.0, rel=1e-9)
    # E_x KL(p(y|x) || p(y)) = H(p(y)) - E_x H(p(y|x)), per split
    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.full(C, 0.3), size=600)
    want = [np.exp(scipy.stats.entropy(part.mean(0)) - scipy.stats.entropy(part, axis=1).mean())
            for part in np.split(probs, 3)]
    mean, std = sq.inception_score(probs, splits=3)
    assert mean == pytest.approx(np.mean(want), rel=1e-9)
    assert std == pytest.approx(np.std(want), rel=1e-6)
    with pytest.raises(ValueError):
        sq.inception_score(probs * 2)
