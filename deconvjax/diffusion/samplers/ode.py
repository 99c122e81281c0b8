"""The probability-flow ODE through diffrax: adaptive (`AdaptiveODE`) or fixed-step
(`FixedStepODE`).

The ODE is ``dx/dt = f x - g^2 score / 2``, integrated in ``u = -t`` so that diffrax runs
forward from ``u = -1`` to ``u = -t_min``; a batch shares one step-size sequence (one batched
denoiser call per stage). The adaptive solve is the accurate choice for analytic denoisers
(exact Gaussian priors and posteriors) and the one to check the fixed-step samplers against;
for networks the host-loop samplers (`DPMSolver2M`, `EDMHeun`) are much faster on CPU.
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

from .base import AbstractSampler, check_positive_int, diffrax_nfe, reverse_drift

__all__ = ["AdaptiveODE", "FixedStepODE"]


def _term(denoiser, sde):
    return dfx.ODETerm(lambda u, y, a: -reverse_drift(denoiser, sde, y, -u, ode=True))


def _solve(denoiser, sde, x1, solver, controller, dt0, max_steps, progress):
    meter = dfx.TqdmProgressMeter() if progress else dfx.NoProgressMeter()
    sol = dfx.diffeqsolve(_term(denoiser, sde), solver, -1.0, -float(sde.t_min), dt0, x1,
                          saveat=dfx.SaveAt(t1=True), stepsize_controller=controller,
                          max_steps=max_steps, progress_meter=meter,
                          adjoint=dfx.RecursiveCheckpointAdjoint())
    x = sol.ys[0] / sde.scale(sde.t_min)
    return x, jnp.asarray(diffrax_nfe(solver, sol.stats["num_steps"]), jnp.int32)


class AdaptiveODE(AbstractSampler):
    """Adaptive probability-flow ODE (diffrax, PIDController); the step count follows the
    tolerances.

    **Arguments:**

    - `solver`: an adaptive diffrax solver (default ``diffrax.Tsit5()``; ``diffrax.Heun()``).
    - `rtol`, `atol`: the controller's tolerances.
    - `dt_min`: smallest step (default: none).
    - `max_steps`: the solve fails beyond this many steps.
    """

    solver: dfx.AbstractAdaptiveSolver = dfx.Tsit5()
    rtol: float = 1e-3
    atol: float = 1e-3
    dt_min: float | None = None
    max_steps: int = 4096

    def __check_init__(self):
        if not isinstance(self.solver, dfx.AbstractAdaptiveSolver):
            raise ValueError(f"solver: expected an adaptive diffrax solver, got "
                             f"{type(self.solver).__name__}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0):
                raise ValueError(f"{name}: expected a positive float, got {v!r}")
        if self.dt_min is not None and not self.dt_min > 0:
            raise ValueError(f"dt_min: expected None or a positive float, got {self.dt_min!r}")
        check_positive_int("max_steps", self.max_steps)

    def run(self, key, denoiser, sde, x1, *, progress=False):
        controller = dfx.PIDController(rtol=self.rtol, atol=self.atol, pcoeff=0.0, icoeff=1.0,
                                       dtmin=self.dt_min)
        dt0 = (1.0 - float(sde.t_min)) / 32
        return _solve(denoiser, sde, x1, self.solver, controller, dt0, self.max_steps, progress)


class FixedStepODE(AbstractSampler):
    """Probability-flow ODE with ``steps`` equal steps in ``t`` (diffrax solver).

    **Arguments:**

    - `steps`: number of steps (default 64).
    - `solver`: any diffrax ODE solver (default ``diffrax.Heun()``; ``diffrax.Euler()``).
    - `host_loop`: call the solver's ``step`` from a Python loop (one compiled call per
      step) instead of diffrax's compiled while loop when sampling outside a trace.
      Same result to float rounding, and no faster for a U-Net (diffrax's Runge-Kutta
      step loops over its stages itself; benchmarks/RESULTS.md): use `DPMSolver2M`
      or `EDMHeun` for networks. Needs a non-FSAL solver (Euler, Heun, ...).
    """

    steps: int = 64
    solver: dfx.AbstractSolver = dfx.Heun()
    host_loop: bool = False

    def __check_init__(self):
        check_positive_int("steps", self.steps)
        if not isinstance(self.solver, dfx.AbstractSolver):
            raise ValueError(f"solver: expected a diffrax solver, got {type(self.solver).__name__}")
        if not isinstance(self.host_loop, bool):
            raise ValueError(f"host_loop: expected a bool, got {self.host_loop!r}")
        if self.host_loop and getattr(getattr(self.solver, "tableau", None), "fsal", False):
            raise ValueError("solver: host_loop needs a non-FSAL solver (Euler, Heun, ...), got "
                             f"{type(self.solver).__name__}")

    def run(self, key, denoiser, sde, x1, *, progress=False):
        dt0 = (1.0 - float(sde.t_min)) / self.steps
        return _solve(denoiser, sde, x1, self.solver, dfx.ConstantStepSize(), dt0,
                      self.steps + 1, progress)

    def run_host(self, key, denoiser, sde, x1, *, progress=False):
        if not self.host_loop:
            return super().run_host(key, denoiser, sde, x1, progress=progress)
        us = jnp.linspace(-1.0, -float(sde.t_min), self.steps + 1)
        x = x1
        for i in range(self.steps):
            x = _ode_step(denoiser, sde, self.solver, x, us[i], us[i + 1])
        nfe = diffrax_nfe(self.solver, self.steps)
        return x / sde.scale(sde.t_min), jnp.asarray(nfe, jnp.int32)


@eqx.filter_jit
def _ode_step(denoiser, sde, solver, y, ta, tb):
    term = _term(denoiser, sde)
    state = solver.init(term, ta, tb, y, None)
    y1, _, _, _, _ = solver.step(term, ta, tb, y, None, state, False)
    return y1
