"""Independent Gaussian noise per pixel, from inverse-variance weights (0: masked)."""

import jax.numpy as jnp

from .base import AbstractLikelihood


class GaussianLikelihood(AbstractLikelihood):
    """Independent Gaussian noise per pixel with inverse variance ``weights``
    (the usual case: sky- and source-limited CCD noise)."""

    def whiten(self, residual, weights):
        return residual * jnp.sqrt(weights)

    def log_normaliser(self, weights):
        valid = weights > 0
        return 0.5 * jnp.sum(jnp.where(valid, jnp.log(jnp.where(valid, weights, 1.0) / (2 * jnp.pi)), 0.0))
