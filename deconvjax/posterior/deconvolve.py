"""Deconvolution of one galaxy from one or several observations jointly: posterior
samples, their mean and standard deviation, and data-space residuals."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..diffusion.prior import ScorePrior
from ..diffusion.samplers import DEFAULT_SAMPLER, AbstractSampler
from ..diffusion.sde import AbstractSDE
from ..frame import Frame
from ..observation import Observation
from ..psf import AbstractPSF, GaussianPSF
from .base import AbstractEmbedding, AbstractGuidance, PosteriorDenoiser
from .sampling import sample_posterior

__all__ = ["PosteriorResult", "deconvolve", "deconvolve_images", "make_observations"]


class PosteriorResult(eqx.Module):
    """Posterior samples of the model cube, in the observations' flux units.

    - `samples`: ``(n, band, ny, nx)``;
    - `mean`, `std`: pixelwise posterior mean and standard deviation;
    - `residuals`: per observation, ``data - A mean`` (``(band, y, x)``);
    - `chi2_per_pixel`: per sample, the total chi2 over all observations divided by the
      number of valid pixels (about 1 for calibrated samples on data the prior describes);
    - `nfe`: denoiser evaluations per trajectory.
    """

    samples: Float[Array, "n band ny nx"]
    mean: Float[Array, "band ny nx"]
    std: Float[Array, "band ny nx"]
    residuals: tuple[Float[Array, "band y x"], ...]
    chi2_per_pixel: Float[Array, " n"]
    nfe: Int[Array, ""]

    def _repr_png_(self) -> bytes | None:
        """Jupyter's picture: samples, mean, std and residual
        (`deconvjax.plot.plot_posterior`); None (text only) for a stack of results."""
        from ..plot import figure_png, plot_posterior

        if np.ndim(self.samples) != 4:
            return None
        return figure_png(plot_posterior(self))


def deconvolve(
    key: PRNGKeyArray,
    prior,
    observations: Observation | Sequence[Observation],
    *,
    n_samples: int = 64,
    sde: AbstractSDE | None = None,
    method: AbstractGuidance | None = None,
    sampler: AbstractSampler = DEFAULT_SAMPLER,
    batch_size: int | None = None,
    progress: bool = False,
    embed: AbstractEmbedding | None = None,
    **sample_kwargs,
) -> PosteriorResult:
    """Posterior samples of the model cube given any set of observations of one galaxy.

    **Arguments:**

    - `key`: PRNG key.
    - `prior`: a `ScorePrior` (its SDE and flux scale are used), or any unbatched VE
      denoiser together with ``sde``. Its image shape must be the model frame's
      ``(band, ny, nx)``.
    - `observations`: `Observation`s on one model `Frame`: several dithered exposures,
      epochs, or a ground and a space view are combined in the likelihood.
    - `n_samples`: number of posterior samples.
    - `sde`: the diffusion SDE (default: the prior's).
    - `method`: guidance (default `MMPS()`, whose CG solve is chosen from the prior:
      converged for exact Gaussian denoisers, one iteration for learned ones).
    - `sampler`: `DPMSolver2M()` (default: DPM-Solver++(2M), 48 steps, one denoiser call
      per step from a host loop, the fast choice for U-Net priors), `AdaptiveODE()`
      (adaptive, the exact choice for analytic priors) or any sampler of
      `deconvjax.diffusion.samplers`; other keyword arguments go to its ``sample``.
    - `embed`: the map from the prior variable to the model cube (default: the prior's
      ``flux_scale``; `deconvolve_images` passes a `PaddedScale` that also carries
      the data's flux units and places the prior's stamp in a larger frame).
    """
    if sde is None:
        if not isinstance(prior, ScorePrior):
            raise ValueError("sde: give the SDE when the prior is a bare denoiser")
        sde = prior.sde
    post = PosteriorDenoiser(prior, observations, method=method, embed=embed)
    x, nfe = sample_posterior(key, post, sde, n_samples, sampler, batch_size=batch_size,
                              progress=progress, **sample_kwargs)
    return summarise(post, x, nfe)


def deconvolve_images(
    key: PRNGKeyArray,
    prior: ScorePrior,
    images: Sequence[np.ndarray],
    psfs: Sequence[np.ndarray],
    variances: Sequence[np.ndarray | float],
    *,
    pixel_scales: Sequence[float | None] | None = None,
    wcss: Sequence | None = None,
    grid_scale: float | None = None,
    flux_factor: float | None = None,
    n_samples: int = 64,
    method: AbstractGuidance | None = None,
    sampler: AbstractSampler = DEFAULT_SAMPLER,
    batch_size: int | None = None,
    progress: bool = False,
    **sample_kwargs,
):
    """`deconvolve` for real images as they come: any size, pixel scale, flux unit and
    PSF image size (see `deconvjax.posterior.adapt.prior_observations`, which places the
    prior's stamp on the data at a pixel scale chosen from the galaxy's measured size and
    scales the prior to the galaxy's measured flux).

    Returns ``(result, setup)``: a `PosteriorResult` whose samples, mean and std are the
    prior's stamp (``size x size`` pixels of ``setup.grid_scale`` arcsec, centred on the
    galaxy; the frame's WCS is ``setup.frame.wcs`` shifted by ``setup.embed.pad``) in the
    data's flux units, residuals on each image's pixels; and the `PriorSetup` (choices,
    notes, warnings)."""
    from .adapt import prior_observations

    setup = prior_observations(prior, images, psfs, variances, pixel_scales=pixel_scales,
                               wcss=wcss, grid_scale=grid_scale, flux_factor=flux_factor)
    post = PosteriorDenoiser(prior, setup.observations, method=method, embed=setup.embed)
    x, nfe = sample_posterior(key, post, prior.sde, n_samples, sampler,
                              batch_size=batch_size, progress=progress, **sample_kwargs)
    return crop_result(summarise(post, x, nfe), setup.embed), setup


def crop_result(result: PosteriorResult, embed) -> PosteriorResult:
    """The prior's stamp out of a result on a padded model frame (`PaddedScale`)."""
    crop = getattr(embed, "crop", None)
    if crop is None:
        return result
    return PosteriorResult(crop(result.samples), crop(result.mean), crop(result.std),
                           result.residuals, result.chi2_per_pixel, result.nfe)


def summarise(post: PosteriorDenoiser, x: Array, nfe) -> PosteriorResult:
    """Samples of the prior variable -> a `PosteriorResult` in model-cube units."""
    return _summarise(post, x, jnp.asarray(nfe))


@eqx.filter_jit
def _summarise(post, x, nfe):
    models = jax.vmap(post.model)(x)
    mean = models.mean(0)
    std = models.std(0, ddof=1) if models.shape[0] > 1 else jnp.zeros_like(mean)
    residuals = tuple(o.data - o(mean) for o in post.observations)
    chi2 = jax.vmap(post.chi2)(x) / post.n_valid
    return PosteriorResult(models, mean, std, residuals, chi2, nfe)


def make_observations(
    images: Sequence[np.ndarray],
    psfs: Sequence[np.ndarray | AbstractPSF],
    *,
    variances: Sequence[np.ndarray | float] | None = None,
    shape: tuple[int, int] | None = None,
    model_psf: AbstractPSF | None = None,
    bands: Sequence[str] | None = None,
) -> tuple[Frame, tuple[Observation, ...]]:
    """A model frame and `Observation`s from plain arrays on a common pixel grid.

    ``images``: ``(y, x)`` or ``(band, y, x)`` arrays; ``psfs``: one PSF image (or
    `AbstractPSF`) each, no larger than the frame; ``variances``: the noise of each image
    (array or scalar, required: observations without noise information are refused).
    ``shape``: model frame ``(ny, nx)`` (default: the first image's). ``model_psf``: the
    frame's PSF (default a Gaussian of sigma 0.5 pixel: the prior's images are taken to
    be at (close to) the model resolution).
    """
    images = [np.asarray(im, np.float64) for im in images]
    if not images:
        raise ValueError("images: expected at least one image")
    if len(psfs) != len(images):
        raise ValueError(f"psfs: expected one PSF per image ({len(images)}), got {len(psfs)}")
    if variances is None or any(v is None for v in variances):
        raise ValueError("variances: every observation needs its noise (a variance map or "
                         "scalar per image); none was given")
    if len(variances) != len(images):
        raise ValueError(f"variances: expected one per image ({len(images)}), got {len(variances)}")
    first = images[0] if images[0].ndim == 3 else images[0][None]
    shape = tuple(first.shape[-2:]) if shape is None else tuple(shape)
    nb = first.shape[0]
    bands = tuple(bands) if bands is not None else tuple(f"b{i}" for i in range(nb))
    frame = Frame(bands, shape, psf=GaussianPSF(0.5) if model_psf is None else model_psf)
    obs = []
    for i, (im, psf, var) in enumerate(zip(images, psfs, variances)):
        if not isinstance(psf, AbstractPSF):
            p = np.asarray(psf, np.float64)
            if p.shape[-1] > shape[1] or p.shape[-2] > shape[0]:
                raise ValueError(
                    f"psfs[{i}]: a PSF image of shape {p.shape[-2:]} is larger than the "
                    f"prior's / model frame's {shape}; crop the PSF or use a larger prior"
                )
        if np.asarray(im).shape[-2:] != shape:
            raise ValueError(f"images[{i}]: shape {np.asarray(im).shape[-2:]} differs from the "
                             f"model frame {shape} (the prior's image size)")
        obs.append(Observation(im, frame=frame, psf=psf, variance=var))
    return frame, tuple(obs)
