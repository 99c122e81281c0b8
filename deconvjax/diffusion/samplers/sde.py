"""The reverse-time SDE through diffrax: ``dx = (f x - g^2 score) dt + g dW`` backwards in time.

Stochastic samplers: Euler-Maruyama (``diffrax.Euler()``, strong order 0.5, weak order 1,
one denoiser call per step) or ShARK (``diffrax.ShARK()``, for additive noise strong order
1.5, two calls per step, needs space-time Levy area, which the Brownian path then provides).
Integrated in ``u = -t`` so that the Brownian path runs forward.
"""

from __future__ import annotations

import diffrax as dfx
import jax.numpy as jnp
import lineax as lx

from .base import AbstractSampler, check_positive_int, diffrax_nfe, reverse_drift

__all__ = ["ReverseSDE"]


class ReverseSDE(AbstractSampler):
    """Reverse SDE with ``steps`` equal steps in ``t``.

    **Arguments:**

    - `steps`: number of steps (default 64).
    - `solver`: ``diffrax.Euler()`` (Euler-Maruyama, default) or ``diffrax.ShARK()``, or any
      diffrax SDE solver for additive noise.
    """

    steps: int = 64
    solver: dfx.AbstractSolver = dfx.Euler()

    def __check_init__(self):
        check_positive_int("steps", self.steps)
        if not isinstance(self.solver, dfx.AbstractSolver):
            raise ValueError(f"solver: expected a diffrax solver, got {type(self.solver).__name__}")

    def run(self, key, denoiser, sde, x1, *, progress=False):
        t0, t1 = -1.0, -float(sde.t_min)
        minimal = getattr(self.solver, "minimal_levy_area", dfx.AbstractBrownianIncrement)
        space_time = issubclass(minimal, dfx.AbstractSpaceTimeLevyArea)
        levy = dfx.SpaceTimeLevyArea if space_time else dfx.BrownianIncrement
        bm = dfx.UnsafeBrownianPath(shape=x1.shape, key=key, levy_area=levy)
        drift = dfx.ODETerm(lambda u, y, a: -reverse_drift(denoiser, sde, y, -u, ode=False))
        diff = dfx.ControlTerm(
            lambda u, y, a: lx.DiagonalLinearOperator(
                jnp.broadcast_to(sde.diffusion(-u).astype(y.dtype), y.shape)), bm)
        meter = dfx.TqdmProgressMeter() if progress else dfx.NoProgressMeter()
        # Samples are not differentiated through the Brownian path; ForwardMode is the
        # adjoint diffrax allows with UnsafeBrownianPath (cheaper than a virtual tree).
        sol = dfx.diffeqsolve(dfx.MultiTerm(drift, diff), self.solver, t0, t1,
                              (t1 - t0) / self.steps, x1, saveat=dfx.SaveAt(t1=True),
                              stepsize_controller=dfx.ConstantStepSize(),
                              max_steps=self.steps + 1, progress_meter=meter,
                              adjoint=dfx.ForwardMode())
        x = sol.ys[0] / sde.scale(sde.t_min)
        return x, jnp.asarray(diffrax_nfe(self.solver, sol.stats["num_steps"]), jnp.int32)
