"""Diffusion posterior sampling (DPS; Chung et al. 2023), a baseline."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .base import AbstractGuidance

__all__ = ["DPS"]


class DPS(AbstractGuidance):
    """``grad log p(y | x_t) ~ zeta sqrt(n) / ||r|| J^T E^T A^T W^{1/2} r`` with
    ``r = W^{1/2} (y - A E D(x_t))``: the likelihood at the denoised point, its covariance
    ignored, the step normalised by the residual norm as in Chung et al. (``n`` the
    number of valid pixels, so that the step is the plain Gaussian likelihood score once
    residuals reach the noise level). Then ``E[x | x_t, y] ~ D + sigma^2 grad log p``.
    Not calibrated; kept as the usual baseline.
    """

    zeta: float = eqx.field(static=True, default=1.0)

    def __call__(self, post, x, sigma):
        d, vjp = jax.vjp(lambda u: post.prior(u, sigma), x)
        r = post.residual_white(d)
        norm = jnp.sqrt(sum(jnp.sum(ri**2) for ri in r))
        step = self.zeta * jnp.sqrt(post.n_valid.astype(x.dtype)) / jnp.maximum(norm, 1e-12)
        g = vjp(post.adjoint_white(r))[0]
        return d + sigma**2 * step * g
