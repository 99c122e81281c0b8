"""The likelihood family's interface: how a residual is whitened, its chi2 and the
normalising constant, so that observations, fits and samplers use any noise model alike."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._types import Cube


class AbstractLikelihood(eqx.Module):
    """The noise model of an observation: how far data may be from the model.

    Subclasses say how to whiten a residual (so that chi2 is the sum of its squares)
    and what the log-normalising constant is; the log-likelihood follows. Inverse-
    variance ``weights`` of 0 mask pixels in every likelihood.
    """

    @abc.abstractmethod
    def whiten(self, residual: Cube, weights: Cube) -> Cube:
        """The residual (data - model) turned into independent unit-variance noise."""

    @abc.abstractmethod
    def log_normaliser(self, weights: Cube) -> Float[Array, ""]:
        """``-1/2 log det(2 pi C)`` over the pixels that count."""

    def chi2(self, data: Cube, model: Cube, weights: Cube) -> Float[Array, ""]:
        return jnp.sum(self.whiten(data - model, weights) ** 2)

    def log_prob(self, data: Cube, model: Cube, weights: Cube) -> Float[Array, ""]:
        return -0.5 * self.chi2(data, model, weights) + self.log_normaliser(weights)
