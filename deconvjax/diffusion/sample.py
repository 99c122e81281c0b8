"""Reverse-time samplers through diffrax: reverse SDE and probability-flow ODE.

All samplers take any `AbstractDenoiser` (or any callable ``(x, sigma) -> x0 estimate``, the
posterior denoisers included) and any `AbstractSDE`; the score used at time ``t`` is

    score(x, t) = (s D(x / s, sigma) - x) / (s sigma)^2,   s = s(t), sigma = sigma(t).

Time is integrated in ``u = -t`` so that every diffrax solve, Brownian paths included, runs
forward from ``u = -1`` to ``u = -t_min``. Batches share one (adaptive) step-size sequence:
one batched network call per stage for the whole batch.

Methods
-------
``"pf_ode"``  probability-flow ODE, adaptive (Tsit5 by default, or Heun) with a PIDController;
``"ode_fixed"``  probability-flow ODE with a fixed step (Heun by default; Euler for tests);
``"sde"``     reverse SDE with Euler-Maruyama (strong order 0.5, weak order 1);
``"sde_shark"``  reverse SDE with diffrax's ShARK (additive noise: strong order 1.5, two
             network calls per step);
``"pc"``      Euler-Maruyama predictor + one Langevin corrector per step (Song et al. 2021),
             written as a `lax.scan` because the corrector is not an SDE step.

The number of function evaluations (NFE) returned counts calls of the (batched) denoiser per
trajectory, read off diffrax's step statistics: ``steps * (stages - fsal) + fsal``.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .sde import AbstractSDE

__all__ = ["sample", "reverse_drift", "score_at"]

_METHODS = ("pf_ode", "ode_fixed", "sde", "sde_shark", "pc")


def score_at(denoiser: Callable, sde: AbstractSDE, x: Float[Array, "batch ..."], t):
    """Batched score of the time-``t`` marginal from an unbatched VE denoiser."""
    s, sig = sde.scale(t), sde.sigma(t)
    sig = jnp.asarray(sig, dtype=x.dtype)
    d = jax.vmap(denoiser, in_axes=(0, None))(x / s, sig)
    return (s * d - x) / (s * sig) ** 2


def reverse_drift(denoiser, sde: AbstractSDE, x, t, ode: bool):
    """``f x - lambda g^2 score`` with ``lambda = 1/2`` for the PF-ODE, 1 for the reverse SDE."""
    lam = 0.5 if ode else 1.0
    return sde.drift(t, x) - lam * sde.diffusion(t) ** 2 * score_at(denoiser, sde, x, t)


def _nfe(solver, num_steps):
    tab = getattr(solver, "tableau", None)
    if isinstance(solver, (dfx.Euler, dfx.EulerHeun)) or tab is None:
        per, extra = 1, 0
        if isinstance(solver, dfx.ShARK | dfx.SRA1):
            per = 2
    elif hasattr(tab, "c") and hasattr(tab, "fsal"):
        stages = len(tab.c) + 1
        per, extra = stages - int(tab.fsal), int(tab.fsal)
    else:
        per, extra = 2, 0
    return num_steps * per + extra


def _solve_chunk(key, denoiser, sde, x1, method, steps, solver, rtol, atol, max_steps,
                 dt_min, snr, progress):
    t0, t1 = -1.0, -float(sde.t_min)
    args = None
    adjoint = dfx.RecursiveCheckpointAdjoint()
    if method in ("pf_ode", "ode_fixed"):
        term = dfx.ODETerm(lambda u, y, a: -reverse_drift(denoiser, sde, y, -u, ode=True))
        if method == "pf_ode":
            solver = dfx.Tsit5() if solver is None else solver
            controller = dfx.PIDController(rtol=rtol, atol=atol, pcoeff=0.0, icoeff=1.0,
                                           dtmin=dt_min)
            dt0 = (t1 - t0) / 32
        else:
            solver = dfx.Heun() if solver is None else solver
            controller = dfx.ConstantStepSize()
            dt0 = (t1 - t0) / steps
    elif method in ("sde", "sde_shark"):
        if solver is None:
            solver = dfx.Euler() if method == "sde" else dfx.ShARK()
        levy = dfx.SpaceTimeLevyArea if method == "sde_shark" else dfx.BrownianIncrement
        bm = dfx.UnsafeBrownianPath(shape=x1.shape, key=key, levy_area=levy)
        drift = dfx.ODETerm(lambda u, y, a: -reverse_drift(denoiser, sde, y, -u, ode=False))
        diff = dfx.ControlTerm(
            lambda u, y, a: lx.DiagonalLinearOperator(
                jnp.broadcast_to(sde.diffusion(-u).astype(y.dtype), y.shape)), bm)
        term = dfx.MultiTerm(drift, diff)
        controller = dfx.ConstantStepSize()
        dt0 = (t1 - t0) / steps
        # Samples are not differentiated through the Brownian path; ForwardMode is the
        # adjoint diffrax allows with UnsafeBrownianPath (cheaper than a virtual tree).
        adjoint = dfx.ForwardMode()
    else:
        raise AssertionError(method)
    meter = dfx.TqdmProgressMeter() if progress else dfx.NoProgressMeter()
    sol = dfx.diffeqsolve(term, solver, t0, t1, dt0, x1, args=args, saveat=dfx.SaveAt(t1=True),
                          stepsize_controller=controller, max_steps=max_steps,
                          progress_meter=meter, adjoint=adjoint)
    return sol.ys[0], _nfe(solver, sol.stats["num_steps"])


def _pc_chunk(key, denoiser, sde, x1, steps, snr):
    ts = jnp.linspace(1.0, sde.t_min, steps + 1)

    def body(x, inp):
        t, t_next, k = inp
        k1, k2 = jr.split(k)
        dt = t - t_next
        # Predictor: Euler-Maruyama step of the reverse SDE.
        x = x - reverse_drift(denoiser, sde, x, t, ode=False) * dt \
            + sde.diffusion(t) * jnp.sqrt(dt) * jr.normal(k1, x.shape, x.dtype)
        # Corrector: one Langevin step at t_next. The step is 2 (snr * s sigma)^2 (annealed
        # Langevin, Song & Ermon 2019) rather than Song et al.'s ratio of sampled norms,
        # which is unstable in low dimension where ||score|| can be near zero.
        g = score_at(denoiser, sde, x, t_next)
        z = jr.normal(k2, x.shape, x.dtype)
        eps = 2.0 * (snr * sde.scale(t_next) * sde.sigma(t_next)) ** 2
        x = x + eps * g + jnp.sqrt(2.0 * eps) * z
        return x, None

    keys = jr.split(key, steps)
    x, _ = jax.lax.scan(body, x1, (ts[:-1], ts[1:], keys))
    return x, jnp.asarray(2 * steps)


def sample(
    key: PRNGKeyArray,
    denoiser: Callable,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    n_samples: int,
    *,
    method: str = "pf_ode",
    steps: int = 64,
    solver: dfx.AbstractSolver | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_steps: int = 4096,
    dt_min: float | None = None,
    snr: float = 0.1,
    batch_size: int | None = None,
    final_denoise: bool = True,
    x_init: Float[Array, "n ..."] | None = None,
    progress: bool = False,
    host_loop: bool = False,
) -> tuple[Float[Array, "n ..."], Int[Array, ""]]:
    """Draw ``n_samples`` from the distribution whose denoiser is ``denoiser``.

    Args:
        key: PRNG key (reference Gaussian draw and Brownian motion).
        denoiser: unbatched ``D(x, sigma)`` on arrays of ``shape`` (any `AbstractDenoiser`).
        sde: the forward SDE whose reverse is integrated, from ``t = 1`` to ``sde.t_min``.
        shape: shape of one sample, e.g. ``(band, y, x)``.
        n_samples: number of samples.
        method: ``"pf_ode"`` (adaptive, default), ``"ode_fixed"``, ``"sde"``,
            ``"sde_shark"`` or ``"pc"`` (see module docstring).
        steps: number of steps for the fixed-step methods.
        solver: override the diffrax solver (e.g. ``diffrax.Heun()`` for ``"pf_ode"``,
            ``diffrax.Euler()`` for ``"ode_fixed"``).
        rtol, atol: tolerances of the PIDController for ``"pf_ode"``.
        batch_size: samples per batched solve (default: all at once). Chunks are solved one
            after the other; each chunk uses one batched network call per stage.
        final_denoise: apply ``D(x, sigma(t_min))`` at the end (Tweedie; one more NFE).
        x_init: optional starting points at ``t = 1`` (``n_samples`` of them) instead of
            draws from the reference Gaussian ``N(0, sde.prior_std()^2)``.
        progress: show a tqdm bar per chunk (diffrax's TqdmProgressMeter).
        host_loop: for ``"ode_fixed"`` only: call the diffrax solver's ``step`` from a
            Python loop (one jitted step per call) instead of diffrax's compiled while loop.
            Same result (checked to 1e-6). Meant for network denoisers on XLA:CPU, where a
            U-Net inside a while loop / scan ran much slower than called directly; its
            speed-up for sampling is not yet measured.

    Returns:
        ``(samples, nfe)``: samples of shape ``(n_samples, *shape)`` and the number of
        denoiser evaluations per trajectory (the largest over chunks).
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"sde: expected an AbstractSDE, got {type(sde).__name__}")
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples}")
    if int(steps) < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps}")
    shape = tuple(int(s) for s in shape)
    batch_size = n_samples if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    k_init, k_path = jr.split(key)
    if x_init is None:
        x_init = sde.prior_std() * jr.normal(k_init, (n_samples, *shape))
    elif x_init.shape != (n_samples, *shape):
        raise ValueError(f"x_init: expected shape {(n_samples, *shape)}, got {x_init.shape}")
    outs, nfes = [], []
    for i, start in enumerate(range(0, n_samples, batch_size)):
        x1 = x_init[start:start + batch_size]
        k = jr.fold_in(k_path, i)
        # steps, tolerances and snr are passed as arrays so that changing them does not
        # recompile (only "pc" needs a static step count, its scan length).
        st = int(steps) if method == "pc" else jnp.asarray(steps, jnp.float32)
        if host_loop and method == "ode_fixed":
            x, nfe = _host_ode_fixed(denoiser, sde, x1, int(steps), solver,
                                     bool(final_denoise))
            outs.append(x)
            nfes.append(nfe)
            continue
        if host_loop:
            raise ValueError(f"host_loop: only supported with method='ode_fixed', not {method!r}")
        x, nfe = _run(k, denoiser, sde, x1, method, st, solver, jnp.asarray(rtol),
                      jnp.asarray(atol), max(int(max_steps), int(steps) + 1), dt_min,
                      jnp.asarray(snr), bool(progress), bool(final_denoise))
        outs.append(x)
        nfes.append(nfe)
    return jnp.concatenate(outs, axis=0), jnp.max(jnp.stack(nfes))


@eqx.filter_jit
def _run(key, denoiser, sde, x1, method, steps, solver, rtol, atol, max_steps, dt_min, snr,
         progress, final_denoise):
    if method == "pc":
        x, nfe = _pc_chunk(key, denoiser, sde, x1, steps, snr)
    else:
        x, nfe = _solve_chunk(key, denoiser, sde, x1, method, steps, solver, rtol, atol,
                              max_steps, dt_min, snr, progress)
    if final_denoise:
        t = sde.t_min
        s, sig = sde.scale(t), jnp.asarray(sde.sigma(t), dtype=x.dtype)
        x = jax.vmap(denoiser, in_axes=(0, None))(x / s, sig)
        nfe = nfe + 1
    else:
        x = x / sde.scale(sde.t_min)
    return x, jnp.asarray(nfe, dtype=jnp.int32)


@eqx.filter_jit
def _ode_step(denoiser, sde, solver, y, ta, tb):
    term = dfx.ODETerm(lambda u, y, a: -reverse_drift(denoiser, sde, y, -u, ode=True))
    state = solver.init(term, ta, tb, y, None)
    y1, _, _, _, _ = solver.step(term, ta, tb, y, None, state, False)
    return y1


@eqx.filter_jit
def _final(denoiser, sde, x, final_denoise):
    t = sde.t_min
    if final_denoise:
        s, sig = sde.scale(t), jnp.asarray(sde.sigma(t), dtype=x.dtype)
        return jax.vmap(denoiser, in_axes=(0, None))(x / s, sig)
    return x / sde.scale(t)


def _host_ode_fixed(denoiser, sde, x1, steps, solver, final_denoise):
    solver = dfx.Heun() if solver is None else solver
    if getattr(getattr(solver, "tableau", None), "fsal", False):
        raise ValueError("solver: host_loop needs a non-FSAL solver (Euler, Heun, ...)")
    us = jnp.linspace(-1.0, -float(sde.t_min), steps + 1)
    x = x1
    for i in range(steps):
        x = _ode_step(denoiser, sde, solver, x, us[i], us[i + 1])
    x = _final(denoiser, sde, x, final_denoise)
    nfe = _nfe(solver, steps) + int(final_denoise)
    return x, jnp.asarray(nfe, jnp.int32)
