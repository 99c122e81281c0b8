"""EM's starting prior from the cutouts themselves: a Gaussian ``N(mean, cov)`` over the
prior variable, fitted by closed-form Gaussian EM with the exact posterior
(`deconvjax.em.gaussian`, Rozet et al.'s lap 0), wrapped as a `ScorePrior` so that the
E-step samples its posteriors like a network's (its exact denoiser makes MMPS exact), and
saved and loaded as one checkpoint.

The Gaussian is fitted on the isolated cutouts (one source) of the batch: a blend's
sources share pixels, which the one-image Gaussian model does not describe. Its forward
model is each cutout's PSF itself, where the E-step's goes through a narrow model PSF
(sigma 0.5 pixel, `deconvjax.em.estep`): the start describes images a quarter pixel
sharper than the variable the network laps learn; the first M-step absorbs it.
"""

from __future__ import annotations

import os

import numpy as np

from ..checkpoint import load_checkpoint, save_checkpoint
from ..diffusion.denoiser import GaussianDenoiser
from ..diffusion.prior import ScorePrior
from ..diffusion.sde import VESDE
from ..diffusion.train import flux_scale_of
from .cutouts import Cutouts
from .gaussian import GaussianCutouts, data_moments, gaussian_em

__all__ = ["fit_gaussian_prior", "save_gaussian_prior", "load_gaussian_prior", "is_gaussian_prior"]

KIND = "gaussian_prior"


def _sde(sigma_min: float = 1e-3, sigma_max: float = 100.0) -> VESDE:
    return VESDE(sigma_min, sigma_max)


def is_gaussian_prior(prior) -> bool:
    """Whether ``prior`` is a `ScorePrior` around a Gaussian denoiser (EM's start)."""
    return isinstance(prior, ScorePrior) and isinstance(prior.denoiser, GaussianDenoiser)


def fit_gaussian_prior(cutouts: Cutouts, *, laps: int = 16, rank: int | None = None, progress: bool = True,
                       sigma_max: float = 100.0, init=data_moments) -> ScorePrior:
    """The Gaussian prior of the isolated cutouts of ``cutouts`` (full covariance, or
    low-rank plus diagonal of ``rank``), in units of their flux scale (the 90th percentile
    of their peak pixels, as `train_prior` sets it), as a `ScorePrior`.

    ``init`` maps the `GaussianCutouts` to the starting ``(mean, cov)``: `data_moments`
    (default: the data's covariance less the noise) or
    `deconvjax.em.gaussian.initial_moments` (a scaled identity)."""
    if not callable(init):
        raise TypeError(f"init: expected a function of the GaussianCutouts giving (mean, cov), got {init!r}")
    if not isinstance(cutouts, Cutouts):
        raise TypeError(f"cutouts: expected a deconvjax.em.Cutouts, got {type(cutouts).__name__}")
    isolated = np.flatnonzero(cutouts.source_mask.sum(axis=1) == 1)
    if len(isolated) < 2:
        raise ValueError(
            "cutouts: a Gaussian start needs isolated cutouts (one source each) and there are "
            f"{len(isolated)}; start from a network instead (start='shipped' or a checkpoint)"
        )
    sub = cutouts.select(isolated)
    peaks = np.where(sub.mask, -np.inf, sub.data).reshape(len(sub), -1).max(axis=1)
    flux_scale = flux_scale_of(peaks[:, None, None, None])
    data = GaussianCutouts.from_cutouts(sub, flux_scale)
    kind = "full" if not rank else "lowrank"
    mean0, cov0 = init(data)
    result = gaussian_em(data, laps=int(laps), covariance=kind, rank=rank, progress=progress,
                         init_mean=mean0, init_cov=cov0)
    info = (("em_start", "gaussian"), ("gaussian_laps", str(int(laps))),
            ("gaussian_init", getattr(init, "__name__", type(init).__name__)),
            ("gaussian_log_likelihood", f"{float(result.log_likelihood[-1]):.6g}"))
    return ScorePrior(result.denoiser(), _sde(sigma_max=sigma_max), float(flux_scale), info)


def save_gaussian_prior(path: str | os.PathLike, prior: ScorePrior) -> None:
    """Write a Gaussian `ScorePrior` atomically (one checkpoint: mean, eigenvalues and
    eigenvectors, flux scale, SDE)."""
    if not is_gaussian_prior(prior):
        raise TypeError("prior: expected a ScorePrior around a GaussianDenoiser")
    den = prior.denoiser
    hyper = {"shape": list(den.mean.shape), "flux_scale": float(prior.flux_scale),
             "sigma_min": float(prior.sde.sigma_min_), "sigma_max": float(prior.sde.sigma_max_),
             "info": [list(kv) for kv in prior.info]}
    save_checkpoint(path, KIND, hyper, (den.mean, den.eigvals, den.eigvecs))


def load_gaussian_prior(path: str | os.PathLike) -> ScorePrior:
    """Read a prior written by `save_gaussian_prior`."""
    import jax
    import jax.numpy as jnp

    def skeleton(h):
        shape = tuple(h["hyper"]["shape"]) if "hyper" in h else tuple(h["shape"])
        n = int(np.prod(shape))
        f = jnp.zeros((), jnp.float32).dtype
        return (jax.ShapeDtypeStruct(shape, f), jax.ShapeDtypeStruct((n,), f), jax.ShapeDtypeStruct((n, n), f))

    (mean, eigvals, eigvecs), header = load_checkpoint(path, skeleton, kind=KIND)
    h = header["hyper"]
    den = _gaussian_from_eig(mean, eigvals, eigvecs)
    info = tuple(tuple(kv) for kv in h.get("info", []))
    return ScorePrior(den, _sde(h["sigma_min"], h["sigma_max"]), float(h["flux_scale"]), info)


def _gaussian_from_eig(mean, eigvals, eigvecs) -> GaussianDenoiser:
    """A `GaussianDenoiser` from its stored eigendecomposition (the covariance rebuilt and
    decomposed again would differ in the last bits; the loaded prior must be the saved one)."""
    import equinox as eqx
    import jax.numpy as jnp

    n = int(np.prod(np.shape(mean)))
    den = GaussianDenoiser(jnp.zeros(np.shape(mean)), jnp.eye(n))
    return eqx.tree_at(lambda d: (d.mean, d.eigvals, d.eigvecs), den,
                       (jnp.asarray(mean), jnp.asarray(eigvals), jnp.asarray(eigvecs)))
