"""Reverse-time samplers through diffrax: reverse SDE and probability-flow ODE.

All samplers take any `AbstractDenoiser` (or any callable ``(x, sigma) -> x0 estimate``, the
posterior denoisers included) and any `AbstractSDE`; the score used at time ``t`` is

    score(x, t) = (s D(x / s, sigma) - x) / (s sigma)^2,   s = s(t), sigma = sigma(t).

Time is integrated in ``u = -t`` so that every diffrax solve, Brownian paths included, runs
forward from ``u = -1`` to ``u = -t_min``. Batches share one (adaptive) step-size sequence:
one batched network call per stage for the whole batch.

Methods
-------
``"edm"``     probability-flow ODE in VE coordinates on the EDM noise schedule
             (Karras et al. 2022, ``rho = 7``), Heun steps (``solver=diffrax.Euler()`` for
             Euler), optional EDM "churn" noise; stepped from a host-side Python loop, one
             jitted call per step (see "Speed" below). ``steps=18`` Heun steps = 37 NFE.
``"dpm2m"``   (default) DPM-Solver++(2M) (Lu et al. 2022) on the same schedule and host loop: a
             second-order multistep method with ONE network call per step (reuses the
             previous step's denoiser output): about as accurate per step as Heun at half
             the network calls (benchmarks/RESULTS.md).
``"pf_ode"``  probability-flow ODE, adaptive (Tsit5 by default, or Heun) with a PIDController;
``"ode_fixed"``  probability-flow ODE with a fixed step (Heun by default; Euler for tests);
``"sde"``     reverse SDE with Euler-Maruyama (strong order 0.5, weak order 1);
``"sde_shark"``  reverse SDE with diffrax's ShARK (additive noise: strong order 1.5, two
             network calls per step);
``"pc"``      Euler-Maruyama predictor + one Langevin corrector per step (Song et al. 2021),
             written as a `lax.scan` because the corrector is not an SDE step.

Speed
-----
On XLA:CPU a U-Net evaluated inside a compiled loop (diffrax's while loop, ``lax.scan``)
ran ~30x slower than the same batched evaluation called directly (measured here: 64x64,
batch 16, shipped network: 0.2 s per call directly, 5-6 s per iteration inside a scan).
``"edm"`` therefore keeps the loop on the host: each step is one `eqx.filter_jit` call
taking the denoiser as an argument, so its compiled code is cached by the denoiser's
structure (a new denoiser of the same structure, e.g. a posterior denoiser for new data,
does not recompile). Closing the weights over as compile-time constants was measured as
no faster on this machine (12.8 vs 13.6 ms per 64x64 image), so it is not done.
The diffrax methods remain for analytic denoisers, adaptive stepping and log-densities.

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
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .sde import AbstractSDE

__all__ = ["sample", "reverse_drift", "score_at", "edm_sigmas"]

_METHODS = ("edm", "dpm2m", "pf_ode", "ode_fixed", "sde", "sde_shark", "pc")
_DEFAULT_STEPS = {"edm": 18, "dpm2m": 48}
_HOST = ("edm", "dpm2m")


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
    method: str = "dpm2m",
    steps: int | None = None,
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
    rho: float = 7.0,
    churn: float = 0.0,
) -> tuple[Float[Array, "n ..."], Int[Array, ""]]:
    """Draw ``n_samples`` from the distribution whose denoiser is ``denoiser``.

    Args:
        key: PRNG key (reference Gaussian draw and Brownian motion).
        denoiser: unbatched ``D(x, sigma)`` on arrays of ``shape`` (any `AbstractDenoiser`).
        sde: the forward SDE whose reverse is integrated, from ``t = 1`` to ``sde.t_min``.
        shape: shape of one sample, e.g. ``(band, y, x)``.
        n_samples: number of samples.
        method: ``"dpm2m"`` (default) or ``"edm"``: fixed steps on the EDM schedule in a host
            loop, the fast choice for networks; ``"pf_ode"`` (adaptive diffrax), ``"ode_fixed"``,
            ``"sde"``, ``"sde_shark"`` or ``"pc"`` (see module docstring).
        steps: number of steps for the fixed-step methods (default 48 for ``"dpm2m"``: 49
            NFE; 18 for ``"edm"``: 37 NFE; 64 for the others).
        solver: override the diffrax solver (e.g. ``diffrax.Heun()`` for ``"pf_ode"``,
            ``diffrax.Euler()`` for ``"ode_fixed"``); for ``"edm"`` only ``diffrax.Heun()``
            (default) or ``diffrax.Euler()`` select the step.
        rtol, atol: tolerances of the PIDController for ``"pf_ode"``.
        batch_size: samples per batched solve (default: all at once). Chunks are solved one
            after the other; each chunk uses one batched network call per stage.
        final_denoise: apply ``D(x, sigma(t_min))`` at the end (Tweedie; one more NFE).
        x_init: optional starting points at ``t = 1`` (``n_samples`` of them) instead of
            draws from the reference Gaussian ``N(0, sde.prior_std()^2)``.
        progress: show a tqdm bar per chunk (diffrax's TqdmProgressMeter).
        host_loop: for ``"ode_fixed"`` only: call the diffrax solver's ``step`` from a
            Python loop (one jitted step per call) instead of diffrax's compiled while loop.
            Same result (checked to 1e-6), and no faster for a U-Net (diffrax's Runge-Kutta
            step itself loops over its stages; benchmarks/RESULTS.md); use
            ``method="dpm2m"`` or ``"edm"`` for networks.
        rho: ``"edm"`` only: exponent of the EDM noise schedule
            ``sigma_i = (sigma_max^(1/rho) + i/N (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.
        churn: ``"edm"`` only: EDM's ``S_churn`` (0 = deterministic PF-ODE). Each step first
            raises the noise level by ``gamma = min(churn / steps, sqrt(2) - 1)`` with fresh
            Gaussian noise (a stochastic sampler that forgets discretisation errors).

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
    steps = _DEFAULT_STEPS.get(method, 64) if steps is None else steps
    if int(steps) < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps}")
    if method in _HOST:
        if solver is not None and not isinstance(solver, dfx.Euler | dfx.Heun):
            raise ValueError(f"solver: method='edm' takes diffrax.Heun() or diffrax.Euler(), "
                             f"got {type(solver).__name__}")
        if not rho > 0:
            raise ValueError(f"rho: expected a positive float, got {rho}")
        if not churn >= 0:
            raise ValueError(f"churn: expected a non-negative float, got {churn}")
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
        if method in _HOST:
            x, nfe = _edm_chunk(k, denoiser, sde, x1, int(steps), solver, float(rho),
                                float(churn), bool(final_denoise), bool(progress),
                                method == "dpm2m")
            outs.append(x)
            nfes.append(nfe)
            continue
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


def edm_sigmas(sigma_max: float, sigma_min: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """EDM noise levels (Karras et al. 2022, eq. 5): ``steps + 1`` values, ``sigma_max`` first,
    ``sigma_min`` last, spaced uniformly in ``sigma^(1/rho)`` (dense at low noise)."""
    i = np.arange(int(steps) + 1) / int(steps)
    a, b = float(sigma_max) ** (1 / rho), float(sigma_min) ** (1 / rho)
    return (a + i * (b - a)) ** rho


@eqx.filter_jit
def _edm_step(denoiser, x, key, s_cur, s_hat, s_next, second_order, stochastic):
    den = jax.vmap(denoiser, in_axes=(0, None))
    if stochastic:
        x = x + jnp.sqrt(s_hat**2 - s_cur**2) * jr.normal(key, x.shape, x.dtype)
    # VE probability-flow ODE in sigma: dx/dsigma = (x - D(x, sigma)) / sigma.
    d0 = (x - den(x, s_hat)) / s_hat
    x1 = x + (s_next - s_hat) * d0
    if second_order:
        d1 = (x1 - den(x1, s_next)) / s_next
        x1 = x + (s_next - s_hat) * 0.5 * (d0 + d1)
    return x1


@eqx.filter_jit
def _edm_final(denoiser, x, sigma, final_denoise):
    if final_denoise:
        return jax.vmap(denoiser, in_axes=(0, None))(x, sigma)
    return x


@eqx.filter_jit
def _dpm_step(denoiser, x, d_prev, s_cur, s_next, w_prev):
    # DPM-Solver++(2M) with alpha = 1: the exact solution for a constant denoiser output is
    # x' = D + (s'/s)(x - D); the multistep correction extrapolates D linearly in log sigma.
    d = jax.vmap(denoiser, in_axes=(0, None))(x, s_cur)
    dd = (1.0 + w_prev) * d - w_prev * d_prev
    ratio = s_next / s_cur
    return ratio * x + (1.0 - ratio) * dd, d


def _edm_chunk(key, denoiser, sde, x1, steps, solver, rho, churn, final_denoise, progress,
               dpm=False):
    # In VE coordinates x~ = x / s(t) every SDE of EDM form has the same PF-ODE in sigma, so
    # the schedule runs from sigma(1) to sigma(t_min) whatever s(t) is.
    second = not isinstance(solver, dfx.Euler)
    sig = edm_sigmas(float(sde.sigma(1.0)), float(sde.sigma(sde.t_min)), steps, rho)
    gamma = min(churn / steps, np.sqrt(2.0) - 1.0) if churn > 0 else 0.0
    x = x1 / sde.scale(1.0)
    dtype = x.dtype
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"sample ({'dpm2m' if dpm else 'edm'})", unit="step")
    if dpm:
        if churn > 0:
            raise ValueError("churn: only supported with method='edm'")
        d_prev, h_prev = jnp.zeros_like(x), None
        for i in it:
            h = np.log(sig[i] / sig[i + 1])
            w = 0.0 if h_prev is None else h / (2.0 * h_prev)
            x, d_prev = _dpm_step(denoiser, x, d_prev, jnp.asarray(sig[i], dtype),
                                  jnp.asarray(sig[i + 1], dtype), jnp.asarray(w, dtype))
            h_prev = h
        x = _edm_final(denoiser, x, jnp.asarray(sig[-1], dtype), final_denoise)
        return x, jnp.asarray(steps + int(final_denoise), jnp.int32)
    for i in it:
        s_hat = sig[i] * (1.0 + gamma)
        x = _edm_step(denoiser, x, jr.fold_in(key, i), jnp.asarray(sig[i], dtype),
                      jnp.asarray(s_hat, dtype), jnp.asarray(sig[i + 1], dtype), second,
                      bool(gamma > 0))
    x = _edm_final(denoiser, x, jnp.asarray(sig[-1], dtype), final_denoise)
    nfe = steps * (2 if second else 1) + int(final_denoise)
    return x, jnp.asarray(nfe, jnp.int32)
