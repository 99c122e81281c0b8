"""Noise distributions as objects: the score of the noise ``n`` in ``y = A x + n``, so that
MAP fits (the score at zero perturbation) and posterior guidance (a Gaussian fit, or the
score of the noise convolved with a Gaussian) use any noise model alike.

`GaussianNoiseModel` is the analytic member (stationary correlated Gaussian noise); the
learned member (a score network trained on noise cutouts, SLIC) lives in `learned.py`.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._types import Cube
from .correlated import CorrelatedGaussianLikelihood


class AbstractNoiseModel(eqx.Module):
    """The distribution ``p`` of the noise on images of one shape ``(band, ny, nx)``.

    Members say what the score of the noise is, at zero perturbation (the likelihood's
    score for MAP fits) and after convolution with ``N(0, sigma^2 I)`` (what denoising
    score matching learns), and which stationary Gaussian has the same second moments
    (what covariance-based guidance such as MMPS needs).
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int]:
        """``(band, ny, nx)`` of the images the model describes."""

    @abc.abstractmethod
    def score(self, noise: Cube, sigma: Float[Array, ""] | float = 0.0) -> Cube:
        """``grad log p_sigma(noise)`` with ``p_sigma = p * N(0, sigma^2 I)``; ``sigma = 0``
        is the noise distribution itself. `noise`: ``(band, ny, nx)``, in data units."""

    @abc.abstractmethod
    def gaussian_fit(self) -> CorrelatedGaussianLikelihood:
        """The stationary Gaussian with the noise's power spectrum (its second moments)."""

    @property
    def min_sigma(self) -> float:
        """The smallest perturbation (data units) at which `score` is what it says: below
        it, a model may evaluate its score at this floor instead (a learned model's
        Tweedie score needs ``sigma > 0``). 0 for analytic models."""
        return 0.0

    def check_shape(self, shape: tuple[int, ...], name: str = "data") -> None:
        """Raise a clear error when images of `shape` are not the ones this model is for."""
        if tuple(shape) != tuple(self.shape):
            raise ValueError(
                f"{name}: the noise model describes images of shape (band, y, x) = "
                f"{tuple(self.shape)}, got {tuple(shape)}; train a noise model on cutouts "
                "of this size and band count"
            )


class GaussianNoiseModel(AbstractNoiseModel):
    """Stationary correlated Gaussian noise with power spectrum ``P`` (the eigenvalues of
    its circulant covariance ``C``, the convention of `CorrelatedGaussianLikelihood`).

    Its score is analytic, ``-(C + sigma^2 I)^{-1} n``, two FFTs: the reference that
    learned noise scores are tested against.

    **Arguments:**

    - `power_spectrum`: ``(band, ny, nx // 2 + 1)``, the ``rfft2`` layout, positive.
    - `nx`: the images' width (the ``rfft2`` layout does not determine it).
    """

    power_spectrum: Float[Array, "band ny nxr"]
    nx: int = eqx.field(static=True)

    def __init__(self, power_spectrum, nx: int):
        p = np.asarray(power_spectrum, dtype=np.float64)
        if p.ndim == 2:
            p = p[None]
        if p.ndim != 3 or not np.all(np.isfinite(p)) or np.any(p <= 0):
            raise ValueError("power_spectrum must be a finite, positive (band, ny, nx // 2 + 1) array")
        if p.shape[-1] != nx // 2 + 1:
            raise ValueError(f"nx: expected a width whose rfft2 has {p.shape[-1]} columns, got {nx}")
        self.power_spectrum = jnp.asarray(p, dtype=float)
        self.nx = int(nx)

    @classmethod
    def from_likelihood(cls, likelihood: CorrelatedGaussianLikelihood, nx: int) -> "GaussianNoiseModel":
        """The noise model of a `CorrelatedGaussianLikelihood` on images ``nx`` wide."""
        return cls(np.asarray(likelihood.power_spectrum), nx)

    @classmethod
    def white(cls, variance, shape: tuple[int, int, int]) -> "GaussianNoiseModel":
        """White noise of per-band `variance` (scalar or ``(band,)``) on ``(band, ny, nx)``."""
        band, ny, nx = shape
        v = np.broadcast_to(np.asarray(variance, dtype=np.float64).reshape(-1, 1, 1), (band, 1, 1))
        return cls(np.broadcast_to(v, (band, ny, nx // 2 + 1)).copy(), nx)

    @property
    def shape(self):
        return (self.power_spectrum.shape[0], self.power_spectrum.shape[1], self.nx)

    def score(self, noise, sigma=0.0):
        ny, nx = noise.shape[-2:]
        spectrum = self.power_spectrum + jnp.asarray(sigma, dtype=float) ** 2
        return -jnp.fft.irfft2(jnp.fft.rfft2(noise) / spectrum, s=(ny, nx))

    def gaussian_fit(self):
        return CorrelatedGaussianLikelihood(self.power_spectrum)
