"""Moment-matching posterior sampling (MMPS; Rozet et al. 2024), the default guidance."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from .base import AbstractCGSolve, AbstractGuidance, ConvergedCG, FixedCG, _dot, exact_jacobian

__all__ = ["MMPS", "tweedie_covariance", "within_trust"]


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
      default posterior is then exact up to the sampler's discretisation (a few fixed
      iterations are not: `tests/test_posterior_mmps_default.py`);
    - learned priors (the U-Net of `deconvjax.diffusion.ScorePrior`) and plain callables
      get ``FixedCG(1)``, one iteration, which measured best for them (below).

    With a learned U-Net prior the Jacobian is neither exactly symmetric nor PSD, and
    CG can then diverge: on held-out COSMOS galaxies more iterations (or the symmetrised
    Jacobian) did worse than one, and a fixed prior variance instead of the probed one
    diverged on some galaxies at higher noise (figures: benchmarks/RESULTS.md, "MMPS with
    a learned prior"). Hence one iteration and the probe by default.

    The correction is kept inside a trust region in data space. The exact update moves the
    whitened model ``W^{1/2} A E x`` by ``S (I + S)^-1 r`` (``S`` the whitened prior
    covariance in data space, PSD; ``r`` the whitened residual of ``D``), which is never
    longer than ``r``. With a learned Jacobian an approximate solve can break that bound by
    orders of magnitude, and the sampler then diverges; the correction is scaled down to
    ``trust * |r|`` when it does. A one-iteration solve overshoots the exact update a few
    times over in the directions it does not resolve, and part of that overshoot is
    useful, so the default bound (``trust=4``) is looser than the exact one; without any
    bound one galaxy of ten diverged at low SNR (figures: benchmarks/RESULTS.md, "MMPS
    trust region"). With a Gaussian prior and a converged solve even ``trust=1`` never
    binds.

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
        d, cov, c = tweedie_covariance(post, x, sigma, self.prior_variance)
        r = post.residual_white(d)
        u = post.solve(cov, r, c, self.cg_solve(post.prior))
        delta = cov(post.adjoint_white(u))
        if self.trust is not None:
            q = post.forward_white(delta)
            delta = delta * within_trust(_dot(q, q), _dot(r, r), self.trust)
        return d + delta


def tweedie_covariance(post, x: Float[Array, "*xshape"], sigma, prior_variance: float | None = None):
    """The prior side of MMPS at ``(x_t, sigma)``: the denoiser's output ``D``, the product
    with Tweedie's covariance ``v -> sigma^2 J^T v`` (one linearisation of the denoiser, one
    backward pass per call), and the preconditioner's scalar ``c_t`` (from the per-pixel
    `prior_variance`, or one fixed Rademacher probe of ``J``; see `MMPS`). Shared by the
    guidance objects that differ from `MMPS` only in how the data side is whitened."""
    d, vjp = jax.vjp(lambda u: post.prior(u, sigma), x)
    s2 = sigma**2

    def cov(v):
        return s2 * vjp(v)[0]

    if prior_variance is None:
        # Fixed probe: a constant folded by XLA, no key threading through samplers.
        z = jr.rademacher(jr.key(0), x.shape, dtype=x.dtype)
        c = s2 * jnp.clip(jnp.mean(z * vjp(z)[0]), 0.0, 1.0)
    else:
        v = float(prior_variance)
        c = s2 * v / (v + s2)
    return d, cov, c


def within_trust(qq: Float[Array, ""], rr: Float[Array, ""], trust: float) -> Float[Array, ""]:
    """The factor that scales a correction whose whitened data-space squared length is
    `qq` down to ``trust`` times the whitened residual's length (``rr`` its square); 1 when
    it is already inside (see `MMPS`'s trust region)."""
    limit = float(trust) ** 2 * rr
    return jnp.where(qq > limit, jnp.sqrt(limit / jnp.where(qq > 0, qq, 1.0)), 1.0)
