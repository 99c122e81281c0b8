"""Learned noise likelihoods (SLIC, Adam et al.; Legin et al.): the score of the noise
distribution learned from noise cutouts by denoising score matching, used as the
likelihood of MAP fits (`NoiseModelLikelihood`) and, through `AbstractNoiseModel`, of
posterior guidance.

The network is the package's diffusion U-Net (`deconvjax.diffusion.UNetDenoiser`, VE SDE)
trained by `deconvjax.diffusion.train_prior` on the cutouts divided by one global scale,
their pixel standard deviation (stored with the model), so that the noise the network sees
has unit variance whatever the data units.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._types import Cube
from ..checkpoint import read_header
from ..diffusion.prior import ScorePrior, load_prior, save_prior
from ..diffusion.train import TrainConfig, train_prior
from .base import AbstractLikelihood
from .correlated import CorrelatedGaussianLikelihood
from .noise_data import check_noise_cutouts
from .noise_model import AbstractNoiseModel

__all__ = ["LearnedNoiseModel", "NoiseModelLikelihood", "noise_train_config",
           "train_noise_model", "save_noise_model", "load_noise_model",
           "empirical_power_spectrum", "fisher_power_spectrum"]

# Marks a score-prior checkpoint as a noise model (load_noise_model refuses galaxy priors).
_KIND = "slic_noise_model"


def noise_train_config(size: int, bands: int = 1, **overrides) -> TrainConfig:
    """A `TrainConfig` suited to noise: sigma from 0.01 to 20 noise standard deviations
    (the score is needed at small sigma, where a MAP fit evaluates it), no flips or
    rotations (correlated noise need not be isotropic), a small two-level U-Net."""
    base = dict(image_size=size, bands=bands, channels=(16, 32), num_res_blocks=1, emb_dim=32,
                sigma_min=0.01, sigma_max=20.0, batch_size=32, learning_rate=2e-3,
                warmup_steps=50, ema_decay=0.99, steps=500, steps_per_call=10,
                checkpoint_every=100, augment=False)
    base.update(overrides)
    return TrainConfig(**base)


def empirical_power_spectrum(cutouts: Float[np.ndarray, "n band y x"]) -> np.ndarray:
    """The mean periodogram ``E|rfft2(n)|^2 / N`` of zero-mean noise cutouts, ``(band, y,
    x // 2 + 1)``: the power spectrum in `CorrelatedGaussianLikelihood`'s convention."""
    c = np.asarray(cutouts, dtype=np.float64)
    npix = c.shape[-1] * c.shape[-2]
    p = np.mean(np.abs(np.fft.rfft2(c)) ** 2, axis=0) / npix
    # Floor at a small fraction of the mean so the Gaussian fit stays invertible.
    return np.maximum(p, 1e-6 * p.mean())


def fisher_power_spectrum(noise_model: AbstractNoiseModel, cutouts: Float[np.ndarray, "n band y x"], *,
                          sigma: float | None = None, seed: int = 0, batch: int = 64) -> np.ndarray:
    """The power spectrum ``P_F`` of the Gaussian with the noise's Fisher information,
    ``(band, y, x // 2 + 1)`` in data units, from noise ``cutouts``: with ``m = n + sigma
    eps`` (the cutouts perturbed as the score `noise_model.score(., sigma)` assumes),
    ``P_F = 1 / (E|rfft2(s(m))|^2 / N) - sigma^2``.

    For Gaussian noise of power ``P`` the score is ``-(C + sigma^2)^{-1} m`` and ``P_F = P``
    (exactly so for ``sigma = 0``: ``P^2 / P_hat``, ``P_hat`` the cutouts' periodogram).
    For heavy-tailed noise (cosmic rays, hot pixels) the score saturates on the outliers,
    so ``P_F`` describes the noise's core while the second moments
    (`empirical_power_spectrum`) are inflated by the outliers: ``P_F`` is the covariance to
    whiten a score with (`deconvjax.posterior.slic.ScoreWhitenedMMPS`).

    ``sigma``: default the model's `min_sigma` (a learned model's floor, where its score
    is evaluated at smaller ``sigma`` anyway); ``seed`` draws ``eps``; ``batch`` cutouts
    per score evaluation."""
    c = check_noise_cutouts(cutouts)
    noise_model.check_shape(c.shape[1:], name="cutouts")
    if not int(batch) >= 1:
        raise ValueError(f"batch: expected a positive integer, got {batch}")
    sig = float(noise_model.min_sigma if sigma is None else sigma)
    if not sig >= 0:
        raise ValueError(f"sigma: expected a non-negative float or None, got {sigma}")
    m = c + sig * np.random.default_rng(seed).normal(size=c.shape).astype(np.float32)
    score = eqx.filter_jit(jax.vmap(lambda n: noise_model.score(n, sig)))
    npix = c.shape[-1] * c.shape[-2]
    total = 0.0
    for i in range(0, len(m), int(batch)):
        s = np.asarray(score(jnp.asarray(m[i:i + int(batch)])), dtype=np.float64)
        total = total + np.sum(np.abs(np.fft.rfft2(s)) ** 2, axis=0)
    info = total / (len(m) * npix)
    # A frequency the score never moves gets a large (not infinite) variance; the
    # subtraction of sigma^2 is kept positive, at the floor of empirical_power_spectrum.
    p = 1.0 / np.maximum(info, 1e-6 * info.mean()) - sig**2
    return np.maximum(p, 1e-6 * np.abs(p).mean())


class LearnedNoiseModel(AbstractNoiseModel):
    """A noise distribution learned from noise cutouts: the score of the noise convolved with
    ``N(0, sigma^2 I)`` from a denoiser by Tweedie's formula,
    ``(D(n, sigma) - n) / sigma^2``.

    At ``sigma`` below the floor ``sigma_floor * scale`` the score is evaluated at the floor
    (the network is trained down to ``sigma_min`` and Tweedie needs ``sigma > 0``): the
    score of the noise smoothed by a Gaussian of ``sigma_floor`` noise standard deviations
    (default 0.3). Why so high: Tweedie divides the network's error by ``sigma``, so a
    small floor amplifies it; with a floor of 0.05 a small U-Net's score carried a bias that
    made MAP fits run away, while at 0.3 they matched the exact Gaussian ones (tests). For
    Gaussian noise the smoothed likelihood is that of ``C + (0.3 s)^2 I``: its MAP is still
    unbiased, only its weighting of the pixels changes slightly; heavy tails (cosmic rays,
    hot pixels, tens of sigma) are kept.

    **Arguments:**

    - `prior`: the trained `ScorePrior` (U-Net denoiser, VE SDE, ``flux_scale`` = the noise
      normalisation ``scale`` in data units).
    - `power_spectrum`: the training cutouts' empirical power spectrum, ``(band, y,
      x // 2 + 1)`` in data units (`gaussian_fit`).
    - `sigma_floor`: the floor, in units of ``scale``.
    """

    prior: ScorePrior
    power_spectrum: Float[Array, "band ny nxr"]
    sigma_floor: float = eqx.field(static=True, default=0.3)

    @property
    def scale(self) -> float:
        """The noise normalisation (data units): the training cutouts' pixel std."""
        return float(self.prior.flux_scale)

    @property
    def shape(self):
        return tuple(self.prior.shape)

    @property
    def min_sigma(self) -> float:
        """The score's floor in data units, ``sigma_floor * scale``."""
        return float(self.sigma_floor) * self.scale

    def score(self, noise, sigma=0.0):
        s = self.scale
        x = noise / s
        sig = jnp.maximum(jnp.asarray(sigma, dtype=x.dtype) / s, self.sigma_floor)
        return self.prior.denoiser.score(x, sig) / s

    def gaussian_fit(self):
        return CorrelatedGaussianLikelihood(self.power_spectrum)


def _extra(model_shape, scale, power_spectrum, sigma_floor) -> dict:
    return {"kind": _KIND, "shape": list(model_shape), "bands": int(model_shape[0]),
            "scale": float(scale), "sigma_floor": float(sigma_floor),
            "power_spectrum": np.asarray(power_spectrum, dtype=np.float64).tolist()}


def save_noise_model(path: str | os.PathLike, model: LearnedNoiseModel) -> None:
    """Atomically write ``model`` to one checkpoint file whose JSON header holds the image
    shape, band count, normalisation scale, floor and power spectrum."""
    if not isinstance(model, LearnedNoiseModel):
        raise TypeError(f"model: expected a LearnedNoiseModel, got {type(model).__name__}")
    save_prior(path, model.prior, extra=_extra(model.shape, model.scale,
                                               model.power_spectrum, model.sigma_floor))


def load_noise_model(path: str | os.PathLike) -> LearnedNoiseModel:
    """Load a `LearnedNoiseModel` written by `save_noise_model` or `train_noise_model`.

    **Raises:** `ValueError` for a file that is not a noise model (a galaxy prior, another
    checkpoint, or not a checkpoint at all).
    """
    path = Path(path)
    try:
        header = read_header(path)
    except (FileNotFoundError, ValueError) as err:
        raise ValueError(f"path: {path} is not a deconvjax noise model ({err})") from None
    extra = header.get("hyper", {}).get("extra", {})
    if header.get("kind") != "score_prior" or extra.get("kind") != _KIND:
        raise ValueError(f"path: {path} is not a deconvjax noise model (a {header.get('kind')} "
                         "checkpoint without the noise-model header); train one with "
                         "`deconvjax train-noise`")
    prior = load_prior(path)
    # The JSON extras are kept out of the prior's info (the power spectrum is long).
    prior = ScorePrior(prior.denoiser, prior.sde, prior.flux_scale, ())
    return LearnedNoiseModel(prior, jnp.asarray(np.asarray(extra["power_spectrum"])),
                             float(extra["sigma_floor"]))


def train_noise_model(
    cutouts: Float[np.ndarray, "n band size size"],
    out: str | os.PathLike,
    *,
    config: TrainConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    resume: bool = True,
    sigma_floor: float = 0.3,
    max_seconds: float | None = None,
) -> LearnedNoiseModel:
    """Train a `LearnedNoiseModel` on zero-mean noise ``cutouts`` (data units) and write it
    to ``out`` (``out.state`` and ``out.log.jsonl`` beside it, as for `train_prior`, which
    does the training: EMA, checkpoints, exact resume, tqdm progress).

    ``config`` defaults to `noise_train_config` for the cutouts' size and band count;
    ``seed`` replaces its seed. The scale (the cutouts' pixel std) and the empirical
    power spectrum are stored in ``out``'s header.
    """
    c = check_noise_cutouts(cutouts)
    n, bands, size, _ = c.shape
    if config is None:
        config = noise_train_config(size, bands)
    config = dataclasses.replace(config, seed=int(seed))
    if (config.image_size, config.bands) != (size, bands):
        raise ValueError(f"config: image_size={config.image_size}, bands={config.bands} do not match "
                         f"the cutouts' ({size}, {bands})")
    if not 0 < sigma_floor:
        raise ValueError(f"sigma_floor: expected a positive float, got {sigma_floor}")
    scale = float(np.std(c))
    if not scale > 0:
        raise ValueError("cutouts: zero variance (all-constant cutouts)")
    power = empirical_power_spectrum(c)
    extra = _extra((bands, size, size), scale, power, sigma_floor)
    prior = train_prior(c, out, config, resume=resume, flux_scale=scale, progress=progress,
                        extra_info=extra, max_seconds=max_seconds, record_time=False,
                        desc="train-noise")
    prior = ScorePrior(prior.denoiser, prior.sde, prior.flux_scale, ())
    return LearnedNoiseModel(prior, jnp.asarray(power), float(sigma_floor))


@eqx.filter_custom_vjp
def _score_chi2(residual, reported, noise_model, weights):
    # The value is the Gaussian fit's chi2; only the gradient is the learned one.
    return reported


@_score_chi2.def_fwd
def _score_chi2_fwd(perturbed, residual, reported, noise_model, weights):
    valid = weights > 0
    g = jnp.where(valid, noise_model.score(jnp.where(valid, residual, 0.0)), 0.0)
    return reported, g


@_score_chi2.def_bwd
def _score_chi2_bwd(g, ct, perturbed, residual, reported, noise_model, weights):
    # chi2 = -2 log p(residual) + const, so d chi2 / d residual = -2 score(residual).
    return -2.0 * ct * g


class NoiseModelLikelihood(AbstractLikelihood):
    """The likelihood of a noise model (e.g. a `LearnedNoiseModel`), for MAP fits.

    A learned score gives ``grad_n log p(n)`` but not ``log p(n)``, while the likelihood
    family's interface is whiten / log-normaliser / chi2. So ``chi2`` reports the value of
    the noise model's Gaussian fit (its power spectrum; a goodness-of-fit figure) and
    carries the *learned* gradient through `jax.custom_vjp`: its derivative with respect
    to the residual ``r = data - model`` is ``-2 score(r)``, so a fit minimising
    ``chi2 / 2`` follows ``grad log p(data | model) = -score(r) dr/dmodel``, pulled back
    through the forward operator by autodiff (exact at zero perturbation up to the noise
    model's floor). This was chosen over a separate ``score`` method so that every fitter
    of the package (which all minimise ``chi2 / 2``) uses it unchanged.

    `whiten` (used to profile a fitted sky background, and to report residuals) and
    `log_normaliser` are the Gaussian fit's. Masked pixels (``weights`` 0) contribute
    nothing: their residual is zeroed before the score and their gradient is zero.

    **Arguments:**

    - `noise_model`: an `AbstractNoiseModel` for images of the observation's ``(band, y,
      x)``; `check_shape` or `deconvjax.observation.Observation` data of another shape is
      a clear error.
    """

    noise_model: AbstractNoiseModel
    gaussian: CorrelatedGaussianLikelihood

    def __init__(self, noise_model: AbstractNoiseModel):
        if not isinstance(noise_model, AbstractNoiseModel):
            raise TypeError(f"noise_model: expected an AbstractNoiseModel, got {type(noise_model).__name__}")
        self.noise_model = noise_model
        self.gaussian = noise_model.gaussian_fit()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.noise_model.shape)

    def check_shape(self, shape, name: str = "data") -> None:
        """A clear `ValueError` when observations of ``shape`` are not the noise model's."""
        self.noise_model.check_shape(tuple(shape), name)

    def whiten(self, residual, weights):
        return self.gaussian.whiten(residual, weights)

    def log_normaliser(self, weights):
        return self.gaussian.log_normaliser(weights)

    def chi2(self, data: Cube, model: Cube, weights: Cube) -> Float[Array, ""]:
        self.check_shape(data.shape)
        residual = data - model
        reported = jax.lax.stop_gradient(self.gaussian.chi2(data, model, weights))
        return _score_chi2(residual, reported, self.noise_model, weights)
