"""Moffat PSFs (ground-based seeing), parametrised by FWHM and beta."""

from collections.abc import Sequence

import numpy as np

from .base import AbstractPSF, broadcast_bands, gauss_legendre_offsets, normalise, per_band


class MoffatPSF(AbstractPSF):
    """A circular Moffat PSF, ``I(r) ~ (1 + (r / alpha)^2)^-beta``, the usual model of
    ground-based seeing with its extended wings.

    **Arguments:**

    - `fwhm`: full width at half maximum in arcsec (per band or one for all).
    - `beta`: the wing exponent (> 1); 2.5 to 4.765 describe ground-based seeing.
    """

    fwhm: np.ndarray
    beta: np.ndarray

    def __init__(self, fwhm: float | Sequence[float], beta: float | Sequence[float] = 3.5):
        self.fwhm = per_band(fwhm, "fwhm")
        self.beta = per_band(beta, "beta")
        if np.any(self.beta <= 1.0):
            raise ValueError(f"beta must be > 1 for a finite flux, got {self.beta}")

    def kernel(self, shape, pixel_scale, n_bands, *, pixel_integrated=True):
        fwhm = broadcast_bands(self.fwhm, n_bands, "fwhm") / pixel_scale
        beta = broadcast_bands(self.beta, n_bands, "beta")
        # Pixel integration by 6x6 Gauss-Legendre quadrature per pixel: exact to far
        # below float32 precision for a profile this smooth at FWHM >= 1 pixel.
        nodes, weights = gauss_legendre_offsets(6) if pixel_integrated else (np.zeros(1), np.ones(1))
        y = (np.arange(shape[0]) - shape[0] // 2)[:, None] + nodes[None, :]
        x = (np.arange(shape[1]) - shape[1] // 2)[:, None] + nodes[None, :]
        r2 = y[:, None, :, None] ** 2 + x[None, :, None, :] ** 2
        w2 = weights[:, None] * weights[None, :]
        out = []
        for f, b in zip(fwhm, beta):
            alpha = f / (2.0 * np.sqrt(2.0 ** (1.0 / b) - 1.0))
            out.append(np.einsum("yxij,ij->yx", (1.0 + r2 / alpha**2) ** (-b), w2))
        return normalise(np.stack(out))

    def radius(self) -> float:
        # The radius holding 90% of the flux of the widest band, analytically:
        # 1 - (1 + r^2/alpha^2)^(1 - beta) = 0.9.
        out = 0.0
        for f, b in zip(self.fwhm, np.broadcast_to(self.beta, self.fwhm.shape)):
            alpha = f / (2.0 * np.sqrt(2.0 ** (1.0 / b) - 1.0))
            out = max(out, alpha * np.sqrt(0.1 ** (1.0 / (1.0 - b)) - 1.0))
        return float(out)
