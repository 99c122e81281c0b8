"""The interface every sampler implements, and what the samplers share.

A sampler is a small, immutable `equinox.Module` that holds its options (steps, tolerances,
solver, noise) and nothing else. It integrates the reverse diffusion from ``t = 1`` to
``sde.t_min`` for a batch of starting points; `deconvjax.diffusion.samplers.sample` draws the
starting points, chunks the batch, and applies the final (Tweedie) denoising step, so that
each sampler only implements the integration itself.

Two forms of one sampler
------------------------
- `AbstractSampler.run` is pure JAX: it may be called inside ``jit``, ``vmap`` or ``grad``
  (``sample(..., traceable=True)``), e.g. to draw posterior samples for a batch of objects
  inside one compiled program.
- `AbstractSampler.run_host` is what ``sample`` calls by default. Unless a sampler says
  otherwise it is one compiled call of ``run``. The fixed-step samplers
  (`AbstractStepSampler`) instead step from a Python loop, one compiled call per step: on
  XLA:CPU a U-Net evaluated inside a compiled loop (``lax.scan``, diffrax's while loop) ran
  ~30x slower than the same batched call made directly (benchmarks/RESULTS.md), and each
  step's compiled code is cached on the denoiser's structure, so a new denoiser of the same
  structure (a posterior denoiser for new data) does not recompile.

Both forms of an `AbstractStepSampler` call the same step function with the same per-step
inputs and keys, so they agree to float rounding.

Coordinates
-----------
Starting points are in the SDE's coordinates at ``t = 1`` (``x_t = s(t) (x_0 + sigma(t) z)``);
every sampler returns the sample at ``t_min`` in VE coordinates ``x / s(t_min)``, i.e. the
clean image plus noise of standard deviation ``sigma(t_min)``. The score at time ``t`` is

    score(x, t) = (s D(x / s, sigma) - x) / (s sigma)^2,   s = s(t), sigma = sigma(t).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ..sde import AbstractSDE

__all__ = ["AbstractSampler", "AbstractStepSampler", "AbstractStep", "score_at", "reverse_drift",
           "edm_sigmas", "diffrax_nfe", "check_positive_int", "check_unroll", "check_schedule"]


def score_at(denoiser: Callable, sde: AbstractSDE, x: Float[Array, "batch ..."],
             t) -> Float[Array, "batch ..."]:
    """Batched score of the time-``t`` marginal from an unbatched VE denoiser."""
    s, sig = sde.scale(t), sde.sigma(t)
    sig = jnp.asarray(sig, dtype=x.dtype)
    d = jax.vmap(denoiser, in_axes=(0, None))(x / s, sig)
    return (s * d - x) / (s * sig) ** 2


def reverse_drift(denoiser: Callable, sde: AbstractSDE, x: Float[Array, "batch ..."], t,
                  ode: bool) -> Float[Array, "batch ..."]:
    """``f x - lambda g^2 score`` with ``lambda = 1/2`` for the PF-ODE, 1 for the reverse SDE."""
    lam = 0.5 if ode else 1.0
    return sde.drift(t, x) - lam * sde.diffusion(t) ** 2 * score_at(denoiser, sde, x, t)


def edm_sigmas(sigma_max, sigma_min, steps: int, rho: float = 7.0) -> Float[Array, " steps+1"]:
    """EDM noise levels (Karras et al. 2022, eq. 5): ``steps + 1`` values, ``sigma_max`` first,
    ``sigma_min`` last, spaced uniformly in ``sigma^(1/rho)`` (dense at low noise).

    Traceable (``sigma_max``, ``sigma_min`` may be traced values); ``steps`` is static."""
    i = jnp.arange(int(steps) + 1, dtype=jnp.float32) / int(steps)
    a, b = jnp.asarray(sigma_max) ** (1 / rho), jnp.asarray(sigma_min) ** (1 / rho)
    return (a + i * (b - a)) ** rho


def diffrax_nfe(solver: dfx.AbstractSolver, num_steps):
    """Denoiser calls per trajectory of a diffrax solve: ``steps * (stages - fsal) + fsal``."""
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


def check_positive_int(name: str, value) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a positive (non-bool) integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")


def check_unroll(value) -> None:
    """``ValueError`` naming ``unroll`` unless it is a bool or a positive integer."""
    if not (isinstance(value, bool) or (isinstance(value, int) and value >= 1)):
        raise ValueError(f"unroll: expected True, False or a positive integer, got {value!r}")


def check_schedule(steps, rho, unroll) -> None:
    """The checks every sampler on the EDM schedule shares: ``steps`` a positive integer,
    ``rho`` a positive number, ``unroll`` as `check_unroll`; errors name the field."""
    check_positive_int("steps", steps)
    if not (isinstance(rho, int | float) and rho > 0):
        raise ValueError(f"rho: expected a positive float, got {rho!r}")
    check_unroll(unroll)


class AbstractSampler(eqx.Module):
    """A reverse-diffusion sampler: its options as fields, the integration as `run`.

    To add a sampler, write one file with a final subclass that holds its options as fields
    (with defaults, validated in ``__check_init__`` with errors naming the field) and
    implements `run`; override `run_host` only when a host-side loop is faster. Fixed-step
    samplers subclass `AbstractStepSampler` instead and implement its ``plan``, ``stepper``
    and ``nfe``: both forms then come for free. Export the class from
    ``deconvjax/diffusion/samplers/__init__.py`` (and add a CLI name in ``names.py`` if the
    command line should offer it).
    """

    @abc.abstractmethod
    def run(self, key: PRNGKeyArray, denoiser: Callable, sde: AbstractSDE,
            x1: Float[Array, "batch ..."], *, progress: bool = False
            ) -> tuple[Float[Array, "batch ..."], Int[Array, ""]]:
        """Integrate from ``x1`` at ``t = 1`` (SDE coordinates) to ``sde.t_min``; pure JAX.

        Returns the batch at ``t_min`` in VE coordinates (``x / s(t_min)``, before any final
        denoising) and the number of (batched) denoiser calls per trajectory."""

    def run_host(self, key: PRNGKeyArray, denoiser: Callable, sde: AbstractSDE,
                 x1: Float[Array, "batch ..."], *, progress: bool = False
                 ) -> tuple[Float[Array, "batch ..."], Int[Array, ""]]:
        """`run` as ``sample`` calls it outside a trace: one compiled call by default."""
        return _jit_run(self, key, denoiser, sde, x1, progress)


@eqx.filter_jit
def _jit_run(sampler, key, denoiser, sde, x1, progress):
    x, nfe = sampler.run(key, denoiser, sde, x1, progress=progress)
    return x, jnp.asarray(nfe, jnp.int32)


class AbstractStep(eqx.Module):
    """One step of a fixed-step sampler. Holds only what changes the compiled code (e.g.
    whether a step adds noise); every number that varies with the options (noise levels,
    weights) comes in through ``inp``, so that new options do not recompile the step."""

    @abc.abstractmethod
    def init(self, sde: AbstractSDE, x1: Float[Array, "batch ..."]) -> PyTree:
        """The loop's carry at ``t = 1`` from SDE-coordinate starting points."""

    @abc.abstractmethod
    def __call__(self, denoiser: Callable, sde: AbstractSDE, carry: PyTree, key: PRNGKeyArray,
                 inp: PyTree) -> PyTree:
        """One step: the carry after the step, from this step's inputs ``inp``."""

    @abc.abstractmethod
    def output(self, sde: AbstractSDE, carry: PyTree) -> Float[Array, "batch ..."]:
        """The batch at ``t_min`` in VE coordinates from the final carry."""


class AbstractStepSampler(AbstractSampler):
    """A sampler of ``steps`` fixed steps: a scan (`run`) and a host loop (`run_host`) over
    the same `AbstractStep`, per-step inputs (`plan`) and keys (``fold_in(key, i)``).

    ``unroll`` is passed to ``lax.scan`` in `run`: ``True`` unrolls the loop into straight-line
    code, which XLA:CPU ran much faster for a U-Net than a rolled loop, at a compile time
    that grows with the step count."""

    steps: eqx.AbstractVar[int]
    unroll: eqx.AbstractVar[int | bool]

    @abc.abstractmethod
    def plan(self, sde: AbstractSDE) -> PyTree[Float[Array, "steps ..."]]:
        """Per-step inputs (leading axis ``steps``), traceable."""

    @abc.abstractmethod
    def stepper(self) -> AbstractStep:
        """The step function."""

    @abc.abstractmethod
    def nfe(self) -> int:
        """Denoiser calls per trajectory."""

    def _keys(self, key):
        return jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(self.steps))

    def run(self, key, denoiser, sde, x1, *, progress=False):
        step, inputs = self.stepper(), self.plan(sde)

        def body(carry, ki):
            k, inp = ki
            return step(denoiser, sde, carry, k, inp), None

        carry, _ = jax.lax.scan(body, step.init(sde, x1), (self._keys(key), inputs),
                                unroll=self.unroll)
        return step.output(sde, carry), jnp.asarray(self.nfe(), jnp.int32)

    def run_host(self, key, denoiser, sde, x1, *, progress=False):
        step, inputs, keys = self.stepper(), self.plan(sde), self._keys(key)
        carry = step.init(sde, x1)
        it: Any = range(self.steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"sample ({type(self).__name__})", unit="step")
        for i in it:
            inp = jax.tree.map(lambda a: a[i], inputs)
            carry = _host_step(step, denoiser, sde, carry, keys[i], inp)
        return step.output(sde, carry), jnp.asarray(self.nfe(), jnp.int32)


@eqx.filter_jit
def _host_step(step, denoiser, sde, carry, key, inp):
    return step(denoiser, sde, carry, key, inp)
