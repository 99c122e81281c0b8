"""The optimiser of MAP fits as a solver object, in the style of optimistix: `init`,
`step`, `terminate`, `postprocess`, all pure and traceable, so that `fit` runs them in a
jitted ``lax.while_loop`` and `fit_batch` vmaps the very same step over cutouts.

Three parts, each a PyTree:

- `FitProblem`: one cutout's data (scene, observations, source masks, per-entry step
  sizes): what `fit_batch` vmaps over;
- `Objective`: what is minimised, shared by every cutout: ``chi2 / 2`` plus the sparsity
  penalty and an optional morphology prior, on the parameters mapped through the
  constraints (`deconvjax.fit.constraints`);
- `AbstractFitSolver`, and its one member `AdamSolver`: how: Adam (``optax.scale_by_adam``), then `reduce_on_plateau` (below), then
  an optional half-life decay (``optax.scale_by_schedule``), then each entry's step size;
  after every step the morphologies are projected onto their constraints and the loop
  stops when no present source's parameters change by more than ``rtol`` (relative).

Every hyperparameter is data (an array), so fits with other settings run the same
compiled program.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from ..model import Scene, Source
from ..model.parametrisation import STEP_KINDS
from ..observation import Observation
from .constraints import Constraints, from_unconstrained, project, sparsity_penalty, to_unconstrained

#: Default Adam step sizes, in the unconstrained units of each parameter kind (see
#: `deconvjax.model.parametrisation.STEP_KINDS`). The steps of free-form scenes
#: (spectrum, centre, pixels) are three times scarlet2's quick-start ones: with
#: reduce-on-plateau shrinking them later, the larger start converges in fewer steps to a
#: lower chi2 (benchmarks/RESULTS.md, "Default step sizes").
DEFAULT_STEPS: dict[str, float] = {
    "spectrum": 0.15,
    "center": 0.06,
    "pixels": 0.3,
    "pixels_projection": 0.15,
    "size": 0.05,
    "n": 0.1,
    "shear": 0.05,
}
assert set(DEFAULT_STEPS) == set(STEP_KINDS)

#: Default relative loss improvement that resets the plateau counter, in units of the
#: convergence test's ``rtol`` (2e-3 for the default rtol of 1e-4; a fit asked to converge
#: more tightly is also more patient).
PLATEAU_RTOL = 20.0
#: Default factor of the steps at each plateau. Shrinking faster (0.3) reaches the
#: convergence test in fewer iterations at a larger flux error, and stalls high-S/N
#: free-form fits short of their chi2 (benchmarks/RESULTS.md).
PLATEAU_FACTOR = 0.5
#: Default patience once the steps have shrunk `LATE_AFTER` times (to 1/8 with the default
#: factor). By then the loss has long stopped moving by ``plateau_rtol`` and each shrink
#: only waits out the jitter of a step that is already small: a shorter wait converges in
#: fewer steps at the same chi2 and flux errors, where a short patience from the start
#: stops fits short of their chi2 (benchmarks/RESULTS.md).
LATE_PATIENCE = 2
LATE_AFTER = 3
#: Adam's first-moment decay. Less momentum than the usual 0.9 follows the jittery early
#: descent of free-form fits better; less still (0.5-0.7) amplifies float rounding, so
#: that a fit ends differently vmapped and alone (benchmarks/RESULTS.md).
ADAM_B1 = 0.8

MorphologyPrior = Callable[[Float[Array, "source band h w"]], Float[Array, ""]]


# ----------------------------------------------------------------------------------------
# Reduce on plateau, with a shorter patience late on
# ----------------------------------------------------------------------------------------


class PlateauState(NamedTuple):
    best: Float[Array, ""]
    stall: Int[Array, ""]
    scale: Float[Array, ""]


def reduce_on_plateau(
    factor, patience, rtol, late_patience, late_scale
) -> optax.GradientTransformationExtraArgs:
    """Scale updates by a factor that shrinks by ``factor`` whenever the loss (the
    ``value`` passed to ``update``) has not improved on its best by a relative ``rtol``
    for ``patience`` steps; once the factor is at or below ``late_scale``, after
    ``late_patience`` steps.

    ``optax.contrib.reduce_on_plateau`` does the first half; it has no second patience,
    its hyperparameters are compile-time constants (a fit with another patience would
    compile again) and it applies a shrink from the next step on. Here every
    hyperparameter may be an array, and the shrink applies to the update of the step that
    found the plateau. The best loss moves only on an improvement, so slow steady
    progress counts too. Adam moves every parameter by about its step size whatever the
    gradient: without the shrink it jitters around the optimum for ever."""

    def init(params):
        del params
        return PlateauState(
            best=jnp.asarray(jnp.inf, jnp.float32), stall=jnp.zeros((), jnp.int32), scale=jnp.ones((), jnp.float32)
        )

    def update(updates, state, params=None, *, value, **extra):
        del params, extra
        improved = value < state.best - rtol * jnp.abs(state.best)
        stall = jnp.where(improved, 0, state.stall + 1)
        wait = jnp.where(state.scale <= late_scale, late_patience, patience)
        plateau = stall >= wait
        scale = jnp.where(plateau, factor * state.scale, state.scale)
        stall = jnp.where(plateau, 0, stall)
        best = jnp.where(improved | ~jnp.isfinite(state.best), value, state.best)
        updates = jax.tree.map(lambda u: scale * u, updates)
        return updates, PlateauState(best=best, stall=stall, scale=scale)

    return optax.GradientTransformationExtraArgs(init, update)


# ----------------------------------------------------------------------------------------
# Problem and objective
# ----------------------------------------------------------------------------------------


class FitProblem(eqx.Module):
    """One cutout's fit, as data (`fit_batch` vmaps over it).

    - `scene`: the scene (its groups are the starting point).
    - `observations`: the observations fitted jointly.
    - `masks`: per group, ``(source,)`` 1 for present sources, 0 for padding.
    - `steps`: per group, the step size of every parameter entry (the group's tree;
      `group_step_sizes`).
    """

    scene: Scene
    observations: tuple[Observation, ...]
    masks: tuple[Float[Array, " source"], ...]
    steps: tuple[Source, ...]


class Objective(eqx.Module):
    """What a fit minimises: ``chi2 / 2`` over the observations, plus ``sparsity`` times
    each free-form morphology's sparsity measure and the morphology prior, of the
    parameters mapped through `constraints`."""

    sparsity: Float[Array, ""]
    constraints: Constraints = eqx.field(static=True)
    prior: MorphologyPrior | None = eqx.field(static=True)

    def __init__(self, constraints: Constraints | None = None, prior: MorphologyPrior | None = None):
        constraints = Constraints() if constraints is None else constraints
        if not isinstance(constraints, Constraints):
            raise TypeError(f"constraints must be a Constraints, got {type(constraints).__name__}")
        self.constraints = constraints
        self.prior = prior
        self.sparsity = np.asarray(constraints.sparsity, np.float32)

    def constrained(self, u: tuple[Source, ...], masks) -> tuple[Source, ...]:
        """The groups of unconstrained parameters ``u`` in constrained values, absent
        (padding) sources at zero flux: they neither render nor receive gradients."""
        groups = tuple(from_unconstrained(g, self.constraints) for g in u)
        return tuple(eqx.tree_at(lambda s: s.spectrum, g, g.spectrum * m[:, None]) for g, m in zip(groups, masks))

    def loss_and_groups(self, u: tuple[Source, ...], problem: FitProblem):
        """The loss at ``u``, and as auxiliaries the constrained groups it saw and the chi2."""
        groups = self.constrained(u, problem.masks)
        scene = eqx.tree_at(lambda s: s.groups, problem.scene, groups)
        model = scene.render()
        chi2 = sum(obs.chi2(model) for obs in problem.observations)
        loss = 0.5 * chi2
        for g in groups:
            if g.morphology.free_form:
                loss = loss + self.sparsity * sparsity_penalty(g)
                if self.prior is not None:
                    stamps = g.spectrum[:, :, None, None] * g.morphology.free_image()[:, None]
                    loss = loss + self.prior(stamps)
        return loss, (groups, chi2)

    def projected(self, u: tuple[Source, ...], *, full: bool) -> tuple[tuple[Source, ...], tuple[Source, ...]]:
        """The constrained groups of ``u`` projected onto the constraints, and their
        unconstrained values (free-form groups mapped back; profiles, which nothing
        projects, kept as they are, so their maps lose nothing)."""
        new = tuple(project(from_unconstrained(g, self.constraints), self.constraints, full=full) for g in u)
        back = tuple(
            to_unconstrained(c, self.constraints) if c.morphology.free_form else g for c, g in zip(new, u)
        )
        return new, back


def group_step_sizes(groups: tuple[Source, ...], steps: Mapping[str, Array], constraints: Constraints):
    """Per group, the step size of every entry (in unconstrained units), same tree as the
    group: the spectrum's and centre's from ``steps``, the morphology's from its own
    `step_sizes`."""
    out = []
    for g in groups:
        s = jax.tree.map(lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else x, g)
        s = eqx.tree_at(
            lambda t: (t.spectrum, t.center, t.morphology),
            s,
            (
                jnp.full_like(g.spectrum, steps["spectrum"]),
                jnp.full_like(g.center, steps["center"]),
                g.morphology.step_sizes(steps, constraints),
            ),
        )
        out.append(s)
    return tuple(out)


def count_parameters(steps: tuple[Source, ...], masks) -> Array:
    """The free parameters of a fit: the entries with a nonzero step, of present sources;
    per cutout where ``masks`` have a leading cutout axis. numpy or jax arrays alike."""
    n = 0
    for g, m in zip(steps, masks):
        for leaf in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array)):
            lead = np.ndim(m)
            per = (leaf.reshape(*np.shape(leaf)[:lead], -1) > 0).sum(axis=-1)
            n = n + (per * m).sum(axis=-1)
    return n


# ----------------------------------------------------------------------------------------
# The solver
# ----------------------------------------------------------------------------------------


class SolverState(eqx.Module):
    u: tuple[Source, ...]
    opt_state: optax.OptState
    moving: list
    step: Int[Array, ""]
    loss: Float[Array, ""]
    rel_change: Float[Array, ""]
    done: Bool[Array, ""]
    failed: Bool[Array, ""]


def _as_f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _as_i32(x) -> np.ndarray:
    return np.asarray(x, np.int32)


class AbstractFitSolver(eqx.Module):
    """What `fit` and `fit_batch` need of an optimiser: pure `init`, `step`,
    `terminate` and `postprocess` (run inside jit, vmapped over cutouts), and a step size
    (or parameter scale) per parameter kind, `steps`, from which each morphology gives
    every entry its own (`group_step_sizes`). Its hyperparameters should be arrays, so
    that other settings reuse the compiled program. A new optimiser is a final subclass:
    nothing else in `deconvjax.fit` changes."""

    steps: eqx.AbstractVar[dict[str, Float[Array, ""]]]

    @abc.abstractmethod
    def init(self, problem: FitProblem, objective: Objective) -> SolverState:
        """The starting state (unconstrained parameters, optimiser state)."""

    @abc.abstractmethod
    def step(self, state: SolverState, problem: FitProblem, objective: Objective) -> SolverState:
        """One step; keeps the last finite state and sets ``failed`` on a non-finite one."""

    @abc.abstractmethod
    def terminate(self, state: SolverState) -> Bool[Array, ""]:
        """Whether the fit has stopped."""

    @abc.abstractmethod
    def postprocess(self, state: SolverState, problem: FitProblem, objective: Objective):
        """``(groups, loss, chi2, n_valid)`` at ``state``: the constrained groups, exactly
        projected, and the loss, chi2 and number of valid pixels they give."""

    def without(self, *kinds: str):
        """This solver with the step sizes of ``kinds`` set to 0 (held fixed)."""
        unknown = set(kinds) - set(self.steps)
        if unknown:
            raise ValueError(f"kinds: unknown {sorted(unknown)}; known: {sorted(self.steps)}")
        steps = {k: (np.zeros((), np.float32) if k in kinds else v) for k, v in self.steps.items()}
        return eqx.tree_at(lambda s: s.steps, self, steps)


class AdamSolver(AbstractFitSolver):
    """Adam with per-parameter step sizes, reduce-on-plateau and a relative-change
    convergence test (scarlet2's criterion).

    **Arguments:**

    - `rtol`: converged when no present source's parameter leaf changes by more than
      ``rtol`` (``|new - old| / |old|``, constrained values) in a step.
    - `min_iter`: steps before the convergence test may stop the fit.
    - `learning_rate`: a factor on every step size.
    - `learning_rates`: per-kind overrides of `DEFAULT_STEPS` (``0`` fixes a kind).
    - `patience`: shrink the steps by ``plateau_factor`` whenever the loss has not
      improved by a relative ``plateau_rtol`` for ``patience`` steps (``None``: never, as
      scarlet2; Adam then jitters at its step size and rarely meets ``rtol``).
    - `plateau_rtol`: the relative improvement that counts as progress (default:
      `PLATEAU_RTOL` times ``rtol``).
    - `plateau_factor`: in ``(0, 1]``.
    - `late_patience`: the patience once the steps have shrunk `LATE_AFTER` times
      (``None``: ``patience`` throughout).
    - `halflife`: also halve the steps every ``halflife`` steps (``None``: no decay).
    - `b1`: Adam's first-moment decay.
    """

    rtol: Float[Array, ""]
    min_iter: Int[Array, ""]
    steps: dict[str, Float[Array, ""]]
    patience: Int[Array, ""]
    plateau_rtol: Float[Array, ""]
    plateau_factor: Float[Array, ""]
    late_patience: Int[Array, ""]
    late_scale: Float[Array, ""]
    halflife: Float[Array, ""]
    b1: Float[Array, ""]

    def __init__(
        self,
        *,
        rtol: float = 1e-4,
        min_iter: int = 10,
        learning_rate: float = 1.0,
        learning_rates: Mapping[str, float] | None = None,
        patience: int | None = 5,
        plateau_rtol: float | None = None,
        plateau_factor: float = PLATEAU_FACTOR,
        late_patience: int | None = LATE_PATIENCE,
        halflife: float | None = None,
        b1: float = ADAM_B1,
    ):
        if not float(rtol) >= 0:
            raise ValueError(f"rtol must be >= 0, got {rtol}")
        if int(min_iter) < 0:
            raise ValueError(f"min_iter must be >= 0, got {min_iter}")
        steps = dict(DEFAULT_STEPS)
        if learning_rates is not None:
            if not isinstance(learning_rates, Mapping):
                raise TypeError(f"learning_rates must be a mapping of parameter kind to step, got {learning_rates!r}")
            unknown = set(learning_rates) - set(steps)
            if unknown:
                raise ValueError(f"learning_rates: unknown kinds {sorted(unknown)}; known: {sorted(steps)}")
            steps.update({k: float(v) for k, v in learning_rates.items()})
        if not float(learning_rate) > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        bad = {k: v for k, v in steps.items() if not v >= 0}
        if bad:
            raise ValueError(f"learning_rates must be >= 0, got {bad}")
        if patience is None:
            patience = np.iinfo(np.int32).max
        if int(patience) < 1:
            raise ValueError(f"patience must be a positive int or None, got {patience}")
        if late_patience is None:
            late_patience = patience
        if int(late_patience) < 1:
            raise ValueError(f"late_patience must be a positive int or None, got {late_patience}")
        if plateau_rtol is None:
            plateau_rtol = PLATEAU_RTOL * float(rtol)
        if not float(plateau_rtol) >= 0:
            raise ValueError(f"plateau_rtol must be >= 0, got {plateau_rtol}")
        if not 0 < float(plateau_factor) <= 1:
            raise ValueError(f"plateau_factor must be in (0, 1], got {plateau_factor}")
        if halflife is not None and not float(halflife) > 0:
            raise ValueError(f"halflife must be positive or None, got {halflife}")
        if not 0 <= float(b1) < 1:
            raise ValueError(f"b1 must be in [0, 1), got {b1}")
        self.rtol = _as_f32(rtol)
        self.min_iter = _as_i32(min_iter)
        self.steps = {k: _as_f32(v * float(learning_rate)) for k, v in steps.items()}
        self.patience = _as_i32(patience)
        self.plateau_rtol = _as_f32(plateau_rtol)
        self.plateau_factor = _as_f32(plateau_factor)
        self.late_patience = _as_i32(min(int(late_patience), int(patience)))
        # Just above factor ** LATE_AFTER, so that float rounding of the products cannot
        # miss it (a factor of 1 never shrinks: the late patience then never applies).
        self.late_scale = _as_f32(float(plateau_factor) ** LATE_AFTER * (1 + 1e-4) if plateau_factor < 1 else 0.0)
        self.halflife = _as_f32(np.inf if halflife is None else halflife)
        self.b1 = _as_f32(b1)

    def _direction(self) -> optax.GradientTransformationExtraArgs:
        """Adam, then the plateau schedule, then the half-life decay: the update before
        each entry's step size (built from this solver's arrays, traced or not)."""
        return optax.chain(
            optax.scale_by_adam(b1=self.b1),
            reduce_on_plateau(self.plateau_factor, self.patience, self.plateau_rtol, self.late_patience, self.late_scale),
            optax.scale_by_schedule(lambda count: jnp.exp2(-count.astype(jnp.float32) / self.halflife)),
        )

    def init(self, problem: FitProblem, objective: Objective) -> SolverState:
        # The initial loss is left to the first step (which checks it is finite):
        # computing it here would compile the model a second time.
        u = tuple(to_unconstrained(g, objective.constraints) for g in problem.scene.groups)
        return SolverState(
            u=u,
            opt_state=self._direction().init(u),
            moving=_moving(problem.steps, problem.masks),
            step=jnp.zeros((), jnp.int32),
            loss=jnp.asarray(jnp.nan, dtype=jnp.float32),
            rel_change=jnp.asarray(jnp.inf, dtype=jnp.float32),
            done=jnp.asarray(False),
            failed=jnp.asarray(False),
        )

    def step(self, state: SolverState, problem: FitProblem, objective: Objective) -> SolverState:
        (loss, (old, _)), grads = jax.value_and_grad(objective.loss_and_groups, has_aux=True)(state.u, problem)
        grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
        direction, opt_state = self._direction().update(grads, state.opt_state, state.u, value=loss)
        u = jax.tree.map(lambda x, d, s: x - s * d, state.u, direction, problem.steps)
        # Inside the loop monotonicity is one inward sweep per step (`postprocess`
        # finishes it exactly).
        new, u = objective.projected(u, full=False)
        rel = _relative_change(old, new, state.moving)
        # `new` derives from every updated leaf (a NaN anywhere shows in it), and
        # non-finite gradients were zeroed, so the optimiser state stays finite.
        ok = jnp.isfinite(loss) & is_finite(new)
        step = state.step + 1
        converged = (rel < self.rtol) & (step >= self.min_iter)
        keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)  # noqa: E731
        return SolverState(
            u=keep(u, state.u),
            opt_state=keep(opt_state, state.opt_state),
            moving=state.moving,
            step=jnp.where(ok, step, state.step),
            loss=jnp.where(jnp.isfinite(loss), loss, state.loss),
            rel_change=jnp.where(ok, rel, state.rel_change),
            done=converged | ~ok,
            failed=~ok,
        )

    def terminate(self, state: SolverState) -> Bool[Array, ""]:
        """Whether the fit has stopped: converged, or met a non-finite loss or parameter."""
        return state.done

    def postprocess(self, state: SolverState, problem: FitProblem, objective: Objective):
        """The constrained groups, loss, chi2 and number of valid pixels at ``state``,
        the projections applied exactly (one render gives them all)."""
        _, u = objective.projected(state.u, full=True)
        loss, (groups, chi2) = objective.loss_and_groups(u, problem)
        n_valid = sum(obs.n_valid for obs in problem.observations)
        return groups, loss, chi2, n_valid


def run_steps(solver: AbstractFitSolver, state: SolverState, problem: FitProblem, objective: Objective,
              until: Int[Array, ""]) -> SolverState:
    """Step until the solver terminates or the state has taken ``until`` steps, in one
    ``lax.while_loop``."""
    return jax.lax.while_loop(
        lambda s: ~solver.terminate(s) & (s.step < until), lambda s: solver.step(s, problem, objective), state
    )


def _moving(steps, masks) -> list[Bool[Array, " source"]]:
    """Per parameter leaf (in `_relative_change`'s order), the sources present whose leaf
    the optimiser moves (a nonzero step somewhere). Constant over a fit."""
    out = []
    for g_s, m in zip(steps, masks):
        for s in jax.tree.leaves(eqx.filter(g_s, eqx.is_inexact_array)):
            out.append((jnp.max(jnp.abs(s.reshape(s.shape[0], -1)), axis=1) > 0) & (m > 0))
    return out


def _relative_change(old, new, moving) -> Float[Array, ""]:
    """max over sources and parameter leaves of ``|new - old| / |old|`` (constrained
    values), over the leaves that move and the sources present (`_moving`)."""
    rel = []
    leaves_o = [leaf for g in old for leaf in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array))]
    leaves_n = [leaf for g in new for leaf in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array))]
    for o, n_, mv in zip(leaves_o, leaves_n, moving):
        k = o.shape[0]
        dn = jnp.sqrt(jnp.sum((n_ - o).reshape(k, -1) ** 2, axis=1))
        on = jnp.sqrt(jnp.sum(o.reshape(k, -1) ** 2, axis=1))
        rel.append(jnp.where(mv, dn / jnp.maximum(on, 1e-12), 0.0))
    if not rel:
        return jnp.zeros(())
    return jnp.max(jnp.concatenate(rel))


def is_finite(tree) -> Bool[Array, ""]:
    """Whether every inexact array of ``tree`` is finite."""
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)

