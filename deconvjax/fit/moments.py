"""Image moments on the host (numpy): centroids and second moments of sources.

One function, `image_moments`, with the two measurements the fitting code needs:

- plain moments (``window_sigma=None``), of each of a stack of images about its own
  first-moment centroid: the catalog's centroid and ``sqrt(trace / 2)`` size of each fitted
  source (`deconvjax.fit.measure.catalog`);
- adaptive windowed moments (``window_sigma`` given), of one image about given positions,
  each source on its Voronoi cell (the pixels nearer to it than to any other source, so a
  close neighbour's light stays out), under an isotropic Gaussian window re-sized to the
  source over a few iterations and then corrected for (exact for a Gaussian profile): the
  initial sizes and shapes of detected sources (`deconvjax.fit.init`).

Both measure the positive part of the image only. For a Gaussian of covariance ``C``
sampled well inside the image both return ``C``: the plain moments directly, the windowed
ones by inverting the window, ``C^-1 = M^-1 - window^-2``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jaxtyping import Bool, Float

__all__ = ["Moments", "image_moments"]


class Moments(NamedTuple):
    """Per source: centroid ``y``, ``x`` (pixels) and second moments ``qyy``, ``qyx``,
    ``qxx`` (pixels^2), NaN where ``ok`` is False (no positive flux, or a windowed
    measurement that failed)."""

    y: Float[np.ndarray, " n"]
    x: Float[np.ndarray, " n"]
    qyy: Float[np.ndarray, " n"]
    qyx: Float[np.ndarray, " n"]
    qxx: Float[np.ndarray, " n"]
    ok: Bool[np.ndarray, " n"]

    @property
    def q(self) -> Float[np.ndarray, "n 3"]:
        """``(n, 3)`` stack of ``(qyy, qyx, qxx)``."""
        return np.stack([self.qyy, self.qyx, self.qxx], axis=-1)

    @property
    def size(self) -> Float[np.ndarray, " n"]:
        """``sqrt(trace / 2)``: the sigma of a round Gaussian of the same trace."""
        return np.sqrt((self.qyy + self.qxx) / 2)


def image_moments(
    images: Float[np.ndarray, "n y x"] | Float[np.ndarray, "y x"],
    weights: Float[np.ndarray, "y x"] | None = None,
    positions: Float[np.ndarray, "n 2"] | None = None,
    *,
    window_sigma: float | None = None,
    n_iter: int = 4,
) -> Moments:
    """Centroids and second moments of sources (see the module docstring).

    **Arguments:**

    - `images`: plain moments: ``(n, y, x)``, one image per source; windowed: one
      ``(y, x)`` image holding all the sources.
    - `weights`: windowed only: ``(y, x)``; pixels of weight 0 are left out.
    - `positions`: windowed only: ``(n, 2)`` ``(y, x)`` centres of the sources (the
      moments are taken about them; ``y``, ``x`` of the result are these).
    - `window_sigma`: None: plain moments; a number: the starting sigma (pixels) of the
      Gaussian window, afterwards ``1.5`` times the measured size, within [1, 12].
    - `n_iter`: windowed only: window iterations.
    """
    if window_sigma is None:
        if weights is not None or positions is not None:
            raise ValueError("weights, positions: only for windowed moments (give window_sigma)")
        return _plain(np.asarray(images, np.float64))
    if positions is None:
        raise ValueError("positions: windowed moments need the (n, 2) source positions")
    image = np.asarray(images, np.float64)
    if image.ndim != 2:
        raise ValueError(f"images: windowed moments take one (y, x) image, got shape {image.shape}")
    w = np.ones_like(image) if weights is None else np.asarray(weights, np.float64)
    return _windowed(image, w, np.asarray(positions, np.float64).reshape(-1, 2), window_sigma, n_iter)


def _plain(images: np.ndarray) -> Moments:
    if images.ndim != 3:
        raise ValueError(f"images: plain moments take (n, y, x), got shape {images.shape}")
    _, ny, nx = images.shape
    yy, xx = np.mgrid[:ny, :nx]
    img = np.clip(images, 0, None)
    tot = img.sum(axis=(1, 2))
    safe = np.where(tot > 0, tot, 1.0)
    cy = (img * yy).sum(axis=(1, 2)) / safe
    cx = (img * xx).sum(axis=(1, 2)) / safe
    dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
    qyy = (img * dy * dy).sum(axis=(1, 2)) / safe
    qyx = (img * dy * dx).sum(axis=(1, 2)) / safe
    qxx = (img * dx * dx).sum(axis=(1, 2)) / safe
    ok = tot > 0
    nan = lambda a: np.where(ok, a, np.nan)  # noqa: E731
    return Moments(nan(cy), nan(cx), nan(qyy), nan(qyx), nan(qxx), ok)


def _windowed(image, weights, positions, window_sigma, n_iter) -> Moments:
    ny, nx = image.shape
    yy, xx = np.mgrid[:ny, :nx]
    n = len(positions)
    out = np.full((n, 3), np.nan)
    ok = np.zeros(n, bool)
    if n == 0:
        return Moments(positions[:, 0], positions[:, 1], out[:, 0], out[:, 1], out[:, 2], ok)
    d2 = (yy[None] - positions[:, 0, None, None]) ** 2 + (xx[None] - positions[:, 1, None, None]) ** 2
    owner = np.argmin(d2, axis=0)
    img = np.where(weights > 0, np.clip(image, 0, None), 0.0)
    for s in range(n):
        cell = owner == s
        sw = window_sigma
        q = None
        for _ in range(n_iter):
            wgt = np.exp(-0.5 * d2[s] / sw**2) * cell * img
            tot = wgt.sum()
            if not tot > 0:
                break
            dy = yy - positions[s, 0]
            dx = xx - positions[s, 1]
            m = np.array([(wgt * dy * dy).sum(), (wgt * dy * dx).sum(), (wgt * dx * dx).sum()]) / tot
            # A Gaussian of covariance C seen through a window of sw^2: measured
            # M = (C^-1 + sw^-2)^-1, so C^-1 = M^-1 - sw^-2 (isotropic window).
            mat = np.array([[m[0], m[1]], [m[1], m[2]]])
            try:
                cinv = np.linalg.inv(mat) - np.eye(2) / sw**2
                c = np.linalg.inv(cinv)
                q = c if np.all(np.linalg.eigvalsh(c) > 0) else mat
            except np.linalg.LinAlgError:
                break
            sw = float(np.clip(np.sqrt(np.trace(q) / 2) * 1.5, 1.0, 12.0))
        if q is not None and np.all(np.isfinite(q)):
            out[s] = (q[0, 0], q[0, 1], q[1, 1])
            ok[s] = True
    return Moments(positions[:, 0].copy(), positions[:, 1].copy(), out[:, 0], out[:, 1], out[:, 2], ok)
