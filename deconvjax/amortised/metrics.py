"""Image-quality metrics shared by the amortised methods' tests and benchmarks, computed on
the host (numpy) for batches of images ``(n, ...)`` against their truths.

PSNR uses the truth's peak-to-peak range as the signal range (galaxy stamps have no fixed
dynamic range); SSIM is scikit-image's, with the same data range; ellipticities are the
unweighted second-moment ``(e1, e2) = (Qxx - Qyy, 2 Qxy) / (Qxx + Qyy)`` over positive pixels.
"""

import numpy as np
from jaxtyping import ArrayLike, Float
from skimage.metrics import structural_similarity


def _pair(estimate, truth, name="estimate"):
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"{name}: expected the truth's shape {truth.shape}, got {estimate.shape}")
    if truth.ndim < 3:
        raise ValueError(f"truth: expected a batch (n, ..., y, x), got shape {truth.shape}")
    return estimate, truth


def _range(truth):
    flat = truth.reshape(truth.shape[0], -1)
    return np.maximum(flat.max(axis=1) - flat.min(axis=1), np.finfo(float).tiny)


def psnr(estimate: Float[ArrayLike, "n ..."], truth: Float[ArrayLike, "n ..."]) -> Float[np.ndarray, " n"]:
    """Peak signal-to-noise ratio in dB per image: ``10 log10(range^2 / MSE)``."""
    estimate, truth = _pair(estimate, truth)
    mse = np.mean((estimate - truth).reshape(truth.shape[0], -1) ** 2, axis=1)
    return 10 * np.log10(_range(truth) ** 2 / np.maximum(mse, np.finfo(float).tiny))


def ssim(estimate: Float[ArrayLike, "n ..."], truth: Float[ArrayLike, "n ..."]) -> Float[np.ndarray, " n"]:
    """Structural similarity per image (scikit-image; bands of ``(n, band, y, x)`` averaged)."""
    estimate, truth = _pair(estimate, truth)
    rng = _range(truth)
    out = []
    for e, t, r in zip(estimate, truth, rng):
        e2 = e.reshape(-1, *e.shape[-2:])
        t2 = t.reshape(-1, *t.shape[-2:])
        out.append(np.mean([structural_similarity(a, b, data_range=r) for a, b in zip(e2, t2)]))
    return np.asarray(out)


def flux_error(estimate: Float[ArrayLike, "n ..."], truth: Float[ArrayLike, "n ..."]) -> Float[np.ndarray, " n"]:
    """Relative flux error per image, ``sum(estimate) / sum(truth) - 1``."""
    estimate, truth = _pair(estimate, truth)
    n = truth.shape[0]
    return estimate.reshape(n, -1).sum(axis=1) / truth.reshape(n, -1).sum(axis=1) - 1.0


def ellipticity(images: Float[ArrayLike, "n ... y x"]) -> Float[np.ndarray, "n 2"]:
    """``(e1, e2)`` per image from unweighted second moments of its positive pixels
    (bands summed), about its centroid."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim < 3:
        raise ValueError(f"images: expected a batch (n, ..., y, x), got shape {images.shape}")
    img = np.clip(images.reshape(images.shape[0], -1, *images.shape[-2:]).sum(axis=1), 0, None)
    ny, nx = img.shape[-2:]
    y, x = np.mgrid[:ny, :nx].astype(np.float64)
    f = np.maximum(img.sum(axis=(1, 2)), np.finfo(float).tiny)
    cy = (img * y).sum(axis=(1, 2)) / f
    cx = (img * x).sum(axis=(1, 2)) / f
    dy = y[None] - cy[:, None, None]
    dx = x[None] - cx[:, None, None]
    qxx = (img * dx**2).sum(axis=(1, 2)) / f
    qyy = (img * dy**2).sum(axis=(1, 2)) / f
    qxy = (img * dx * dy).sum(axis=(1, 2)) / f
    t = np.maximum(qxx + qyy, np.finfo(float).tiny)
    return np.stack([(qxx - qyy) / t, 2 * qxy / t], axis=1)


def ellipticity_error(estimate: Float[ArrayLike, "n ..."], truth: Float[ArrayLike, "n ..."]) -> Float[np.ndarray, " n"]:
    """``|e(estimate) - e(truth)|`` per image (Euclidean in ``(e1, e2)``)."""
    estimate, truth = _pair(estimate, truth)
    return np.linalg.norm(ellipticity(estimate) - ellipticity(truth), axis=1)
