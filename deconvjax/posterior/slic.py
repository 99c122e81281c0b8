"""Posterior guidance with a noise model (`deconvjax.likelihood.noise_model`): the learned
noise likelihood of SLIC (a score network trained on noise cutouts) or any other
`AbstractNoiseModel`, in place of the white Gaussian likelihood of the observations' weights.

Two guidance objects, both `AbstractGuidance` members used through `PosteriorDenoiser`:

- `NoiseScoreGuidance`, SLIC's time-dependent form. In VE coordinates the residual of the
  noisy variable is ``eta_t = y - A E x_t = n - sigma A E eps``: the noise convolved with
  ``N(0, sigma^2 A E E^T A^T)``. Taking ``eta_t`` independent of ``x_t`` (the
  convolved-likelihood approximation, as `ConvolvedLikelihood`) gives
  ``grad log p(y | x_t) ~ -(A E)^T s_eta(y - A E x_t)``. A noise model only knows the noise
  convolved with an *isotropic* Gaussian, so ``sigma^2 A E E^T A^T`` is replaced by
  ``sigma_eff^2 I`` with the same trace, ``sigma_eff^2 = sigma^2 g mean_k |H_k|^2`` (``g``
  the embedding's gain, ``|H_k|^2`` the symbol of ``A A^T``, averaged over frequencies and
  bands). Two approximations, then: the convolved likelihood (biased towards the prior
  at large ``sigma`` for informative priors, as `ConvolvedLikelihood` is) and the isotropic
  kernel (which over-smooths the noise at the frequencies the PSF removes and under-smooths
  it at the others). Both are exact only for a flat prior and ``A A^T`` proportional to the
  identity. Needs no denoiser Jacobian.

- `GaussianFitMMPS`: `MMPS` (the project's default guidance, exact for Gaussian priors and
  Gaussian noise) with the noise model's Gaussian fit (`AbstractNoiseModel.gaussian_fit`, a
  stationary correlated Gaussian with the noise's power spectrum) as the likelihood. The
  correction when the noise is close to Gaussian (drizzled-image noise is, up to its
  correlations): it keeps MMPS's covariance-aware update, and loses only the noise's
  non-Gaussian shape.

Both take one noise model per observation, on that observation's pixel grid (``(band, ny,
nx)``, in data units); observation weights only mask pixels (``weights = 0``).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..likelihood.correlated import CorrelatedGaussianLikelihood
from ..likelihood.noise_model import AbstractNoiseModel
from .base import AbstractCGSolve, AbstractGuidance
from .mmps import MMPS, tweedie_covariance, within_trust

__all__ = ["NoiseScoreGuidance", "GaussianFitMMPS", "ScoreWhitenedMMPS", "effective_sigma"]


def _as_models(noise_models) -> tuple[AbstractNoiseModel, ...]:
    models = (noise_models,) if isinstance(noise_models, AbstractNoiseModel) else tuple(noise_models)
    if not models or not all(isinstance(m, AbstractNoiseModel) for m in models):
        raise TypeError("noise_models: expected an AbstractNoiseModel or a sequence of them (one per "
                        f"observation), got {noise_models!r:.80}")
    return models


def _check_models(models, post) -> None:
    """One noise model per observation, on that observation's grid (static shapes: raised
    when the guidance is first traced)."""
    if len(models) != len(post.observations):
        raise ValueError(f"noise_models: expected one per observation ({len(post.observations)}), "
                         f"got {len(models)}")
    for i, (m, o) in enumerate(zip(models, post.observations)):
        m.check_shape(o.shape, name=f"observations[{i}]")


def _vdot(a: tuple, b: tuple) -> Array:
    return sum(jnp.vdot(u, v).real for u, v in zip(a, b))


def effective_sigma(post, sigma: Float[Array, ""]) -> tuple[Float[Array, ""], ...]:
    """Per observation, ``sigma_eff = sigma sqrt(mean(diag(A E E^T A^T)))``: the isotropic
    perturbation with the trace of ``sigma^2 A E E^T A^T`` (see `NoiseScoreGuidance`)."""
    out = []
    for h2, g in zip(post.h2, post.gain):
        # irfft2 at the origin is the mean of the spectrum over all frequencies, the
        # rfft2 layout's half-plane counted with its Hermitian partner.
        shape = (h2.shape[-2], 2 * (h2.shape[-1] - 1))
        mean_h2 = jnp.fft.irfft2(h2, s=shape)[..., 0, 0]
        out.append(sigma * jnp.sqrt(jnp.mean(g * mean_h2)))
    return tuple(out)


class NoiseScoreGuidance(AbstractGuidance):
    """SLIC's time-dependent likelihood score: ``E[x | x_t, y] ~ D(x_t, sigma) - sigma^2
    sum_i (A_i E)^T s_i(y_i - A_i E x_t, sigma_eff,i)``, ``s_i`` the score of observation
    ``i``'s noise model convolved with ``N(0, sigma_eff,i^2 I)`` (`effective_sigma`: the
    trace of ``sigma^2 A E E^T A^T``), zero on masked pixels.

    An approximation (the convolved likelihood with an isotropic kernel; see the module
    docstring): biased even for Gaussian noise and a Gaussian prior, where
    `GaussianFitMMPS` is exact. Its one merit is that it uses the noise's full non-Gaussian
    score at every noise level. The isotropic kernel's variance is the *mean* of
    ``sigma^2 |H_k|^2``, so at the frequencies the PSF passes (``|H_k|^2`` far above its
    mean) the step ``sigma^2 |H_k|^2 / (P_k + sigma_eff^2)`` is up to ``|H_k|^2 / mean|H|^2``
    times the flat-prior exact one, a likely reason why, with a learned prior and a learned
    noise score, the sampler ran away in benchmarks/noise.py (not separated there from the
    learned score's own errors on residuals unlike its training noise). For a noise
    model's full score in a stable posterior use `ScoreWhitenedMMPS`, which evaluates the
    score on the residual of the denoiser's prediction inside MMPS's covariance-aware
    update.

    **Arguments:**

    - `noise_models`: an `AbstractNoiseModel` per observation (one for a single one).
    - `max_sigma`: the largest ``sigma_eff`` (data units) at which the noise models' own
      scores are used; above it, the score of their Gaussian fits convolved with
      ``N(0, sigma_eff^2 I)`` (analytic): a learned score is only trained up to some noise
      level, and far above the noise the convolved density is close to that Gaussian
      anyway. None (default): always the models' scores.
    """

    noise_models: tuple[AbstractNoiseModel, ...]
    fits: tuple[CorrelatedGaussianLikelihood, ...]
    max_sigma: float | None = eqx.field(static=True)

    def __init__(self, noise_models: AbstractNoiseModel | Sequence[AbstractNoiseModel], *,
                 max_sigma: float | None = None):
        self.noise_models = _as_models(noise_models)
        self.fits = tuple(m.gaussian_fit() for m in self.noise_models)
        if max_sigma is not None and not float(max_sigma) > 0:
            raise ValueError(f"max_sigma: expected a positive float or None, got {max_sigma}")
        self.max_sigma = None if max_sigma is None else float(max_sigma)

    def _score(self, i, eta, s_eff):
        score = self.noise_models[i].score(eta, s_eff)
        if self.max_sigma is None:
            return score
        p = self.fits[i].power_spectrum + s_eff**2
        gauss = -jnp.fft.irfft2(jnp.fft.rfft2(eta) / p, s=eta.shape[-2:])
        # Both branches are evaluated (no Python branching on a traced sigma).
        return jnp.where(s_eff > self.max_sigma, gauss, score)

    def __call__(self, post, x, sigma):
        _check_models(self.noise_models, post)
        d = post.prior(x, sigma)

        def predict(u):
            m = post.embed(u)
            return tuple(o(m) for o in post.observations)

        pred, vjp = jax.vjp(predict, x)
        scores = tuple(
            jnp.where(sw > 0, self._score(i, o.data - p, s_eff), 0.0).astype(x.dtype)
            for i, (o, p, sw, s_eff) in enumerate(zip(post.observations, pred, post.sqrt_w,
                                                      effective_sigma(post, sigma)))
        )
        # grad_x log p(y - A E x) = -(A E)^T s(y - A E x)
        return d - sigma**2 * vjp(scores)[0]


class GaussianFitMMPS(AbstractGuidance):
    """`MMPS` with each observation's noise model replaced by its Gaussian fit (a
    stationary correlated Gaussian, covariance ``C`` diagonal in Fourier space with the
    noise's power spectrum ``P``). Whitening by ``C^{-1/2}`` instead of the weights, it
    solves

        (I + C^{-1/2} A E V E^T A^T C^{-1/2}) u = C^{-1/2} (y - A E D(x_t)),
        E[x | x_t, y] ~ D + V E^T A^T C^{-1/2} u,    V = sigma^2 dD/dx_t,

    by preconditioned CG, with the Fourier preconditioner ``(1 + c g |H_k|^2 / P_k)^-1``.
    Exact (with a converged solve) for a Gaussian prior and Gaussian noise; for non-Gaussian
    noise it keeps the noise's second moments and drops its higher ones. The options are
    `MMPS`'s: the solve (`cg`, or `cg_iters`; default a converged solve for priors with an
    exact Jacobian, one CG iteration for learned ones), the scalar stand-in ``c`` for ``V``
    in the preconditioner (`prior_variance`, else a Hutchinson probe), and the `trust`
    bound on the correction's whitened length.

    **Arguments:**

    - `noise_models`: an `AbstractNoiseModel` per observation (one for a single one).
    - `cg_iters`, `cg`, `prior_variance`, `trust`: as `MMPS`.
    """

    noise_models: tuple[AbstractNoiseModel, ...]
    fits: tuple[CorrelatedGaussianLikelihood, ...]
    cg_iters: int | None = eqx.field(static=True)
    cg: AbstractCGSolve | None = eqx.field(static=True)
    prior_variance: float | None = eqx.field(static=True)
    trust: float | None = eqx.field(static=True)

    def __init__(self, noise_models: AbstractNoiseModel | Sequence[AbstractNoiseModel], *,
                 cg_iters: int | None = None, cg: AbstractCGSolve | None = None,
                 prior_variance: float | None = None, trust: float | None = 4.0):
        self.noise_models = _as_models(noise_models)
        # Fitted once, outside any trace (a learned model's fit is a host computation).
        self.fits = tuple(m.gaussian_fit() for m in self.noise_models)
        if cg_iters is not None and int(cg_iters) < 0:
            raise ValueError(f"cg_iters: expected a non-negative integer, got {cg_iters}")
        if cg is not None and not isinstance(cg, AbstractCGSolve):
            raise TypeError(f"cg: expected an AbstractCGSolve (FixedCG, ConvergedCG), got {type(cg).__name__}")
        if cg is not None and cg_iters is not None:
            raise ValueError("cg, cg_iters: give at most one (cg_iters=k is cg=FixedCG(k))")
        if trust is not None and not float(trust) > 0:
            raise ValueError(f"trust: expected a positive float or None, got {trust}")
        if prior_variance is not None and not float(prior_variance) > 0:
            raise ValueError(f"prior_variance: expected a positive float or None, got {prior_variance}")
        self.cg_iters = cg_iters
        self.cg = cg
        self.prior_variance = prior_variance
        self.trust = trust

    def cg_solve(self, prior) -> AbstractCGSolve:
        """As `MMPS.cg_solve`."""
        return MMPS(cg_iters=self.cg_iters, cg=self.cg).cg_solve(prior)

    def __call__(self, post, x, sigma):
        _check_models(self.noise_models, post)

        def residual(fits, whiten, r, c):
            return whiten(r)

        return _fit_mmps(self, post, x, sigma, residual)


def _fit_mmps(guidance, post, x, sigma, whitened_residual):
    """MMPS whitened by ``guidance.fits`` (Gaussian fits, one per observation), the
    whitened residual of the denoiser's prediction given by ``whitened_residual(fits,
    whiten, r, c)`` (``r`` the residuals, ``c`` the preconditioner's scalar prior
    variance): shared by `GaussianFitMMPS` and `ScoreWhitenedMMPS`."""
    fits = guidance.fits
    masks = tuple(post.sqrt_w)

    def whiten(r):
        return tuple(f.whiten(ri, w).astype(ri.dtype) for f, ri, w in zip(fits, r, masks))

    def forward(u):
        m = post.embed(u)
        return whiten(tuple(o(m) for o in post.observations))

    def adjoint(z):
        (out,) = jax.linear_transpose(forward, jnp.zeros(post.x_shape, x.dtype))(z)
        return out

    d, cov, c = tweedie_covariance(post, x, sigma, guidance.prior_variance)
    m = post.embed(d)
    r = whitened_residual(fits, whiten, tuple(o.data - o(m) for o in post.observations), c)

    def matvec(u):
        return tuple(a + b for a, b in zip(u, forward(cov(adjoint(u)))))

    def precond(rr):
        out = []
        for ri, h2, g, f in zip(rr, post.h2, post.gain, fits):
            den = 1.0 + c * g[:, None, None] * h2 / f.power_spectrum
            out.append(jnp.fft.irfft2(jnp.fft.rfft2(ri) / den, s=ri.shape[-2:]).astype(ri.dtype))
        return tuple(out)

    u = guidance.cg_solve(post.prior)(matvec, r, precond)
    delta = cov(adjoint(u))
    if guidance.trust is not None:
        q = forward(delta)
        delta = delta * within_trust(_vdot(q, q), _vdot(r, r), guidance.trust)
    return d + delta


class ScoreWhitenedMMPS(AbstractGuidance):
    """`GaussianFitMMPS` with the noise models' own scores in the data term: a robust
    (M-estimator-like) MMPS for non-Gaussian noise, e.g. a learned noise model on images
    with cosmic rays or hot pixels.

    MMPS whitens the residual of the denoiser's prediction, ``r = y - A E D(x_t)``, as
    ``C^{-1/2} r``. Here ``r`` is the noise plus the unresolved galaxy ``A E (x - D)``,
    taken as isotropic Gaussian of per-pixel variance ``s^2 = c_t g mean|H|^2``
    (`effective_sigma` at MMPS's scalar prior variance ``c_t``), so its score is the noise
    model's score at perturbation ``s``, ``s_s(r)``. For Gaussian noise
    ``s_s(r) = -(C + s^2)^{-1} r`` and ``C^{-1/2} r = -C^{-1/2} (C + s^2) s_s(r)``; this
    guidance uses the latter with the noise model's score. A residual the noise model
    finds improbable (a cosmic ray, tens of sigma in one pixel) has a saturated score and
    pulls the estimate much less than its Gaussian whitening would; and since the score
    is evaluated at the galaxy term's level ``s``, the residual stays inside what a
    learned model was trained on (noise convolved with a Gaussian), which a score at
    ``s = 0`` would not be at large diffusion times, where ``r`` is mostly galaxy. The
    rest (covariance-aware update, preconditioned CG, trust region) is `GaussianFitMMPS`'s,
    with the covariance ``C`` of `fits`.

    ``s`` is at least the model's `min_sigma` (a learned model's floor). Above
    `max_sigma` the plain ``C^{-1/2} r`` is used (a learned model is trained up to some
    perturbation; far above the noise the outliers no longer matter). With a
    `GaussianNoiseModel` and its own fit this is `GaussianFitMMPS` exactly at every time.

    **Arguments:**

    - `noise_models`: an `AbstractNoiseModel` per observation (one for a single one).
    - `fits`: the `CorrelatedGaussianLikelihood` whose covariance ``C`` whitens, one per
      observation; default the models' `gaussian_fit()` (second moments). For
      heavy-tailed noise the noise's core, the Fisher fit
      (`deconvjax.likelihood.learned.fisher_power_spectrum`), is the consistent choice:
      with the second moments, inflated by the outliers, the typical pixels' weight would
      be too large by that inflation.
    - `max_sigma`: the largest ``s`` (data units) at which the scores are used; None
      (default): always.
    - `cg_iters`, `cg`, `prior_variance`, `trust`: as `MMPS`.
    """

    noise_models: tuple[AbstractNoiseModel, ...]
    fits: tuple[CorrelatedGaussianLikelihood, ...]
    max_sigma: float | None = eqx.field(static=True)
    cg_iters: int | None = eqx.field(static=True)
    cg: AbstractCGSolve | None = eqx.field(static=True)
    prior_variance: float | None = eqx.field(static=True)
    trust: float | None = eqx.field(static=True)

    def __init__(self, noise_models: AbstractNoiseModel | Sequence[AbstractNoiseModel], *,
                 fits: CorrelatedGaussianLikelihood | Sequence[CorrelatedGaussianLikelihood] | None = None,
                 max_sigma: float | None = None, cg_iters: int | None = None,
                 cg: AbstractCGSolve | None = None, prior_variance: float | None = None,
                 trust: float | None = 4.0):
        # GaussianFitMMPS validates the shared options.
        base = GaussianFitMMPS(noise_models, cg_iters=cg_iters, cg=cg, prior_variance=prior_variance,
                               trust=trust)
        self.noise_models = base.noise_models
        if fits is None:
            self.fits = base.fits
        else:
            fits = (fits,) if isinstance(fits, CorrelatedGaussianLikelihood) else tuple(fits)
            if len(fits) != len(self.noise_models) or not all(
                    isinstance(f, CorrelatedGaussianLikelihood) for f in fits):
                raise TypeError(f"fits: expected {len(self.noise_models)} CorrelatedGaussianLikelihood "
                                f"(one per noise model), got {fits!r:.80}")
            self.fits = fits
        if max_sigma is not None and not float(max_sigma) > 0:
            raise ValueError(f"max_sigma: expected a positive float or None, got {max_sigma}")
        self.max_sigma = None if max_sigma is None else float(max_sigma)
        self.cg_iters, self.cg = base.cg_iters, base.cg
        self.prior_variance, self.trust = base.prior_variance, base.trust

    def cg_solve(self, prior) -> AbstractCGSolve:
        """As `MMPS.cg_solve`."""
        return MMPS(cg_iters=self.cg_iters, cg=self.cg).cg_solve(prior)

    def __call__(self, post, x, sigma):
        _check_models(self.noise_models, post)
        masks = tuple(post.sqrt_w)

        def residual(fits, whiten, r, c):
            gauss = whiten(r)
            out = []
            for model, f, ri, gi, w, s_gal in zip(self.noise_models, fits, r, gauss, masks,
                                                  effective_sigma(post, jnp.sqrt(c))):
                s = jnp.maximum(s_gal, model.min_sigma).astype(ri.dtype)
                score = jnp.where(w > 0, model.score(jnp.where(w > 0, ri, 0.0), s), 0.0)
                # -C^{-1/2} (C + s^2) s_s(r): C^{-1/2} r for Gaussian noise.
                robust = -jnp.fft.irfft2(jnp.fft.rfft2(score) * (f.power_spectrum + s**2)
                                         / jnp.sqrt(f.power_spectrum), s=ri.shape[-2:])
                if self.max_sigma is not None:
                    # Both branches are evaluated (no Python branching on a traced sigma).
                    robust = jnp.where(s_gal > self.max_sigma, gi, robust)
                out.append(robust.astype(ri.dtype))
            return tuple(out)

        return _fit_mmps(self, post, x, sigma, residual)
