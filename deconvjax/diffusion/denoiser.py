"""Denoisers ``D(x, sigma) ~ E[x_0 | x_0 + sigma eps = x]`` in variance-exploding coordinates.

A denoiser is the one object every sampler needs: by Tweedie's formula the score of the
noised density is ``(D(x, sigma) - x) / sigma^2``. Denoisers are unbatched (one image of
shape ``(band, y, x)``, or any shape for the analytic ones); samplers vmap them. Anything
that maps ``(x, sigma) -> x_0 estimate`` can be passed to the samplers, including the
posterior denoisers of `deconvjax.posterior`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "AbstractDenoiser",
    "GaussianDenoiser",
    "StationaryGaussianDenoiser",
    "GaussianMixtureDenoiser",
    "score_from_denoiser",
    "gaussian_log_prob",
]


class AbstractDenoiser(eqx.Module):
    """Unbatched Tweedie denoiser in VE coordinates.

    ``exact_jacobian`` (a class attribute) declares whether the denoiser's Jacobian is
    exact, ``Cov[x | x_t] / sigma^2`` by Tweedie's second-order formula: symmetric and
    positive semi-definite. True for the analytic denoisers below, False for learned
    networks (the default). Posterior guidance reads it to choose its linear solve
    (`deconvjax.posterior.MMPS`).
    """

    exact_jacobian: ClassVar[bool] = False

    @abc.abstractmethod
    def __call__(self, x: Float[Array, "*shape"], sigma: Float[ArrayLike, ""]) -> Float[
        Array, "*shape"
    ]:
        """Estimate ``E[x_0 | x_0 + sigma * eps = x]`` for one image ``x``."""

    def score(self, x: Float[Array, "*shape"], sigma: Float[ArrayLike, ""]) -> Float[
        Array, "*shape"
    ]:
        """Score ``grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2``."""
        return score_from_denoiser(self, x, sigma)


def score_from_denoiser(
    denoiser: Callable, x: Float[Array, "*shape"], sigma: Float[ArrayLike, ""]
) -> Float[Array, "*shape"]:
    """``(D(x, sigma) - x) / sigma^2`` for any callable denoiser."""
    sigma = jnp.asarray(sigma, dtype=x.dtype)
    return (denoiser(x, sigma) - x) / sigma**2


class GaussianDenoiser(AbstractDenoiser):
    """Exact denoiser for ``x_0 ~ N(mean, cov)``, data of any shape (flattened inside).

    ``D(x, sigma) = mean + C (C + sigma^2 I)^{-1} (x - mean)``, evaluated through the
    eigendecomposition of ``C`` computed once at construction.
    """

    exact_jacobian: ClassVar[bool] = True

    mean: Float[Array, "*shape"]
    eigvals: Float[Array, " n"]
    eigvecs: Float[Array, "n n"]

    def __init__(self, mean: Float[ArrayLike, "*shape"], cov: Float[ArrayLike, "n n"]):
        mean = jnp.asarray(mean, dtype=float)
        cov = jnp.asarray(cov, dtype=float)
        n = mean.size
        if cov.shape != (n, n):
            raise ValueError(f"cov: expected shape ({n}, {n}) for a mean of size {n}, got {cov.shape}")
        w, v = jnp.linalg.eigh(0.5 * (cov + cov.T))
        self.mean = mean
        self.eigvals = jnp.clip(w, 0.0, None)
        self.eigvecs = v

    @property
    def cov(self) -> Float[Array, "n n"]:
        return (self.eigvecs * self.eigvals) @ self.eigvecs.T

    def __call__(self, x, sigma):
        d = (x - self.mean).reshape(-1)
        coef = self.eigvals / (self.eigvals + sigma**2)
        out = self.eigvecs @ (coef * (self.eigvecs.T @ d))
        return self.mean + out.reshape(self.mean.shape)

    def log_prob(self, x: Float[Array, "*shape"], sigma: Float[ArrayLike, ""] = 0.0):
        """Exact log-density of the noised marginal ``N(mean, C + sigma^2 I)`` at ``x``."""
        return gaussian_log_prob(x - self.mean, self.eigvecs, self.eigvals + sigma**2)


def gaussian_log_prob(d, eigvecs, eigvals):
    z = eigvecs.T @ d.reshape(-1)
    return -0.5 * (jnp.sum(z**2 / eigvals) + jnp.sum(jnp.log(2 * jnp.pi * eigvals)))


class StationaryGaussianDenoiser(AbstractDenoiser):
    """Exact denoiser for a stationary (periodic) Gaussian field on ``(band, y, x)`` images.

    The covariance is diagonal in Fourier space, ``power[k]`` being the variance of the
    orthonormal 2-D FFT coefficient ``k`` (per band, no cross-band correlation), so
    ``D = mean + IFFT(power / (power + sigma^2) FFT(x - mean))`` costs two FFTs.
    """

    exact_jacobian: ClassVar[bool] = True

    mean: Float[Array, "band y x"]
    power: Float[Array, "band y x"]

    def __init__(self, mean: Float[ArrayLike, "band y x"], power: Float[ArrayLike, "band y x"]):
        mean = jnp.asarray(mean, dtype=float)
        power = jnp.asarray(power, dtype=float)
        if mean.ndim != 3 or power.shape != mean.shape:
            raise ValueError(
                f"mean and power: expected two arrays of the same (band, y, x) shape, got "
                f"{mean.shape} and {power.shape}"
            )
        self.mean = mean
        self.power = jnp.clip(power, 0.0, None)

    def __call__(self, x, sigma):
        f = jnp.fft.fft2(x - self.mean, norm="ortho")
        return self.mean + jnp.fft.ifft2(f * self.power / (self.power + sigma**2), norm="ortho").real

    def log_prob(self, x, sigma=0.0):
        """Exact log-density of the noised field (the Fourier transform is unitary)."""
        f = jnp.fft.fft2(x - self.mean, norm="ortho")
        var = self.power + sigma**2
        # A real field's orthonormal FFT coefficients have E|F_k|^2 = power[k]; the
        # density of the real field equals that of independent real Gaussians with
        # variance var in the pixel basis after the unitary map, so the quadratic form
        # is sum |F_k|^2 / var_k (Parseval) and the log-determinant is sum log var_k.
        return -0.5 * (jnp.sum(jnp.abs(f) ** 2 / var) + jnp.sum(jnp.log(2 * jnp.pi * var)))


class GaussianMixtureDenoiser(AbstractDenoiser):
    """Exact denoiser for a Gaussian mixture ``sum_k w_k N(means_k, covs_k)``.

    ``D = sum_k r_k(x) D_k(x)`` with responsibilities ``r_k`` of the noised components.
    """

    exact_jacobian: ClassVar[bool] = True

    log_weights: Float[Array, " k"]
    means: Float[Array, "k n"]
    eigvals: Float[Array, "k n"]
    eigvecs: Float[Array, "k n n"]
    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, weights: Float[ArrayLike, " k"], means: Float[ArrayLike, "k *shape"],  # noqa: F821
                 covs: Float[ArrayLike, "k n n"]):
        weights = jnp.asarray(weights, dtype=float)
        means = jnp.asarray(means, dtype=float)
        covs = jnp.asarray(covs, dtype=float)
        k = weights.shape[0]
        if weights.ndim != 1 or means.shape[0] != k or covs.shape[0] != k:
            raise ValueError(
                "weights, means, covs: expected a leading component axis of the same length, "
                f"got {weights.shape}, {means.shape}, {covs.shape}"
            )
        n = int(means[0].size)
        if covs.shape[1:] != (n, n):
            raise ValueError(f"covs: expected shape ({k}, {n}, {n}), got {covs.shape}")
        if bool(jnp.any(weights <= 0)):
            raise ValueError("weights: expected positive mixture weights")
        self.shape = tuple(means.shape[1:])
        self.log_weights = jnp.log(weights / jnp.sum(weights))
        self.means = means.reshape(k, n)
        w, v = jax.vmap(jnp.linalg.eigh)(0.5 * (covs + jnp.swapaxes(covs, 1, 2)))
        self.eigvals = jnp.clip(w, 0.0, None)
        self.eigvecs = v

    def _components(self, x, sigma):
        d = x.reshape(-1)[None] - self.means
        var = self.eigvals + sigma**2
        logp = jax.vmap(gaussian_log_prob)(d, self.eigvecs, var) + self.log_weights
        z = jnp.einsum("kji,kj->ki", self.eigvecs, d)
        den = self.means + jnp.einsum("kij,kj->ki", self.eigvecs, self.eigvals / var * z)
        return logp, den

    def __call__(self, x, sigma):
        logp, den = self._components(x, sigma)
        r = jax.nn.softmax(logp)
        return (r @ den).reshape(self.shape)

    def log_prob(self, x, sigma=0.0):
        logp, _ = self._components(x, sigma)
        return jax.nn.logsumexp(logp)
