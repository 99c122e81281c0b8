"""Ancestral sampling on the EDM schedule: each step draws from the VE forward chain's
posterior ``q(x_{i+1} | x_i, x_0)`` with ``x_0`` replaced by the denoiser's estimate,

    x_{i+1} = D + (s_{i+1}/s_i)^2 (x_i - D) + s_{i+1} sqrt(1 - (s_{i+1}/s_i)^2) z,

one denoiser call per step (DDPM's sampler, Ho et al. 2020, in VE form). Its mean is the
reverse-diffusion step ``x + (s_i^2 - s_{i+1}^2) score`` of Song et al. 2021; its noise is
the posterior's, which converged faster on the Gaussian tests than that step's
``sqrt(s_i^2 - s_{i+1}^2)``. Stochastic, first order: it needs many more steps than the ODE
samplers for the same accuracy. It is also the example of a sampler added by one file: the
step, its per-step inputs and its call count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.random as jr

from .base import AbstractStep, AbstractStepSampler, check_schedule, edm_sigmas

__all__ = ["Ancestral"]


class _AncestralStep(AbstractStep):
    def init(self, sde, x1):
        return x1 / sde.scale(1.0)

    def __call__(self, denoiser, sde, x, key, inp):
        s0, s1 = (v.astype(x.dtype) for v in inp)
        d = jax.vmap(denoiser, in_axes=(0, None))(x, s0)
        r = (s1 / s0) ** 2
        return d + r * (x - d) + s1 * jnp.sqrt(1.0 - r) * jr.normal(key, x.shape, x.dtype)

    def output(self, sde, x):
        return x


class Ancestral(AbstractStepSampler):
    """Ancestral (reverse-diffusion) sampling: ``steps`` denoiser calls on the EDM schedule.

    **Arguments:**

    - `steps`: number of steps (default 64).
    - `rho`: exponent of the EDM schedule (`edm_sigmas`).
    - `unroll`: ``lax.scan``'s ``unroll`` for the traceable form (`AbstractStepSampler`).
    """

    steps: int = 64
    rho: float = 7.0
    unroll: int | bool = 1

    def __check_init__(self):
        check_schedule(self.steps, self.rho, self.unroll)

    def plan(self, sde):
        sig = edm_sigmas(sde.sigma(1.0), sde.sigma(sde.t_min), self.steps, self.rho)
        return sig[:-1], sig[1:]

    def stepper(self):
        return _AncestralStep()

    def nfe(self):
        return self.steps
