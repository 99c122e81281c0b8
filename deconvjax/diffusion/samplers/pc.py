"""Predictor-corrector sampling (Song et al. 2021): an Euler-Maruyama step of the reverse
SDE, then one Langevin corrector step at the new time, on equal steps in ``t``.

Written as fixed steps rather than a diffrax solve because the corrector is not an SDE step.
The corrector's step is ``2 (snr s sigma)^2`` (annealed Langevin, Song & Ermon 2019) rather
than Song et al.'s ratio of sampled norms, which is unstable in low dimension where the
score's norm can be near zero. Two denoiser calls per step.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr

from .base import (
    AbstractStep,
    AbstractStepSampler,
    check_positive_int,
    check_unroll,
    reverse_drift,
    score_at,
)

__all__ = ["PredictorCorrector"]


class _PCStep(AbstractStep):
    def init(self, sde, x1):
        return x1

    def __call__(self, denoiser, sde, x, key, inp):
        t, t_next, snr = inp
        k1, k2 = jr.split(key)
        dt = t - t_next
        x = x - reverse_drift(denoiser, sde, x, t, ode=False) * dt \
            + sde.diffusion(t) * jnp.sqrt(dt) * jr.normal(k1, x.shape, x.dtype)
        g = score_at(denoiser, sde, x, t_next)
        z = jr.normal(k2, x.shape, x.dtype)
        eps = 2.0 * (snr * sde.scale(t_next) * sde.sigma(t_next)) ** 2
        return x + eps * g + jnp.sqrt(2.0 * eps) * z

    def output(self, sde, x):
        return x / sde.scale(sde.t_min)


class PredictorCorrector(AbstractStepSampler):
    """Euler-Maruyama predictor + one Langevin corrector per step (``2 * steps`` NFE).

    **Arguments:**

    - `steps`: number of steps (default 64).
    - `snr`: the corrector's signal-to-noise ratio (step ``2 (snr s sigma)^2``).
    - `unroll`: ``lax.scan``'s ``unroll`` for the traceable form (`AbstractStepSampler`).
    """

    steps: int = 64
    snr: float = 0.1
    unroll: int | bool = 1

    def __check_init__(self):
        check_positive_int("steps", self.steps)
        if not (isinstance(self.snr, int | float) and self.snr > 0):
            raise ValueError(f"snr: expected a positive float, got {self.snr!r}")
        check_unroll(self.unroll)

    def plan(self, sde):
        ts = jnp.linspace(1.0, sde.t_min, self.steps + 1)
        return ts[:-1], ts[1:], jnp.full((self.steps,), self.snr, ts.dtype)

    def stepper(self):
        return _PCStep()

    def nfe(self):
        return 2 * self.steps
