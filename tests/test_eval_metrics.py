"""Metric maths: Fréchet distance vs scipy and closed forms, KID, precision/recall/density/coverage."""

import numpy as np
import pytest
import scipy.linalg

from mdm_jax.evaluation import metrics


def _random_psd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / d


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    for d, rank in [(5, None), (64, None), (64, 20)]:  # rank-deficient: scipy's sqrtm is ill-conditioned there
        s1, s2 = _random_psd(rng, d, rank), _random_psd(rng, d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        ref = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        got = metrics.frechet_distance((mu1, s1), (mu2, s2))
        assert got == pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_frechet_closed_forms():
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # Isotropic: W2^2 = |mu1 - mu2|^2 + d (a - b)^2 for covariances a^2 I and b^2 I.
    a, b = 1.5, 0.5
    got = metrics.frechet_distance((mu1, a * a * np.eye(d)), (mu2, b * b * np.eye(d)))
    assert got == pytest.approx(np.sum((mu1 - mu2) ** 2) + d * (a - b) ** 2, rel=1e-10)
    # Commuting diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2.
    v1, v2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    got = metrics.frechet_distance((mu1, np.diag(v1)), (mu1, np.diag(v2)))
    assert got == pytest.approx(np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2), rel=1e-10)
    # Same distribution: 0 up to rounding; for a singular covariance sqrt() of the ~1e-16 zero eigenvalues
    # leaves ~1e-8 each, so the bound is relative to tr(S).
    s = _random_psd(rng, d, 4)
    assert abs(metrics.frechet_distance((mu1, s), (mu1, s))) < 1e-6 * np.trace(s)
    s = _random_psd(rng, d)
    assert abs(metrics.frechet_distance((mu1, s), (mu1, s))) < 1e-10 * np.trace(s)


def test_frechet_from_samples_converges_to_truth():
    rng = np.random.default_rng(2)
    d, n = 4, 200_000
    c1, c2 = _random_psd(rng, d) + 0.1 * np.eye(d), _random_psd(rng, d) + 0.1 * np.eye(d)
    x = rng.multivariate_normal(np.zeros(d), c1, n)
    y = rng.multivariate_normal(np.ones(d), c2, n)
    truth = metrics.frechet_distance((np.zeros(d), c1), (np.ones(d), c2))
    est = metrics.frechet_distance(metrics.gaussian_stats(x), metrics.gaussian_stats(y))
    assert est == pytest.approx(truth, rel=0.02)


def test_kid_unbiased_and_positive_under_shift():
    rng = np.random.default_rng(3)
    d = 8
    x, y = rng.normal(size=(100, d)), rng.normal(size=(90, d))
    # Brute-force reference of the unbiased estimator.
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    ref = (sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
           + sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
           - 2 * np.mean([k(a, b) for a in x for b in y]))
    assert metrics.polynomial_mmd2_unbiased(x, y) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    # Same distribution: the estimate averages to ~0 (it can be negative); a mean shift makes it clearly positive.
    same, _ = metrics.kid(rng.normal(size=(2000, d)), rng.normal(size=(2000, d)), num_subsets=20, subset_size=500)
    shifted, _ = metrics.kid(rng.normal(size=(2000, d)), rng.normal(size=(2000, d)) + 0.5, num_subsets=20,
                             subset_size=500)
    assert abs(same) < 0.01 and shifted > 0.1


def _prdc_brute(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]
    rr, rf = radii(real), radii(fake)
    d_rf = np.linalg.norm(real[:, None] - fake[None], axis=-1)  # [real, fake]
    precision = np.mean([(d_rf[:, j] <= rr).any() for j in range(len(fake))])
    recall = np.mean([(d_rf[i, :] <= rf).any() for i in range(len(real))])
    density = sum((d_rf[:, j] <= rr).sum() for j in range(len(fake))) / (k * len(fake))
    coverage = np.mean([d_rf[i].min() <= rr[i] for i in range(len(real))])
    return dict(precision=precision, recall=recall, density=density, coverage=coverage)


def test_prdc_matches_definition_and_identity():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(300, 6)), rng.normal(size=(250, 6)) * 1.3 + 0.3
    got = metrics.prdc(real, fake, k=5)
    ref = _prdc_brute(real, fake, 5)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    same = metrics.prdc(real, real, k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    # Far-away fakes: nothing inside the real manifold.
    far = metrics.prdc(real, fake + 100.0, k=5)
    assert far["precision"] == 0.0 and far["coverage"] == 0.0


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="features"):
        metrics.gaussian_stats(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        metrics.prdc(np.full((4, 2), np.nan), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="dims differ"):
        metrics.frechet_distance((np.zeros(2), np.eye(2)), (np.zeros(3), np.eye(3)))
