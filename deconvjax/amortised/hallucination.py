"""A hallucination rate: small-scale structure in a reconstruction that the truth lacks.

Definition. Take the starlet transform (`deconvjax.model.starlet`) of the estimate and of the
truth, and one wavelet scale ``j`` (default 0, the finest: structures of 1-2 pixels). A
coefficient of the estimate is *significant* when ``|w_j(estimate)| > threshold``; it is
*hallucinated* when, at the same pixel, the truth's coefficient is not significant at
``tolerance * threshold`` (``|w_j(truth)| <= tolerance * threshold``, default tolerance 0.5,
so that a true structure recovered a little weaker or stronger is not counted) or has the
opposite sign. The rate per image is the number of hallucinated coefficients over the number
of significant ones (0 where the estimate has none).

`threshold` is absolute, per image, in the images' units: ``k sigma sigma_j`` with the
observation's noise ``sigma`` and `starlet_noise_levels` is the natural choice
(`hallucination_threshold`).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import ArrayLike, Float

from ..model.starlet import starlet_transform
from .mrs import starlet_noise_levels

__all__ = ["hallucination_rate", "hallucination_threshold"]


def hallucination_threshold(sigma: Float[ArrayLike, " n"], k: float = 3.0, scale: int = 0) -> Float[np.ndarray, " n"]:
    """``k sigma sigma_j``: `k` times the noise `sigma` propagated to wavelet `scale`."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if scale < 0 or int(scale) != scale:
        raise ValueError(f"scale: expected a non-negative integer, got {scale}")
    return k * sigma * starlet_noise_levels(int(scale) + 1)[int(scale)]


def hallucination_rate(estimate: Float[ArrayLike, "n ... y x"], truth: Float[ArrayLike, "n ... y x"],
                       threshold: Float[ArrayLike, " n"], *, scale: int = 0,
                       tolerance: float = 0.5) -> Float[np.ndarray, " n"]:
    """The share of significant wavelet-`scale` coefficients of `estimate` that are
    hallucinated (module docstring), per image; `threshold`: ``(n,)`` or a number."""
    estimate = np.asarray(estimate, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate: expected the truth's shape {truth.shape}, got {estimate.shape}")
    if truth.ndim < 3:
        raise ValueError(f"truth: expected a batch (n, ..., y, x), got shape {truth.shape}")
    n = truth.shape[0]
    threshold = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (n,))
    if not np.all(threshold > 0):
        raise ValueError("threshold: expected positive thresholds")
    if int(scale) != scale or scale < 0 or 2 ** (int(scale) + 2) > min(truth.shape[-2:]):
        raise ValueError(f"scale: expected an integer in [0, log2(size) - 2], got {scale}")
    if not 0 <= tolerance <= 1:
        raise ValueError(f"tolerance: expected a number in [0, 1], got {tolerance}")
    j = int(scale)
    we = starlet_transform(estimate, j + 1)[..., j, :, :].reshape(n, -1)
    wt = starlet_transform(truth, j + 1)[..., j, :, :].reshape(n, -1)
    t = threshold[:, None]
    significant = np.abs(we) > t
    present = (np.abs(wt) > tolerance * t) & (np.sign(wt) == np.sign(we))
    hallucinated = significant & ~present
    count = significant.sum(axis=1)
    return np.where(count > 0, hallucinated.sum(axis=1) / np.maximum(count, 1), 0.0)
