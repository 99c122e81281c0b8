"""Log-density of a diffusion prior through the probability-flow ODE (Song et al. 2021).

Along the PF-ODE ``dx/dt = v(x, t) = f x - g^2 score / 2`` the log-density obeys
``d log p_t(x_t) / dt = -div v``, so

    log p_{t_min}(x) = log N(x_1; 0, prior_std^2 I) + int_{t_min}^{1} div v(x_t, t) dt,

integrated forward from the data point. The divergence is Hutchinson's estimator
``E_z[z^T (dv/dx) z]`` with Rademacher probes fixed along the trajectory (one JVP per probe),
or the exact trace (one JVP per dimension; small problems and tests only).
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .samplers.base import diffrax_nfe, reverse_drift
from .sde import AbstractSDE

__all__ = ["log_prob"]


def log_prob(
    key: PRNGKeyArray,
    denoiser: Callable,
    sde: AbstractSDE,
    x: Float[Array, "n ..."],
    *,
    n_probes: int = 1,
    exact_trace: bool = False,
    solver: dfx.AbstractSolver | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    max_steps: int = 4096,
) -> tuple[Float[Array, " n"], Int[Array, ""]]:
    """Log-density ``log p_{t_min}(x)`` of each of a batch of points ``x`` (nats).

    **Arguments:**

    - `key`: PRNG key for the Hutchinson probes.
    - `denoiser`: unbatched ``D(x, sigma)``.
    - `sde`: the forward SDE (its reference Gaussian at ``t = 1`` closes the integral).
    - `x`: batch of points, shape ``(n, *shape)``.
    - `n_probes`: Rademacher probes per point (the estimate's variance falls as 1/n_probes).
    - `exact_trace`: use the exact Jacobian trace instead (cost grows with the dimension).
      solver, rtol, atol: diffrax solver (default Tsit5) and PIDController tolerances.

    **Returns:**

    ``(logp, nfe)``: log-densities of shape ``(n,)`` and the number of solver steps'
    vector-field evaluations (each one is ``n_probes`` JVPs or ``dim`` for exact trace).
    """
    if x.ndim < 2:
        raise ValueError(f"x: expected a batch of shape (n, *shape), got shape {x.shape}")
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"sde: expected an AbstractSDE, got {type(sde).__name__}")
    if int(n_probes) < 1:
        raise ValueError(f"n_probes: expected a positive integer, got {n_probes}")
    return _log_prob(key, denoiser, sde, x, int(n_probes), bool(exact_trace), solver, rtol,
                     atol, int(max_steps))


@eqx.filter_jit
def _log_prob(key, denoiser, sde, x, n_probes, exact_trace, solver, rtol, atol, max_steps):
    n = x.shape[0]
    dim = x[0].size
    if exact_trace:
        probes = jnp.stack([jnp.broadcast_to(e.reshape(x.shape[1:]), x.shape)
                            for e in jnp.eye(dim, dtype=x.dtype)])
    else:
        probes = jr.rademacher(key, (n_probes, *x.shape), dtype=x.dtype)

    def vf(t, state, args):
        y, _ = state
        f = lambda z: reverse_drift(denoiser, sde, z, t, ode=True)
        v, jz = jax.vmap(lambda z: jax.jvp(f, (y,), (z,)), out_axes=(None, 0))(probes)
        axes = tuple(range(2, jz.ndim))
        quad = jnp.sum(jz * probes, axis=axes)  # (probe, n)
        div = jnp.sum(quad, axis=0) if exact_trace else jnp.mean(quad, axis=0)
        return v, div

    solver = dfx.Tsit5() if solver is None else solver
    t0, t1 = float(sde.t_min), 1.0
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vf), solver, t0, t1, (t1 - t0) / 32,
        (sde.scale(t0) * x, jnp.zeros(n, x.dtype)),
        saveat=dfx.SaveAt(t1=True),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
    )
    x1, delta = sol.ys[0][0], sol.ys[1][0]
    std = sde.prior_std()
    axes = tuple(range(1, x.ndim))
    logp1 = -0.5 * jnp.sum((x1 / std) ** 2, axis=axes) - dim * jnp.log(std * jnp.sqrt(2 * jnp.pi))
    # Density of the VE-unit variable x_t / s at x: Jacobian s^dim of x -> s x.
    logp = logp1 + delta + dim * jnp.log(sde.scale(t0))
    return logp, jnp.asarray(diffrax_nfe(solver, sol.stats["num_steps"]), jnp.int32)
