"""The convolved-likelihood approximation (Adam et al. 2022)."""

from __future__ import annotations

import equinox as eqx

from .base import AbstractGuidance

__all__ = ["ConvolvedLikelihood"]


class ConvolvedLikelihood(AbstractGuidance):
    """``p(y | x_t) ~ N(y; A E x_t, W^-1 + sigma^2 A E E^T A^T)``: the likelihood of the
    *noisy* variable, treating ``x_t - x`` as independent of ``x`` (true only when the
    prior is flat). Then

        E[x | x_t, y] ~ D(x_t, sigma) + sigma^2 E^T A^T W^{1/2} u,
        (I + sigma^2 W^{1/2} A E E^T A^T W^{1/2}) u = W^{1/2} (y - A E x_t).

    No denoiser Jacobian is needed. Where ``A`` is a convolution on the model grid and
    the weights are uniform, the Fourier preconditioner *is* the inverse (up to the
    periodic approximation of the edges), so a couple of CG iterations make it exact.
    Biased for informative priors: it overestimates ``Cov[x_t - x]``, hence under-weights
    the data at large ``sigma``.
    """

    cg_iters: int = eqx.field(static=True, default=2)

    def __call__(self, post, x, sigma):
        s2 = sigma**2
        d = post.prior(x, sigma)
        u = post.solve(lambda v: s2 * v, post.residual_white(x), s2, int(self.cg_iters))
        return d + s2 * post.adjoint_white(u)
