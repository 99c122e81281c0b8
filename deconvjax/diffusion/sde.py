"""Forward noising SDEs in the EDM parametrisation ``x_t = s(t) * (x_0 + sigma(t) * eps)``.

Every SDE here is linear with a drift ``f(t) x`` and a scalar diffusion ``g(t)``, so its
Gaussian perturbation kernel is ``N(s(t) x_0, s(t)^2 sigma(t)^2 I)``. Writing all of them in
terms of ``(s, sigma)`` (Karras et al. 2022, "EDM") lets one denoiser ``D(x, sigma)`` trained
in variance-exploding coordinates serve every SDE: the score of the marginal at time ``t`` is
``(s D(x / s, sigma) - x) / (s sigma)^2``.

Time runs over ``[0, 1]``; samplers integrate from ``t = 1`` down to ``t = t_min``
(``t_min = 0`` for the VE SDE, where ``sigma(0) = sigma_min`` already).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["AbstractSDE", "VESDE", "VPSDE"]


Scalar = Float[Array, ""]


class AbstractSDE(eqx.Module):
    """Linear forward SDE ``dx = f(t) x dt + g(t) dW`` on ``t in [0, 1]``.

    Concrete SDEs define `sigma` (the variance-exploding noise level, in data units) and
    `scale` (``s(t)``, the mean's shrink factor); the rest follows.
    """

    t_min: eqx.AbstractVar[float]

    @abc.abstractmethod
    def sigma(self, t: ArrayLike) -> Scalar:
        """Noise level in VE (data) units: ``x_t / s(t) = x_0 + sigma(t) eps``."""

    @abc.abstractmethod
    def scale(self, t: ArrayLike) -> Scalar:
        """Mean coefficient ``s(t)`` (``mu(t) = s(t) x_0``)."""

    @abc.abstractmethod
    def drift_coefficient(self, t: ArrayLike) -> Scalar:
        """``f(t)`` with drift ``f(t) x``; equals ``d log s / dt``."""

    @abc.abstractmethod
    def diffusion(self, t: ArrayLike) -> Scalar:
        """``g(t)``; equals ``s(t) sqrt(d sigma^2 / dt)``."""

    @abc.abstractmethod
    def t_of_sigma(self, sigma: ArrayLike) -> Scalar:
        """Inverse of `sigma`."""

    def drift(self, t: ArrayLike, x: Float[Array, "..."]) -> Float[Array, "..."]:
        """Forward drift ``f(t) x``."""
        return self.drift_coefficient(t) * x

    def marginal_prob(
        self, x0: Float[Array, "..."], t: ArrayLike
    ) -> tuple[Float[Array, "..."], Scalar]:
        """Gaussian perturbation kernel: ``(mean, std)`` of ``x_t | x_0``."""
        s = self.scale(t)
        return s * x0, s * self.sigma(t)

    def prior_std(self) -> Scalar:
        """Std of the reference Gaussian ``N(0, std^2 I)`` the reverse process starts from."""
        return self.scale(1.0) * jnp.sqrt(self.sigma(1.0) ** 2 + 1.0)

    @property
    def sigma_max(self) -> Scalar:
        return self.sigma(1.0)


class VESDE(AbstractSDE):
    """Variance-exploding SDE: ``s = 1``, ``sigma(t) = sigma_min (sigma_max/sigma_min)^t``.

    ``g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))``. Choose ``sigma_max`` about 100x
    the data scale (the prior's reference Gaussian then hides the data completely) and
    ``sigma_min`` well below the smallest structure that matters (1e-3 for unit-scale data).
    """

    sigma_min_: float = eqx.field(static=True)
    sigma_max_: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True, default=0.0)

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 100.0, t_min: float = 0.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(
                f"sigma_min and sigma_max: expected 0 < sigma_min < sigma_max, got "
                f"{sigma_min}, {sigma_max}"
            )
        self.sigma_min_ = float(sigma_min)
        self.sigma_max_ = float(sigma_max)
        self.t_min = float(t_min)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max_ / self.sigma_min_)

    def sigma(self, t):
        return self.sigma_min_ * jnp.exp(jnp.asarray(t) * self._log_ratio)

    def scale(self, t):
        return jnp.ones_like(jnp.asarray(t, dtype=float))

    def drift_coefficient(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=float))

    def diffusion(self, t):
        return self.sigma(t) * jnp.sqrt(2.0 * self._log_ratio)

    def t_of_sigma(self, sigma):
        return jnp.log(jnp.asarray(sigma) / self.sigma_min_) / self._log_ratio

    def prior_std(self):
        return jnp.asarray(self.sigma_max_)


class VPSDE(AbstractSDE):
    """Variance-preserving SDE (Song et al. 2021) with a linear ``beta(t)``.

    ``s(t) = exp(-beta_min t / 2 - (beta_max - beta_min) t^2 / 4)``,
    ``sigma(t) = sqrt(1 / s^2 - 1)``, ``f = -beta / 2``, ``g = sqrt(beta)``. ``t_min``
    (default 1e-3, where ``sigma ~ 1e-2``) keeps samplers away from the singular ``t = 0``.
    The default ``beta_max`` gives ``sigma(1) ~ 150``, i.e. ~100x unit-scale data.
    """

    beta_min: float = eqx.field(static=True)
    beta_max: float = eqx.field(static=True)
    t_min: float = eqx.field(static=True, default=1e-3)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not (0 < beta_min < beta_max):
            raise ValueError(
                f"beta_min and beta_max: expected 0 < beta_min < beta_max, got "
                f"{beta_min}, {beta_max}"
            )
        if not (0.0 <= t_min < 1.0):
            raise ValueError(f"t_min: expected a value in [0, 1), got {t_min}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.t_min = float(t_min)

    def beta(self, t):
        return self.beta_min + jnp.asarray(t) * (self.beta_max - self.beta_min)

    def _log_scale(self, t):
        t = jnp.asarray(t, dtype=float)
        return -0.5 * self.beta_min * t - 0.25 * (self.beta_max - self.beta_min) * t**2

    def scale(self, t):
        return jnp.exp(self._log_scale(t))

    def sigma(self, t):
        # expm1 keeps precision at small t where 1/s^2 - 1 ~ beta_min t.
        return jnp.sqrt(jnp.expm1(-2.0 * self._log_scale(t)))

    def drift_coefficient(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))

    def t_of_sigma(self, sigma):
        # Solve (b1-b0)/2 t^2 + b0 t - log(1 + sigma^2) = 0 for t >= 0.
        c = jnp.log1p(jnp.asarray(sigma) ** 2)
        a = 0.5 * (self.beta_max - self.beta_min)
        b = self.beta_min
        return 2.0 * c / (b + jnp.sqrt(b * b + 4.0 * a * c))

    def prior_std(self):
        return jnp.asarray(1.0)
