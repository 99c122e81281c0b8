"""Gaussian PSFs, the usual model-frame PSF: exact pixel-integrated and band-limited kernels."""

import math
from collections.abc import Sequence

import numpy as np

from .base import AbstractPSF, broadcast_bands, normalise, per_band

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _pixel_integrated_1d(n: int, sigma: float) -> np.ndarray:
    """Integral of a unit Gaussian over each of n unit pixels centred on n // 2."""
    edges = (np.arange(n + 1) - n // 2 - 0.5) / (np.sqrt(2.0) * sigma)
    return 0.5 * np.diff(_erf(edges))


def _band_limited_1d(n: int, sigma: float) -> np.ndarray:
    """A Gaussian sampled at n pixel centres, made periodic over n pixels: the inverse
    DFT of its exact Fourier transform. Unlike plain sampling, its DFT has no aliasing,
    so products with other transforms on the same grid stay exact."""
    k = np.fft.fftfreq(n)
    g = np.fft.ifft(np.exp(-2 * np.pi**2 * sigma**2 * k**2)).real
    return np.roll(g, n // 2)


class GaussianPSF(AbstractPSF):
    """A circular Gaussian PSF.

    **Arguments:**

    - `sigma`: standard deviation in arcsec (in pixels when the pixel scale is 1), a
      scalar for all bands or one value per band.
    """

    sigma: np.ndarray

    def __init__(self, sigma: float | Sequence[float]):
        self.sigma = per_band(sigma, "sigma")

    def kernel(self, shape, pixel_scale, n_bands, *, pixel_integrated=True):
        sigmas = broadcast_bands(self.sigma, n_bands, "sigma") / pixel_scale
        profile = _pixel_integrated_1d if pixel_integrated else _band_limited_1d
        out = np.stack([np.outer(profile(shape[0], s), profile(shape[1], s)) for s in sigmas])
        return normalise(out)

    def radius(self) -> float:
        # The radius holding 90% of the flux.
        return float(np.sqrt(2 * np.log(10.0)) * np.max(self.sigma))
