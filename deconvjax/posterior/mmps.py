"""Moment-matching posterior sampling (MMPS; Rozet et al. 2024), the default guidance."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from .base import AbstractCGSolve, AbstractGuidance, ConvergedCG, FixedCG, _dot, exact_jacobian

__all__ = ["MMPS"]


class MMPS(AbstractGuidance):
    """``E[x | x_t, y]`` under the Gaussian approximation ``p(x | x_t) ~ N(D, sigma^2 J)``
    with ``D = D(x_t, sigma)`` the prior denoiser and ``J`` its Jacobian (Tweedie's
    second-order formula for the covariance):

        E[x | x_t, y] = D + sigma^2 J^T E^T A^T W^{1/2} u,
        (I + sigma^2 W^{1/2} A E J E^T A^T W^{1/2}) u = W^{1/2} (y - A E D).

    ``J`` enters only through vector-Jacobian products of one linearisation of the
    denoiser (one forward pass per call, one backward pass per CG iteration), taking
    ``J ~ J^T`` as exact denoisers have (their Jacobian is a covariance / sigma^2). The
    result is exact when the prior is Gaussian and CG has converged.

    **The linear solve** is chosen from the prior unless given (`cg` or `cg_iters`):

    - priors that declare an exact Jacobian (``exact_jacobian``: the analytic Gaussian,
      stationary Gaussian and Gaussian-mixture denoisers) get `ConvergedCG()`, CG to a
      relative residual of 1e-3 (at most 200 iterations): with a Gaussian prior the
      default posterior is then exact up to the sampler's discretisation. A fixed 3
      iterations, the default before, put the mean of 128 samples several posterior
      standard errors off on a 16x16 problem with a non-periodic operator and masked
      pixels (`tests/test_posterior_mmps_default.py`), 12 were marginal there;
    - learned priors (the U-Net of `deconvjax.diffusion.ScorePrior`) and plain callables
      get ``FixedCG(1)``, one iteration, which measured best for them (below).

    With a learned U-Net prior the Jacobian is neither exactly symmetric nor PSD, and
    CG can then diverge. Measured on 10 held-out COSMOS galaxies brighter than F814W 25
    (shipped 32x32 prior, Moffat FWHM 4 px, peak SNR ~20, mean of 8 samples, dpm2m 24
    steps), posterior-mean PSNR relative to oracle-tuned Tikhonov: ``cg_iters=1`` +0.2 dB
    with the probed ``c_t``; 2 iterations -2.6 dB, and 4 iterations with the symmetrised
    Jacobian ``(J + J^T) / 2`` (one more JVP per iteration) -5.5 dB, some galaxies
    diverging. A fixed ``prior_variance = sigma_data**2`` (one backward pass fewer) gave
    +0.4 dB there, but at 1.7x that noise (48 steps) one galaxy of ten diverged (-2.0 dB
    against the probe's -0.06 dB). Hence one iteration and the probe by default.

    The correction is kept inside a trust region in data space. The exact update moves the
    whitened model ``W^{1/2} A E x`` by ``S (I + S)^-1 r`` (``S`` the whitened prior
    covariance in data space, PSD; ``r`` the whitened residual of ``D``), which is never
    longer than ``r``. With a learned Jacobian an approximate solve can break that bound by
    orders of magnitude, and the sampler then diverges; the correction is scaled down to
    ``trust * |r|`` when it does. A one-iteration solve overshoots the exact update a few
    times over in the directions it does not resolve, and part of that overshoot is
    useful, so the default bound is looser than the exact one. Measured on the 10 bright
    held-out COSMOS galaxies above (shipped 32x32 prior, dpm2m 48 steps, mean of 8 samples,
    gain over Tikhonov at blurred-peak SNR 20 / 5 / 2) and on 10 noiseless simulated
    galaxies (SNR 20): without the bound -0.06 / +0.65 / -0.78 dB (one galaxy diverged, to
    8 dB, at SNR 2); ``trust=1`` -0.27 / +0.54 / +1.15 and +9.3 dB; ``trust=2``
    -0.18 / +0.53 / +1.09; ``trust=4`` (the default) -0.14 / +0.71 / +1.02 and +10.8 dB
    (`benchmarks/posterior.py` without the bound: +11.3 dB on 20 such galaxies).
    With a Gaussian prior and a converged solve even ``trust=1`` never binds.

    **Arguments:**

    - `cg_iters`: a fixed number of unrolled preconditioned CG iterations, shorthand for
      ``cg=FixedCG(cg_iters)`` (0: the Fourier-diagonal preconditioner alone).
    - `cg`: the solve, an `AbstractCGSolve` (`FixedCG` or `ConvergedCG`).
      With neither (default): chosen from the prior as above (`cg_solve`).
    - `prior_variance`: the scalar ``c_t`` of the preconditioner is
      ``sigma^2 v / (v + sigma^2)`` for this per-pixel prior variance ``v``; by default
      (None) ``c_t = sigma^2 <z, J z> / <z, z>`` from one fixed Rademacher probe ``z``
      (one more backward pass per call: a third of the cost at one CG iteration).
    - `trust`: the largest whitened data-space length of the correction, in units of the
      whitened residual's length (see above; one more forward operator per call, no
      network pass); None disables the bound.
    """

    cg_iters: int | None = eqx.field(static=True, default=None)
    cg: AbstractCGSolve | None = eqx.field(static=True, default=None)
    prior_variance: float | None = eqx.field(static=True, default=None)
    trust: float | None = eqx.field(static=True, default=4.0)

    def __check_init__(self):
        if self.cg_iters is not None and int(self.cg_iters) < 0:
            raise ValueError(f"cg_iters: expected a non-negative integer, got {self.cg_iters}")
        if self.cg is not None and not isinstance(self.cg, AbstractCGSolve):
            raise TypeError(f"cg: expected an AbstractCGSolve (FixedCG, ConvergedCG), got "
                            f"{type(self.cg).__name__}")
        if self.cg is not None and self.cg_iters is not None:
            raise ValueError("cg, cg_iters: give at most one (cg_iters=k is cg=FixedCG(k))")
        if self.trust is not None and not float(self.trust) > 0:
            raise ValueError(f"trust: expected a positive float or None, got {self.trust}")

    def cg_solve(self, prior) -> AbstractCGSolve:
        """The solve used with this prior denoiser: `cg`, else ``FixedCG(cg_iters)``,
        else `ConvergedCG()` for a prior with an exact Jacobian and ``FixedCG(1)`` for
        any other (learned) prior."""
        if self.cg is not None:
            return self.cg
        if self.cg_iters is not None:
            return FixedCG(int(self.cg_iters))
        return ConvergedCG() if exact_jacobian(prior) else FixedCG(1)

    def __call__(self, post, x, sigma):
        d, vjp = jax.vjp(lambda u: post.prior(u, sigma), x)
        s2 = sigma**2

        def cov(v):
            return s2 * vjp(v)[0]

        if self.prior_variance is None:
            # Fixed probe: a constant folded by XLA, no key threading through samplers.
            z = jr.rademacher(jr.key(0), x.shape, dtype=x.dtype)
            c = s2 * jnp.clip(jnp.mean(z * vjp(z)[0]), 0.0, 1.0)
        else:
            v = float(self.prior_variance)
            c = s2 * v / (v + s2)
        r = post.residual_white(d)
        u = post.solve(cov, r, c, self.cg_solve(post.prior))
        delta = cov(post.adjoint_white(u))
        if self.trust is not None:
            q = post.forward_white(delta)
            qq, rr = _dot(q, q), _dot(r, r)
            limit = float(self.trust) ** 2 * rr
            delta = delta * jnp.where(qq > limit, jnp.sqrt(limit / jnp.where(qq > 0, qq, 1.0)), 1.0)
        return d + delta
