"""Many posteriors of the same shapes (many cutouts / simulations) as one denoiser, so a
single sampler solve draws samples for all of them with one batched prior call."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..diffusion.denoiser import AbstractDenoiser
from .base import PosteriorDenoiser

__all__ = ["StackedPosterior"]


class StackedPosterior(AbstractDenoiser):
    """``D(X, sigma)`` for ``X`` of shape ``(n_problems, *x_shape)``: problem ``i`` uses
    the template `PosteriorDenoiser` with its observations' data replaced by
    ``data[k][i]``. Only the data are batched (noise, PSFs and prior are shared), so the
    prior network runs once on the whole batch per call.

    Build it with `StackedPosterior(template, datas)`; ``datas`` is one array of shape
    ``(n_problems, *obs.shape)`` per observation of the template.
    """

    template: PosteriorDenoiser
    data: tuple[Array, ...]

    def __init__(self, template: PosteriorDenoiser, data: Sequence[Float[Array, "n band y x"]]):
        if not isinstance(template, PosteriorDenoiser):
            raise TypeError(f"template: expected a PosteriorDenoiser, got {type(template).__name__}")
        data = tuple(jnp.asarray(d, dtype=jnp.float32) for d in data)
        if len(data) != len(template.observations):
            raise ValueError(f"data: expected {len(template.observations)} arrays (one per "
                             f"observation), got {len(data)}")
        n = {d.shape[0] for d in data}
        if len(n) != 1:
            raise ValueError(f"data: arrays have different problem counts {sorted(n)}")
        for k, (d, o) in enumerate(zip(data, template.observations)):
            if d.shape[1:] != o.shape:
                raise ValueError(f"data[{k}]: expected shape (n, *{o.shape}), got {d.shape}")
        self.template = template
        self.data = data

    @property
    def n_problems(self) -> int:
        return self.data[0].shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_problems, *self.template.x_shape)

    def with_data(self, data: tuple[Array, ...]) -> PosteriorDenoiser:
        """The template with its observations' data replaced."""
        return eqx.tree_at(lambda p: tuple(o.data for o in p.observations), self.template, data)

    def __call__(self, x, sigma):
        def one(d, xi):
            return self.with_data(d)(xi, sigma)

        return jax.vmap(one)(self.data, x)
