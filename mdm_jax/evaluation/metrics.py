"""Sample-quality statistics on feature vectors: Fréchet distance, KID, precision/recall, density/coverage.

All maths in float64 numpy on the host (features are small: N x D with D <= 2048), so results do not depend on
the accelerator's matmul precision. The matrix square root avoids scipy: for symmetric PSD covariances
``tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))``, and both eigendecompositions are symmetric (``eigh``),
which is stable where ``scipy.linalg.sqrtm`` of the non-symmetric product can return complex noise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianStats:
    """Mean and covariance of a feature set (what reference statistics cache)."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """Mean and unbiased covariance (ddof=1, as pytorch-fid / TTUR) of ``features`` [N, D]."""
    x = _as_2d(features, "features")
    if x.shape[0] < 2:
        raise ValueError(f"features: need at least 2 vectors for a covariance, got {x.shape[0]}")
    return GaussianStats(x.mean(0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]), x.shape[0])


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding -> 0)."""
    a = np.asarray(a, np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``tr sqrtm(s1 @ s2)`` for symmetric PSD s1, s2 (the cross term of the Fréchet distance)."""
    r = sqrtm_psd(s1)
    m = r @ np.asarray(s2, np.float64) @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(a: GaussianStats | tuple[np.ndarray, np.ndarray],
                     b: GaussianStats | tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2):
    ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)``. FID when the features are Inception pool3."""
    mu1, s1 = _unpack(a)
    mu2, s2 = _unpack(b)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"frechet_distance: feature dims differ ({mu1.shape} vs {mu2.shape})")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


def _unpack(s: GaussianStats | tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = (s.mu, s.sigma) if isinstance(s, GaussianStats) else s
    return np.asarray(mu, np.float64).reshape(-1), np.atleast_2d(np.asarray(sigma, np.float64))


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected [N, D] features, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


# ----------------------------------------------------------------------------------------------------------- KID

def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                             coef0: float = 1.0) -> float:
    """Unbiased MMD^2 with the kernel ``(gamma <x, y> + coef0)^degree`` (gamma = 1/D): diagonal terms dropped from
    the within-set means (Bińkowski et al. 2018, eq. 3)."""
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError("KID needs at least 2 vectors per set")
    g = 1.0 / x.shape[1] if gamma is None else gamma
    kxx = (g * x @ x.T + coef0) ** degree
    kyy = (g * y @ y.T + coef0) ** degree
    kxy = (g * x @ y.T + coef0) ** degree
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance estimator: mean and std of the unbiased polynomial MMD^2 over random subsets
    (without replacement within a subset), as in Bińkowski et al. / torch-fidelity. ``subset_size`` is capped at
    the smaller set's size."""
    real, fake = _as_2d(real, "real"), _as_2d(fake, "fake")
    size = min(subset_size, real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    vals = [polynomial_mmd2_unbiased(real[rng.choice(real.shape[0], size, replace=False)],
                                     fake[rng.choice(fake.shape[0], size, replace=False)])
            for _ in range(num_subsets)]
    return float(np.mean(vals)), float(np.std(vals))


# ------------------------------------------------------------------------------- precision / recall / density

def _row_blocks(n: int, block: int = 1024) -> Iterator[slice]:
    for i in range(0, n, block):
        yield slice(i, min(n, i + block))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest other row (the self-distance 0 is skipped)."""
    x = _as_2d(x, "features")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k={k} needs 1 <= k < N={x.shape[0]}")
    out = np.empty(x.shape[0])
    for s in _row_blocks(x.shape[0]):
        d = _sq_dists(x[s], x)
        out[s] = np.sqrt(np.partition(d, k, axis=1)[:, k])  # index 0 is the point itself
    return out


def _inside_counts(query: np.ndarray, centers: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """For each query row, how many balls B(center_i, radius_i) contain it."""
    r2 = radii ** 2
    out = np.empty(query.shape[0], np.int64)
    for s in _row_blocks(query.shape[0]):
        out[s] = (_sq_dists(query[s], centers) <= r2[None, :]).sum(1)
    return out


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision and recall of k-NN manifolds (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
    2020), with the same k for all four (prdc's convention; the papers use k=3 and k=5)."""
    real, fake = _as_2d(real, "real"), _as_2d(fake, "fake")
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    fake_in_real = _inside_counts(fake, real, r_real)
    real_in_fake = _inside_counts(real, fake, r_fake)
    # coverage: a real ball counts if its nearest fake sample lies inside it.
    covered = np.empty(real.shape[0], bool)
    for s in _row_blocks(real.shape[0]):
        covered[s] = _sq_dists(real[s], fake).min(1) <= r_real[s] ** 2
    return {"precision": float((fake_in_real > 0).mean()), "recall": float((real_in_fake > 0).mean()),
            "density": float(fake_in_real.sum() / (k * fake.shape[0])), "coverage": float(covered.mean())}
