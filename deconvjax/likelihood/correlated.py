"""Stationary correlated Gaussian noise (drizzled HST images): whitening by the noise power
spectrum in Fourier space, from a correlation function or a power spectrum."""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._fft import centred_to_origin
from .base import AbstractLikelihood


class CorrelatedGaussianLikelihood(AbstractLikelihood):
    """Stationary correlated Gaussian noise, diagonal in Fourier space: the noise of
    drizzled or resampled images such as HST COSMOS.

    The covariance is the circulant matrix of the noise correlation function on the
    observation's grid; its eigenvalues are the noise power spectrum ``P``, so
    ``chi2 = sum_k |FFT(r)_k|^2 / (N P_k)`` costs two FFTs. Weights only mask here
    (masked pixels' residuals are set to zero before whitening, an approximation that
    is exact without masks); the amplitude of the noise is in ``P``.

    **Arguments:**

    - `power_spectrum`: ``(band or 1, ny, nx // 2 + 1)``, the ``rfft2`` layout, positive.

    Build it with `from_correlation_function` or `from_power_spectrum`.
    """

    power_spectrum: Float[Array, "band ny nxr"]

    def __init__(self, power_spectrum):
        p = np.asarray(power_spectrum, dtype=np.float64)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or not np.all(np.isfinite(p)) or np.any(p <= 0):
            raise ValueError("power_spectrum must be a finite, positive (band, ny, nx // 2 + 1) array")
        self.power_spectrum = jnp.asarray(p, dtype=float)

    @classmethod
    def from_power_spectrum(cls, power: np.ndarray) -> "CorrelatedGaussianLikelihood":
        """From a full-layout ``(band or 1, ny, nx)`` power spectrum (``fft2`` of the
        circular covariance function, zero frequency at index 0)."""
        power = np.asarray(power, dtype=np.float64)
        nx = power.shape[-1]
        return cls(power[..., : nx // 2 + 1])

    @classmethod
    def from_correlation_function(
        cls, correlation: np.ndarray, shape: tuple[int, int], variance: float | None = None
    ) -> "CorrelatedGaussianLikelihood":
        """From a noise correlation function image ``(h, w)`` (or ``(band, h, w)``)
        centred on pixel ``(h // 2, w // 2)``, e.g. GalSim's COSMOS ACS file, for
        observations of ``shape`` (ny, nx). `variance`, if given, rescales it so that
        its zero-lag value (the pixel variance) is that."""
        cf = np.asarray(correlation, dtype=np.float64)
        if cf.ndim == 2:
            cf = cf[None]
        if not np.all(np.isfinite(cf)):
            raise ValueError("correlation contains NaN or inf")
        h, w = cf.shape[-2:]
        if h > shape[0] or w > shape[1]:
            # Crop to the observation: correlations longer than the image are unused.
            cy, cx = h // 2, w // 2
            hy, hx = min(h, shape[0] - 1 + shape[0] % 2) // 2, min(w, shape[1] - 1 + shape[1] % 2) // 2
            cf = cf[:, cy - hy : cy + hy + 1, cx - hx : cx + hx + 1]
            h, w = cf.shape[-2:]
        if variance is not None:
            cf = cf * (variance / cf[:, h // 2, w // 2])[:, None, None]
        # Symmetrise (a correlation function is even) so the spectrum is real.
        cf = 0.5 * (cf + cf[:, ::-1, ::-1])
        power = np.fft.rfft2(centred_to_origin(cf, shape)).real
        # A truncated correlation function can have a slightly negative spectrum at
        # some frequencies; those modes are floored rather than trusted.
        power = np.maximum(power, 1e-6 * power.max())
        return cls(power)

    def whiten(self, residual, weights):
        ny, nx = residual.shape[-2:]
        r = jnp.where(weights > 0, residual, 0.0)
        return jnp.fft.irfft2(jnp.fft.rfft2(r) / jnp.sqrt(self.power_spectrum), s=(ny, nx))

    def log_normaliser(self, weights):
        ny, nx = weights.shape[-2:]
        # log det over the full rfft layout: the columns 1..(nx-1)//2 stand for two
        # frequencies each.
        mult = jnp.ones(self.power_spectrum.shape[-1]).at[1 : (nx + 1) // 2].set(2.0)
        logdet = jnp.sum(jnp.log(2 * jnp.pi * self.power_spectrum) * mult)
        nb = weights.shape[0] if self.power_spectrum.shape[0] == 1 else 1
        return -0.5 * nb * logdet
