"""The prior's score as a morphology regulariser inside MAP losses.

`prior_score_penalty` is a scalar term to add to a (jitted) loss. Its value is exactly zero,
but its gradient with respect to the morphologies is ``-weight * score``, the score of the
prior noised to a small level ``sigma`` (Tweedie: ``(D(x, sigma) - x) / sigma^2``). Gradient
descent on ``loss + penalty`` therefore takes a step along ``+weight * score``, i.e. towards
higher prior density: this is MAP with ``-weight * log p_sigma`` as the regulariser, without
ever evaluating the log-density (which a score network does not give).

It is built with the stop-gradient identity ``<sg(g), m> - sg(<g, m>)`` (value 0, gradient
``g``), so it works under `jit`, `grad`, `vmap` and forward-mode `jvp` alike. All sources of a
scene go through ONE batched network call (`vmap` over the source axis), never a loop.

Because the value is identically zero, line searches and convergence tests on the total loss
do not see the prior; use the gradient (optax steps) only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .denoiser import AbstractDenoiser
from .prior import ScorePrior

__all__ = ["prior_score_penalty", "prior_score"]


def _denoiser_and_scale(prior, scale):
    if isinstance(prior, ScorePrior):
        return prior.denoiser, (prior.flux_scale if scale is None else scale), prior.shape
    if isinstance(prior, AbstractDenoiser):
        return prior, (1.0 if scale is None else scale), getattr(prior, "shape", None)
    raise TypeError(f"prior: expected a ScorePrior or an AbstractDenoiser, got "
                    f"{type(prior).__name__}")


def prior_score(
    prior: ScorePrior | AbstractDenoiser,
    morphologies: Float[Array, "source band y x"],
    sigma: Float[ArrayLike, ""],
    *,
    scale: float | None = None,
) -> Float[Array, "source band y x"]:
    """Score ``grad_m log p_sigma(m)`` of each source's morphology, in morphology units.

    ``m = scale * x`` with ``x`` the prior's variable; ``scale`` defaults to the prior's
    ``flux_scale`` (morphologies in the physical units the prior was trained in), pass
    ``scale=1.0`` for morphologies already in prior units. ``sigma`` is in prior units.
    """
    den, c, shape = _denoiser_and_scale(prior, scale)
    if morphologies.ndim != 4:
        raise ValueError(f"morphologies: expected (source, band, y, x), got shape "
                         f"{morphologies.shape}")
    if shape is not None and tuple(morphologies.shape[1:]) != tuple(shape):
        raise ValueError(f"morphologies: the prior models (band, y, x) = {tuple(shape)}, got "
                         f"{tuple(morphologies.shape[1:])} per source")
    x = morphologies / c
    sigma = jnp.asarray(sigma, dtype=x.dtype)
    d = jax.vmap(den, in_axes=(0, None))(x, sigma)
    return (d - x) / sigma**2 / c


def prior_score_penalty(
    prior: ScorePrior | AbstractDenoiser,
    morphologies: Float[Array, "source band y x"],
    weight: Float[ArrayLike, "*source"],
    sigma: Float[ArrayLike, ""],
    *,
    scale: float | None = None,
) -> Float[Array, ""]:
    """Zero-valued loss term whose gradient w.r.t. ``morphologies`` is ``-weight * score``.

    **Arguments:**

    - `prior`: the shipped/loaded `ScorePrior` (or any denoiser over ``(band, y, x)``).
    - `morphologies`: the scene's morphologies, one per source.
    - `weight`: regularisation strength, a scalar or one per source (0 switches a source
      off, e.g. padding slots).
    - `sigma`: the small noise level (prior units) at which the score is taken; it smooths
      the prior; ~1-3x the pixel noise in prior units is a good start.
    - `scale`: flux units of ``morphologies`` per prior unit (see `prior_score`).
    """
    g = jax.lax.stop_gradient(prior_score(prior, morphologies, sigma, scale=scale))
    w = jnp.asarray(weight, dtype=morphologies.dtype)
    if w.ndim == 1:
        if w.shape[0] != morphologies.shape[0]:
            raise ValueError(f"weight: expected a scalar or {morphologies.shape[0]} values, got "
                             f"shape {w.shape}")
        w = w[:, None, None, None]
    elif w.ndim != 0:
        raise ValueError(f"weight: expected a scalar or one value per source, got shape {w.shape}")
    lin = -jnp.sum(w * g * morphologies)
    return lin - jax.lax.stop_gradient(lin)
