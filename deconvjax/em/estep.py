"""The E-step of EM: posterior samples for every cutout of a batch, each under its own
forward model, drawn for many cutouts at once in one compiled program.

For every cutout a posterior denoiser is built on the host, exactly as
`deconvjax.posterior.deconvolve` (isolated galaxies) or `deconvjax.posterior.deblend`
(blends) would build it, with the cutout's own PSF, weights and mask. Their PyTrees have
the same structure, so they are stacked along a new leading *cutout* axis -- all but the
prior network, which is partitioned out and shared (never copied per cutout). A
`BatchedPosterior` vmaps the posterior over that axis (the prior's leaves broadcast), so a
single sampler solve over ``(n_cutouts, *x_shape)`` variables draws the samples of a whole
chunk of cutouts with one batched prior call per step.

Chunks: the cutouts are processed ``chunk`` at a time; the last chunk is padded (with
copies of its last cutout, results dropped) so that every chunk has the same shapes and
the samplers' compiled steps (cached on the denoiser's structure) are reused: nothing
compiles after the first chunk (``timings["compiles"]`` counts XLA compilations per chunk).

Keys: chunk ``c`` uses ``chunk_key = fold_in(key, c)``; cutout ``j`` of the chunk starts
from ``fold_in(chunk_key, j)`` exactly as `deconvolve` would with that key (its starting
points are drawn the same way), so a resumed run reproduces the same samples and, with a
deterministic sampler (`DPMSolver2M`, `EDMHeun` without churn, the ODE samplers), each
cutout's samples equal those of `deconvolve` on that cutout alone with key
`cutout_key(key, i, chunk)`, to float rounding. (Stochastic samplers draw their noise
for the chunk jointly: same distribution, other numbers.)

Forward model: each cutout is its own model frame (its pixel grid, pixel scale 1, a
Gaussian model PSF of sigma ``model_psf_sigma`` pixels, as `make_observations`), and the
cutout an `Observation` with its PSF image and weights (0 where masked). PSF images of
different widths can make different FFT sizes; all cutouts' PSF-matching kernels are
re-embedded at the largest one (the same kernel, more zero padding) so that they stack.

Embedding of the prior:

- isolated galaxies with a prior of the cutout's band count: the prior's image *is* the
  cutout's model (``ScaledIdentity(flux_scale)``), so the prior's image size must equal
  the cutout's (a `ValueError` otherwise);
- blends, or multi-band cutouts with a one-band prior: one prior stamp per source slot
  (``n_max`` of them), placed at the rounded centres by `SourcePlacement` as `deblend`
  does; padding slots are placed outside the frame and contribute nothing (their
  samples are reported as zeros). A one-band prior is multiplied by a per-source
  spectrum (mean 1 over bands): started from the back-projected data at the centre and
  refined ``n_spectrum_iters`` times by weighted least squares on the posterior-mean
  morphologies (as `deblend`; the spectra are optimised, not sampled).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ..diffusion.denoiser import AbstractDenoiser
from ..diffusion.prior import ScorePrior
from ..diffusion.samplers import DEFAULT_SAMPLER, AbstractSampler, sample
from ..diffusion.sde import AbstractSDE
from ..frame import Frame
from ..observation import Observation
from ..posterior.base import AbstractGuidance, PosteriorDenoiser, ScaledIdentity, prior_shape
from ..posterior.deblend import ProductDenoiser, SourcePlacement, fit_spectra
from ..psf import GaussianPSF
from .cutouts import Cutouts

__all__ = ["BatchedPosterior", "EStepResult", "estep", "cutout_key", "cutout_observation",
           "estep_speedup"]

# -- compile counter (jax.monitoring: XLA backend compilations, process-wide) ----------------

_COMPILES = [0]
_LISTENING = [False]


def _listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


def _count_compiles() -> int:
    if not _LISTENING[0]:
        jax.monitoring.register_event_duration_secs_listener(_listener)
        _LISTENING[0] = True
    return _COMPILES[0]


# -- the batched posterior -----------------------------------------------------------------


def _drop_prior(post: PosteriorDenoiser) -> PosteriorDenoiser:
    return eqx.tree_at(lambda p: p.prior, post, None)


def _with_prior(post: PosteriorDenoiser, prior) -> PosteriorDenoiser:
    return eqx.tree_at(lambda p: p.prior, post, prior, is_leaf=lambda v: v is None)


class BatchedPosterior(AbstractDenoiser):
    """``D(X, sigma)`` for ``X`` of shape ``(n_cutouts, *x_shape)``: cutout ``i`` uses its
    own posterior (its own PSF, noise, mask, data, embedding), ``posts`` being the
    cutouts' `PosteriorDenoiser`s stacked along a leading axis with their ``prior`` field
    removed; ``prior`` is the shared (unbatched) prior denoiser, put back inside the vmap
    (broadcast, not copied). One call runs the prior network once on the whole batch.

    Build it with `BatchedPosterior.stack(prior, posteriors)`.
    """

    prior: Callable
    posts: PosteriorDenoiser

    @classmethod
    def stack(cls, prior, posteriors) -> BatchedPosterior:
        """Stack ``posteriors`` (same structure and shapes) around the shared ``prior``."""
        parts = [eqx.partition(_drop_prior(p), eqx.is_array) for p in posteriors]
        static0 = parts[0][1]
        tdef0 = jax.tree.structure(parts[0][0])
        for i, (dyn, static) in enumerate(parts[1:], 1):
            if jax.tree.structure(dyn) != tdef0 or not eqx.tree_equal(static, static0):
                raise ValueError(f"posteriors[{i}]: its posterior's structure differs from the "
                                 "first cutout's (different static operator settings); cutouts "
                                 "of one batch need forward models of one structure")
            shapes = [a.shape for a in jax.tree.leaves(dyn)]
            if shapes != [a.shape for a in jax.tree.leaves(parts[0][0])]:
                raise ValueError(f"posteriors[{i}]: array shapes differ from the first cutout's")
        dyn = jax.tree.map(lambda *a: jnp.stack(a), *[d for d, _ in parts])
        return cls(prior, eqx.combine(dyn, static0))

    @property
    def n_cutouts(self) -> int:
        return self.posts.sqrt_w[0].shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n_cutouts, *self.posts.x_shape)

    def member(self, post) -> PosteriorDenoiser:
        """One (unstacked) member with the prior put back."""
        return _with_prior(post, self.prior)

    def __call__(self, x, sigma):
        def one(post, xi):
            return self.member(post)(xi, sigma)

        return eqx.filter_vmap(one, in_axes=(eqx.if_array(0), 0))(self.posts, x)


# -- per-cutout forward models --------------------------------------------------------------


def cutout_observation(cutouts: Cutouts, i: int, *, model_psf_sigma: float = 0.5,
                       fft_shape: tuple[int, int] | None = None) -> Observation:
    """The `Observation` of cutout ``i`` on its own model frame (pixel scale 1, Gaussian
    model PSF of sigma ``model_psf_sigma`` pixels, as `make_observations`): its PSF image,
    its weights (0 where masked), its PSF matching at an FFT period of at least
    ``fft_shape`` (the same operator at any period). This is the forward model the E-step
    uses."""
    _, h, w = cutouts.shape
    frame = Frame(cutouts.bands, (h, w), psf=GaussianPSF(float(model_psf_sigma)))
    return Observation(cutouts.data[i], frame=frame, psf=cutouts.psf[i],
                       weights=cutouts.weights[i], min_fft_shape=fft_shape)


def fft_shape_of(cutouts: Cutouts, *, model_psf_sigma: float = 0.5) -> tuple[int, int]:
    """The FFT period that serves every cutout's forward model (the largest any needs):
    give it to `estep` as ``fft_shape`` so that every chunk of a batch, and every lap of
    EM, stacks its observations into the same shapes (one compiled program)."""
    shapes = [cutout_observation(cutouts, i, model_psf_sigma=model_psf_sigma).fft_shape for i in range(len(cutouts))]
    return int(max(s[0] for s in shapes)), int(max(s[1] for s in shapes))


def cutout_key(key: PRNGKeyArray, i: int, chunk: int) -> PRNGKeyArray:
    """The key cutout ``i`` is sampled with in a run of chunk size ``chunk``:
    ``fold_in(fold_in(key, i // chunk), i % chunk)`` (`deconvolve` with this key gives the
    same samples for deterministic samplers)."""
    return jr.fold_in(jr.fold_in(key, i // int(chunk)), i % int(chunk))


@dataclasses.dataclass
class _Setup:
    denoiser: Callable          # the unbatched prior denoiser
    sde: AbstractSDE
    scale: float
    mode: str                   # "identity" or "placement"
    pb: int
    size: tuple[int, int]
    fit_spectra: bool


def _setup(prior, cutouts: Cutouts, sde) -> _Setup:
    scale = 1.0
    if isinstance(prior, ScorePrior):
        scale, sde = float(prior.flux_scale), prior.sde if sde is None else sde
        prior = prior.denoiser
    if not callable(prior):
        raise TypeError(f"prior: expected a ScorePrior or a denoiser, got {type(prior).__name__}")
    if sde is None:
        raise ValueError("sde: give the SDE when the prior is a bare denoiser")
    shape = prior_shape(prior)
    if shape is None or len(shape) != 3:
        raise ValueError(f"prior: expected a prior over (band, h, w) images, got shape {shape}")
    pb, ph, pw = shape
    nb, h, w = cutouts.shape
    if pb not in (1, nb):
        raise ValueError(f"prior: it has {pb} band(s) but the cutouts have {nb}; use a prior "
                         f"with 1 band (spectrum x morphology) or {nb}")
    if not cutouts.is_blend and (ph, pw) != (h, w):
        raise ValueError(f"prior: its images are {ph}x{pw} pixels but the (isolated) cutouts "
                         f"are {h}x{w}; cut the cutouts to the prior's size")
    mode = "identity" if (not cutouts.is_blend and pb == nb) else "placement"
    return _Setup(prior, sde, scale, mode, pb, (ph, pw), fit_spectra=(pb == 1 and nb > 1))


def _corners(cutouts: Cutouts, idx, size) -> np.ndarray:
    _, h, w = cutouts.shape
    c = cutouts.source_centers()[idx]
    corners = np.floor(c + 0.5).astype(np.int32) - np.array([size[0] // 2, size[1] // 2], np.int32)
    # Padding slots: entirely outside the frame (dropped by the placement).
    return np.where(cutouts.source_mask[idx][..., None], corners, np.array([h, w], np.int32))


def _initial_spectra(o: Observation, centers, smask, nb) -> np.ndarray:
    """Back-projected data at the centres, normalised to mean 1 (as `deblend`)."""
    num = np.asarray(o.adjoint(o.weights * o.data, nb))
    den = np.asarray(o.adjoint(o.weights, nb))
    bp = num / np.where(den > 0, den, 1.0)
    iy = np.clip(np.floor(centers[:, 0] + 0.5).astype(int), 0, bp.shape[1] - 1)
    ix = np.clip(np.floor(centers[:, 1] + 0.5).astype(int), 0, bp.shape[2] - 1)
    s = np.clip(bp[:, iy, ix].T, 1e-3 * np.abs(bp).max() + 1e-12, None)
    s = s / s.mean(axis=1, keepdims=True)
    return np.where(smask[:, None], s, 1.0)


def _posterior(setup: _Setup, o: Observation, cutouts: Cutouts, i: int, method):
    if setup.mode == "identity":
        return PosteriorDenoiser(setup.denoiser, [o], method=method,
                                 embed=ScaledIdentity(setup.scale))
    nb, h, w = cutouts.shape
    n_max = cutouts.n_max
    smask = cutouts.source_mask[i]
    spectra = (_initial_spectra(o, cutouts.source_centers()[i], smask, nb)
               if setup.fit_spectra else np.ones((n_max, nb)))
    emb = SourcePlacement(jnp.asarray(spectra, jnp.float32),
                          jnp.asarray(_corners(cutouts, i, setup.size)), (h, w), setup.scale)
    return PosteriorDenoiser(ProductDenoiser(setup.denoiser, n_max), [o], method=method, embed=emb)


# -- jitted pieces --------------------------------------------------------------------------


@eqx.filter_jit
def _fit_chunk(batched: BatchedPosterior, morph, smask):
    def one(post, m, sm):
        s = fit_spectra(batched.member(post), m)
        return jnp.where(sm[:, None], s, 1.0).astype(jnp.float32)

    return eqx.filter_vmap(one, in_axes=(eqx.if_array(0), 0, 0))(batched.posts, morph, smask)


@eqx.filter_jit
def _chi2_chunk(batched: BatchedPosterior, x):
    """x: (n_samples, chunk, *x_shape) -> chi2/pixel per (chunk, sample) and of the mean."""

    def one(post, xs):
        p = batched.member(post)
        per = jax.vmap(p.chi2)(xs) / p.n_valid
        return per, p.chi2(xs.mean(0)) / p.n_valid

    return eqx.filter_vmap(one, in_axes=(eqx.if_array(0), 1))(batched.posts, x)


# -- the E-step -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class EStepResult:
    """Posterior samples of a batch of cutouts.

    - `samples`: ``(N, n_samples, n_max, prior_band, size, size)`` samples of the prior
      variable (the prior's units: flux / ``flux_scale``; for one-band priors of
      multi-band data the morphology, whose model is ``flux_scale * spectrum x
      morphology``), one stamp per source slot; isolated galaxies have ``n_max = 1``;
      padding slots (``source_mask`` False) are zeros.
    - `source_mask`: ``(N, n_max)`` bool, True for real sources.
    - `spectra`: ``(N, n_max, band)`` the spectra used (mean 1 over bands; ones where no
      spectrum was fitted: priors of the cutouts' band count, or padding slots).
    - `corners`: ``(N, n_max, 2)`` stamp corners in the cutout (isolated, same band
      count: zeros).
    - `chi2_per_pixel`: ``(N, n_samples)`` each sample's residual chi2 over the cutout's
      valid pixels; `chi2_mean`: ``(N,)`` that of the posterior-mean reconstruction.
    - `nfe`: denoiser evaluations per trajectory.
    - `timings`: seconds: ``build`` (host: forward models and posteriors), ``sample``
      (sampler solves, spectra included), ``total``; ``samples_per_s`` (cutout samples
      per second, total); ``compiles``: XLA compilations per chunk (the first chunk
      compiles, the others should not); ``n_chunks``, ``chunk``.
    """

    samples: Float[Array, "n n_samples n_max pband size size"]
    source_mask: Bool[Array, "n n_max"]
    spectra: Float[Array, "n n_max band"]
    corners: Array
    chi2_per_pixel: Float[Array, "n n_samples"]
    chi2_mean: Float[Array, " n"]
    nfe: int
    timings: dict


def estep(
    key: PRNGKeyArray,
    prior,
    cutouts: Cutouts,
    *,
    sampler: AbstractSampler = DEFAULT_SAMPLER,
    n_samples: int = 1,
    chunk: int = 16,
    sde: AbstractSDE | None = None,
    method: AbstractGuidance | None = None,
    n_spectrum_iters: int = 1,
    model_psf_sigma: float = 0.5,
    fft_shape: tuple[int, int] | None = None,
    keys: PRNGKeyArray | None = None,
    progress: bool = True,
) -> EStepResult:
    """Posterior samples for every cutout of a batch, each under its own forward model.

    **Arguments:**

    - `key`: PRNG key; chunk ``c`` uses ``fold_in(key, c)`` (see `cutout_key`).
    - `prior`: a `deconvjax.diffusion.ScorePrior` (its SDE and flux scale are used), or
      an unbatched denoiser over ``(prior_band, size, size)`` images together with
      ``sde``. ``prior_band`` is the cutouts' band count or 1 (spectrum x morphology).
      For isolated galaxies its image size must be the cutouts'.
    - `cutouts`: the batch, a `Cutouts`.
    - `sampler`: any sampler of `deconvjax.diffusion.samplers` (default `DPMSolver2M()`).
    - `n_samples`: posterior samples per cutout.
    - `chunk`: cutouts per batched solve (the last chunk is padded to this size).
    - `sde`: the SDE (default: the prior's).
    - `method`: the guidance (default `MMPS()`, its CG solve chosen from the prior).
    - `n_spectrum_iters`: spectrum refinements for one-band priors of multi-band data
      (each one more sampler solve per chunk; 0 keeps the back-projected spectra).
    - `model_psf_sigma`: the model frame's Gaussian PSF, in pixels (the resolution of
      the prior's images).
    - `fft_shape`: the least FFT period of the forward models (`fft_shape_of` of the whole
      batch, when the batch is sampled in several calls: every call then has the same
      shapes and compiles nothing new).
    - `keys`: one key per cutout, ``(N,)``, instead of keys from chunk positions: cutout
      ``i``'s starting points are then drawn from ``keys[i]`` exactly as a call with
      ``key=keys[i]`` on that cutout alone draws them, so with a deterministic sampler
      (the default, and every ODE sampler) a cutout's samples depend on its key only, not
      on the batch or chunk it is sampled in (up to float rounding). The sampler's own
      noise (stochastic samplers) still comes from ``fold_in(key, c)``.
    - `progress`: a progress bar over chunks.

    **Returns:**

    An `EStepResult`.
    """
    t0 = time.perf_counter()
    if not isinstance(cutouts, Cutouts):
        raise TypeError(f"cutouts: expected a Cutouts, got {type(cutouts).__name__}")
    if not isinstance(sampler, AbstractSampler):
        raise TypeError(f"sampler: expected an AbstractSampler, got {type(sampler).__name__}")
    n_samples, chunk = int(n_samples), int(chunk)
    if n_samples < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples}")
    if chunk < 1:
        raise ValueError(f"chunk: expected a positive integer, got {chunk}")
    setup = _setup(prior, cutouts, sde)
    n = len(cutouts)
    chunk = min(chunk, n)
    nb = cutouts.shape[0]
    if keys is not None and (not hasattr(keys, "shape") or len(keys) != n):
        raise ValueError(f"keys: expected one PRNG key per cutout ({n}), got "
                         f"{getattr(keys, 'shape', type(keys).__name__)}")

    # Forward models for all cutouts (host), at one FFT size (at least ``fft_shape``).
    fft = fft_shape_of(cutouts, model_psf_sigma=model_psf_sigma) if fft_shape is None else tuple(fft_shape)
    obs = [cutout_observation(cutouts, i, model_psf_sigma=model_psf_sigma, fft_shape=fft) for i in range(n)]
    grown = {tuple(o.fft_shape) for o in obs} - {tuple(fft)}
    if grown:
        raise ValueError(f"fft_shape: {tuple(fft)} is smaller than some cutouts need ({sorted(grown)}); "
                         "use fft_shape_of on the whole batch")
    t_build = time.perf_counter() - t0

    n_chunks = -(-n // chunk)
    prior_std = setup.sde.prior_std()
    out_x, out_spec, out_chi, out_chim, compiles = [], [], [], [], []
    t_sample, nfe = 0.0, 0
    it = range(n_chunks)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="E-step", unit="chunk")
    for c in it:
        c0 = _count_compiles()
        tb = time.perf_counter()
        idx = np.minimum(np.arange(c * chunk, (c + 1) * chunk), n - 1)
        posts = [_posterior(setup, obs[i], cutouts, int(i), method) for i in idx]
        batched = BatchedPosterior.stack(posts[0].prior, posts)
        x_shape = batched.posts.x_shape
        chunk_key = jr.fold_in(key, c)
        # Starting points drawn per cutout as `deconvolve` draws them with its key; with
        # `keys`, as this function draws them for a cutout alone (chunk 0, position 0).
        starts = ([jr.fold_in(chunk_key, j) for j in range(chunk)] if keys is None
                  else [jr.fold_in(jr.fold_in(keys[int(i)], 0), 0) for i in idx])
        x_init = jnp.stack([prior_std * jr.normal(jr.split(s)[0], (n_samples, *x_shape)) for s in starts], axis=1)
        t_build += time.perf_counter() - tb
        ts = time.perf_counter()
        if setup.fit_spectra:
            smask = jnp.asarray(cutouts.source_mask[idx])
            for k in range(int(n_spectrum_iters)):
                x, _ = sample(jr.fold_in(chunk_key, 1000 + k), batched, sampler, sde=setup.sde,
                              shape=batched.shape, n_samples=n_samples, x_init=x_init)
                spec = _fit_chunk(batched, x.mean(0), smask)
                batched = eqx.tree_at(lambda b: b.posts.embed.spectra, batched, spec)
        x, nfe_c = sample(chunk_key, batched, sampler, sde=setup.sde, shape=batched.shape,
                          n_samples=n_samples, x_init=x_init)
        chi, chim = _chi2_chunk(batched, x)
        x = jnp.swapaxes(x, 0, 1)  # (chunk, n_samples, *x_shape)
        if setup.mode == "identity":
            x = x[:, :, None]
            spec = jnp.ones((chunk, 1, nb), x.dtype)
        else:
            spec = batched.posts.embed.spectra
        jax.block_until_ready(x)
        t_sample += time.perf_counter() - ts
        keep = (c + 1) * chunk - n if c == n_chunks - 1 else 0
        last = chunk - keep
        out_x.append(np.asarray(x)[:last])
        out_spec.append(np.asarray(spec)[:last])
        out_chi.append(np.asarray(chi)[:last])
        out_chim.append(np.asarray(chim)[:last])
        nfe = int(nfe_c)
        compiles.append(_count_compiles() - c0)

    samples = np.concatenate(out_x)
    smask = cutouts.source_mask
    samples = np.where(smask[:, None, :, None, None, None], samples, 0.0).astype(np.float32)
    if setup.mode == "identity":
        corners = np.zeros((n, 1, 2), np.int32)
    else:
        corners = _corners(cutouts, np.arange(n), setup.size)
    total = time.perf_counter() - t0
    timings = {"build": t_build, "sample": t_sample, "total": total,
               "samples_per_s": n * n_samples / total, "compiles": tuple(compiles),
               "n_chunks": n_chunks, "chunk": chunk}
    return EStepResult(jnp.asarray(samples), jnp.asarray(smask),
                       jnp.asarray(np.concatenate(out_spec)), jnp.asarray(corners),
                       jnp.asarray(np.concatenate(out_chi)), jnp.asarray(np.concatenate(out_chim)),
                       nfe, timings)


# -- timing -----------------------------------------------------------------------------------


def estep_speedup(key: PRNGKeyArray, prior, cutouts: Cutouts, *,
                  sampler: AbstractSampler = DEFAULT_SAMPLER, n_samples: int = 1,
                  chunk: int | None = None, sde: AbstractSDE | None = None,
                  model_psf_sigma: float = 0.5) -> dict:
    """Posterior samples per second of `estep` (batched) against
    `deconvjax.posterior.deconvolve` called cutout by cutout (isolated galaxies, prior of
    the cutouts' band count), both warmed up first (compilation excluded).

    **Arguments:**

    - `key`, `prior`, `cutouts`, `sampler`, `n_samples`, `sde`, `model_psf_sigma`: as
      `estep`.
    - `chunk`: the E-step's chunk (default: all cutouts in one chunk).

    **Returns:**

    A dict: ``estep_samples_per_s``, ``loop_samples_per_s``, ``estep_speedup_over_loop``,
    ``estep_s``, ``loop_s``, and the setting (``n_cutouts``, ``n_samples``, ``chunk``,
    ``shape``).
    """
    from ..posterior.deconvolve import deconvolve

    n = len(cutouts)
    chunk = n if chunk is None else int(chunk)
    kw = dict(sampler=sampler, n_samples=n_samples, chunk=chunk, sde=sde,
              model_psf_sigma=model_psf_sigma, progress=False)
    estep(key, prior, cutouts, **kw)  # warm-up (compiles)
    t0 = time.perf_counter()
    res = estep(key, prior, cutouts, **kw)
    jax.block_until_ready(res.samples)
    t_batch = time.perf_counter() - t0

    sde_ = prior.sde if isinstance(prior, ScorePrior) and sde is None else sde

    def one(i):
        o = cutout_observation(cutouts, i, model_psf_sigma=model_psf_sigma)
        r = deconvolve(cutout_key(key, i, chunk), prior, [o], n_samples=n_samples, sde=sde_,
                       sampler=sampler)
        return jax.block_until_ready(r.samples)

    one(0)  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        one(i)
    t_loop = time.perf_counter() - t0
    total = n * n_samples
    return {"estep_samples_per_s": total / t_batch, "loop_samples_per_s": total / t_loop,
            "estep_speedup_over_loop": t_loop / t_batch, "estep_s": t_batch, "loop_s": t_loop,
            "n_cutouts": n, "n_samples": n_samples, "chunk": chunk,
            "shape": tuple(cutouts.shape)}
