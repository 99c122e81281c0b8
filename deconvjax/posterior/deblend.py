"""Deblending with one diffusion prior per source.

The prior variable is the stack of source morphologies ``X`` of shape
``(n_source, prior_band, h, w)``; the joint prior is the product of one prior per source,
so the joint denoiser is the prior denoiser vmapped over sources (`ProductDenoiser`: one
batched network call). `SourcePlacement` is the linear embedding into the model cube:
each source's stamp is multiplied by its spectrum (when the prior is single-band and the
frame multi-band: spectrum x morphology) and scatter-added at its position (one
scatter-add for all sources). The scene likelihood is that of all observations.

How spectra are handled: they are **optimised, not sampled**. Starting from the
back-projected data at the source centres, `deblend` alternates ``n_spectrum_iters``
times (i) a short posterior run (``n_init_samples`` samples) for the morphologies given
the spectra and (ii) the exact weighted least-squares spectra given the posterior-mean
morphologies (the model is linear in the spectra), then draws the final samples with the
spectra fixed. Each spectrum is normalised to mean 1 over bands, so the morphology
carries the flux and its prior applies to it. The spectra's own uncertainty is not
propagated into the samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..diffusion.denoiser import AbstractDenoiser
from ..diffusion.prior import ScorePrior
from ..diffusion.samplers import DEFAULT_SAMPLER, AbstractSampler
from ..diffusion.sde import AbstractSDE
from ..observation import Observation
from .base import AbstractEmbedding, AbstractGuidance, PosteriorDenoiser, exact_jacobian, prior_shape
from .sampling import sample_posterior

__all__ = ["ProductDenoiser", "SourcePlacement", "DeblendResult", "deblend"]


class ProductDenoiser(AbstractDenoiser):
    """The denoiser of a product of identical independent priors, one per source:
    ``D(X, sigma)[i] = prior(X[i], sigma)`` (a vmap, so one batched network call)."""

    prior: AbstractDenoiser
    n_sources: int = eqx.field(static=True)
    item_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, prior, n_sources: int, item_shape: Sequence[int] | None = None):
        shape = prior_shape(prior) if item_shape is None else tuple(item_shape)
        if shape is None:
            raise ValueError("item_shape: the prior does not say its image shape; give it")
        if int(n_sources) < 1:
            raise ValueError(f"n_sources: expected a positive integer, got {n_sources}")
        self.prior, self.n_sources, self.item_shape = prior, int(n_sources), tuple(shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_sources, *self.item_shape)

    @property
    def exact_jacobian(self) -> bool:
        """The per-source prior's (block-diagonal Jacobian)."""
        return exact_jacobian(self.prior)

    def __call__(self, x, sigma):
        return jax.vmap(self.prior, in_axes=(0, None))(x, sigma)


class SourcePlacement(AbstractEmbedding):
    """``(n_source, prior_band, h, w)`` stamps -> model cube ``(band, ny, nx)``:
    ``scale * spectrum_i[b] * stamp_i`` added with its corner at ``corners[i]`` (pixels
    falling outside the frame are dropped). With a prior of the frame's band count the
    spectra are ignored (set to 1)."""

    spectra: Float[Array, "n band"]
    corners: Int[Array, "n 2"]
    frame_shape: tuple[int, int] = eqx.field(static=True)
    scale: float = eqx.field(static=True, default=1.0)

    def __call__(self, x):
        n, pb, h, w = x.shape
        nb = self.spectra.shape[1]
        vals = self.spectra[:, :, None, None] * x if pb == 1 else x
        ny, nx = self.frame_shape
        yy = self.corners[:, 0, None, None] + jnp.arange(h)[None, :, None]
        xx = self.corners[:, 1, None, None] + jnp.arange(w)[None, None, :]
        yy, xx = jnp.broadcast_arrays(yy, xx)
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        # Negative indices would wrap: send every outside pixel past the end (dropped).
        yy, xx = jnp.where(inside, yy, ny), jnp.where(inside, xx, nx)
        out = jnp.zeros((nb, ny, nx), x.dtype)
        return out.at[:, yy, xx].add(self.scale * jnp.moveaxis(vals, 1, 0), mode="drop")

    def gain(self, n_bands):
        return self.scale**2 * jnp.mean(self.spectra**2, axis=0)


class DeblendResult(eqx.Module):
    """Posterior samples of a blended scene.

    - `morphologies`: ``(n, n_source, prior_band, h, w)`` samples of the prior variable;
    - `sources`: ``(n, n_source, band, h, w)`` per-source models in flux units
      (``scale * spectrum x morphology``);
    - `spectra`: ``(n_source, band)`` the optimised spectra (mean 1 over bands);
    - `corners`: ``(n_source, 2)`` stamp corners in the model frame;
    - `mean`, `std`: the scene model cube's pixelwise posterior mean and std;
    - `residuals`: per observation, ``data - A mean``; `chi2_per_pixel`: per sample.
    """

    morphologies: Array
    sources: Array
    spectra: Array
    corners: Array
    mean: Array
    std: Array
    residuals: tuple[Array, ...]
    chi2_per_pixel: Array

    def _repr_png_(self) -> bytes | None:
        """Jupyter's picture: the scene's posterior mean, std and residual, and every
        source's flux posterior (`deconvjax.plot.plot_posterior`,
        `deconvjax.plot.plot_flux_posteriors`); None (text only) for a stack of results."""
        from ..plot import figure_png, plot_deblend

        if np.ndim(self.sources) != 5:
            return None
        return figure_png(plot_deblend(self))


def _posterior(prior, observations, spectra, corners, n_src, scale, method):
    first = observations[0]
    emb = SourcePlacement(jnp.asarray(spectra, jnp.float32), jnp.asarray(corners),
                          first.frame_shape, scale)
    return PosteriorDenoiser(ProductDenoiser(prior, n_src), observations, method=method, embed=emb)


def fit_spectra(post: PosteriorDenoiser, morph: Array) -> Array:
    """Weighted least-squares spectra for fixed morphologies (the model is linear in
    them), normalised to mean 1 over bands."""

    def resid(s):
        p = eqx.tree_at(lambda q: q.embed.spectra, post, s)
        return jnp.concatenate([r.ravel() for r in p.residual_white(morph)])

    s0 = jnp.zeros_like(post.embed.spectra)
    jac = jax.jacfwd(resid)(s0).reshape(-1, s0.size)
    sol, *_ = jnp.linalg.lstsq(jac, -resid(s0))
    s = jnp.clip(sol.reshape(s0.shape), 1e-6, None)
    return s / s.mean(axis=1, keepdims=True)


def deblend(
    key: PRNGKeyArray,
    prior,
    observations: Observation | Sequence[Observation],
    centers: Float[Array, "n 2"] | np.ndarray,
    *,
    n_samples: int = 64,
    spectra: np.ndarray | None = None,
    sde: AbstractSDE | None = None,
    method: AbstractGuidance | None = None,
    sampler: AbstractSampler = DEFAULT_SAMPLER,
    n_spectrum_iters: int = 1,
    n_init_samples: int | None = None,
    **sample_kwargs,
) -> DeblendResult:
    """Posterior samples of every source's morphology in a blend.

    **Arguments:**

    - `key`: PRNG key.
    - `prior`: the per-source prior (`ScorePrior`, or a denoiser with ``sde``), over
      ``(prior_band, h, w)`` stamps; ``prior_band`` is 1 (spectrum x morphology) or
      the frame's band count.
    - `observations`: `Observation`s of the scene (any number, any bands of the frame).
    - `centers`: ``(n_source, 2)`` source centres ``(y, x)`` in model pixels; each stamp
      is centred on the rounded centre.
    - `spectra`: ``(n_source, band)`` fixed spectra; default: optimised (module doc).
    - `sampler`: any sampler of `deconvjax.diffusion.samplers` (default `DPMSolver2M()`);
      other keyword arguments go to its ``sample``.
    - `n_spectrum_iters`, `n_init_samples`: the spectrum optimisation (module doc);
      ``n_init_samples`` defaults to ``n_samples``.
    """
    if isinstance(observations, Observation):
        observations = (observations,)
    observations = tuple(observations)
    scale = 1.0
    if isinstance(prior, ScorePrior):
        scale, sde = float(prior.flux_scale), prior.sde if sde is None else sde
        prior = prior.denoiser
    if sde is None:
        raise ValueError("sde: give the SDE when the prior is a bare denoiser")
    item = prior_shape(prior)
    if item is None or len(item) != 3:
        raise ValueError(f"prior: expected a prior over (band, h, w) stamps, got shape {item}")
    centers = np.asarray(centers, np.float64)
    if centers.ndim != 2 or centers.shape[1] != 2 or len(centers) < 1:
        raise ValueError(f"centers: expected an (n_source, 2) array of (y, x), got {centers.shape}")
    n_src = len(centers)
    nb = max(max(o.band_index) for o in observations) + 1
    pb, h, w = item
    if pb not in (1, nb):
        raise ValueError(f"prior has {pb} bands; expected 1 (spectrum x morphology) or the "
                         f"observations' {nb}")
    corners = np.round(centers).astype(np.int32) - np.array([h // 2, w // 2], np.int32)
    fixed = spectra is not None or pb != 1 or nb == 1
    if spectra is None:
        spectra = np.ones((n_src, nb))
        if not fixed:
            # Back-projected data at the centres: a first guess of the colours.
            num = sum(o.adjoint(o.weights * o.data, nb) for o in observations)
            den = sum(o.adjoint(o.weights, nb) for o in observations)
            bp = np.asarray(num / jnp.where(den > 0, den, 1.0))
            iy, ix = np.round(centers).astype(int).T
            iy, ix = np.clip(iy, 0, bp.shape[1] - 1), np.clip(ix, 0, bp.shape[2] - 1)
            spectra = np.clip(bp[:, iy, ix].T, 1e-3 * np.abs(bp).max() + 1e-12, None)
            spectra = spectra / spectra.mean(axis=1, keepdims=True)
    spectra = np.asarray(spectra, np.float64)
    if spectra.shape != (n_src, nb):
        raise ValueError(f"spectra: expected shape {(n_src, nb)}, got {spectra.shape}")
    post = _posterior(prior, observations, spectra, corners, n_src, scale, method)
    # Same batch shape as the final draw by default: one compilation serves both.
    n_init = int(n_samples if n_init_samples is None else n_init_samples)
    if not fixed:
        for i in range(int(n_spectrum_iters)):
            x, _ = sample_posterior(jax.random.fold_in(key, 1000 + i), post, sde,
                                    n_init, sampler, **sample_kwargs)
            s = fit_spectra(post, x.mean(0))
            post = eqx.tree_at(lambda q: q.embed.spectra, post, s.astype(jnp.float32))
    x, _ = sample_posterior(key, post, sde, n_samples, sampler, **sample_kwargs)
    return _summarise(post, x)


@eqx.filter_jit
def _summarise(post, x):
    emb = post.embed
    models = jax.vmap(post.model)(x)
    mean = models.mean(0)
    std = models.std(0, ddof=1) if models.shape[0] > 1 else jnp.zeros_like(mean)
    if x.shape[2] == 1:
        sources = emb.scale * emb.spectra[None, :, :, None, None] * x
    else:
        sources = emb.scale * x
    residuals = tuple(o.data - o(mean) for o in post.observations)
    chi2 = jax.vmap(post.chi2)(x) / post.n_valid
    return DeblendResult(x, sources, emb.spectra, emb.corners, mean, std, residuals, chi2)
