"""MAP fitting of one scene: the solver (`deconvjax.fit.solver`) run inside jit in
chunks of ``lax.while_loop`` steps.

The host touches the device only between chunks (every ``chunk`` steps): to move a
progress bar and log the loss. The same compiled chunk serves every scene and data of the
same shapes, and every solver setting (they are data), and `deconvjax.fit.fit_batch`
vmaps the very same step over many cutouts.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Int

from .._jit import CountingJit
from ..model import Scene
from ..observation import Observation, as_observations
from .constraints import Constraints
from .quality import fit_quality
from .slots import PaddedScene
from .solver import (
    AbstractFitSolver,
    AdamSolver,
    FitProblem,
    MorphologyPrior,
    Objective,
    SolverState,
    count_parameters,
    group_step_sizes,
    run_steps,
)


@dataclasses.dataclass
class FitResult:
    """What a fit did. For batched fits every field is an array over cutouts.

    **Attributes:**

    - `iterations`: optimiser steps taken.
    - `converged`: the relative change of every source's parameters fell below ``rtol``.
    - `failed`: a non-finite loss or parameter was met; the scene returned is the last
      finite one (fits never return NaN silently).
    - `loss`: final loss, ``chi2 / 2`` plus penalties.
    - `chi2_per_pixel`: final chi2 over the unmasked pixels.
    - `chi2_per_dof`: reduced chi2, over ``n_valid - n_eff`` (`n_eff`: the effective
      number of parameters, `deconvjax.fit.quality.effective_parameters`).
    - `n_params`: free parameters; `n_eff`: effective parameters.
    - `frac_beyond_3sigma`: share of unmasked pixels whose residual exceeds 3 sigma
      (NaN where not measured: batched fits).
    - `reached_noise`: the model explains the data down to the noise
      (`deconvjax.fit.quality`); a fit can converge without it.
    - `loss_history`: ``(step, loss)`` pairs logged every chunk.
    - `wall_time`: seconds, compile included.
    """

    iterations: int | np.ndarray
    converged: bool | np.ndarray
    failed: bool | np.ndarray
    loss: float | np.ndarray
    chi2_per_dof: float | np.ndarray
    n_params: int | np.ndarray
    chi2_per_pixel: float | np.ndarray = float("nan")
    n_eff: float | np.ndarray = float("nan")
    frac_beyond_3sigma: float | np.ndarray = float("nan")
    reached_noise: bool | np.ndarray = False
    loss_history: list = dataclasses.field(default_factory=list)
    wall_time: float = 0.0

    def _repr_png_(self) -> bytes:
        """Jupyter's picture of the fit: its loss history (`deconvjax.plot.plot_fit`)."""
        from ..plot import figure_png, plot_fit

        return figure_png(plot_fit(self))


def _run_impl(solver: AbstractFitSolver, state: SolverState, problem: FitProblem, objective: Objective,
              until: Int[Array, ""]):
    """Up to ``until`` steps; also the solver's outputs at the state reached (one compiled
    function serves both)."""
    state = run_steps(solver, state, problem, objective, until)
    return state, solver.postprocess(state, problem, objective)


_init = CountingJit(lambda solver, problem, objective: solver.init(problem, objective))
_run = CountingJit(_run_impl)
_steps_of = eqx.filter_jit(group_step_sizes)


def compilation_count() -> int:
    """How many times the compiled fitting loop has been compiled in this process (for
    tests: a second fit of the same shapes must not add to it)."""
    return _run.traces + _init.traces


def check_observations(scene: Scene, observations) -> tuple[Observation, ...]:
    """``observations`` as a non-empty tuple of observations of ``scene``'s frame."""
    observations = as_observations(observations)
    if not observations:
        raise ValueError("observations must hold at least one Observation")
    for i, o in enumerate(observations):
        if o.frame_shape != scene.shape[1:]:
            raise ValueError(
                f"observations[{i}] was built for a frame of shape {o.frame_shape}, the scene's is {scene.shape[1:]}"
            )
    return observations


def check_run(solver, max_iter, chunk) -> AbstractFitSolver:
    """The solver (default: `AdamSolver()`), after checking the run's budget."""
    solver = AdamSolver() if solver is None else solver
    if not isinstance(solver, AbstractFitSolver):
        raise TypeError(f"solver must be an AbstractFitSolver such as AdamSolver(), got {type(solver).__name__}")
    if int(max_iter) < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return solver


def _masks_for(scene: Scene, source_mask) -> tuple[Array, ...]:
    # numpy (jit takes it as a traced input): jnp.ones would compile a program of its own.
    if source_mask is None:
        return tuple(np.ones(len(o), np.float32) for o in scene.order)
    m = np.asarray(source_mask)
    if m.shape != (scene.n_sources,):
        raise ValueError(f"source_mask must be ({scene.n_sources},) bool, got shape {m.shape}")
    return tuple(m[np.asarray(o)].astype(np.float32) for o in scene.order)


def _all_finite(tree) -> bool:
    """Whether every inexact array of ``tree`` is finite, checked on the host (`is_finite`
    outside jit would compile a program per leaf shape)."""
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array)))


def run_in_chunks(advance, state, max_iter: int, chunk: int, desc: str, progress: bool):
    """Drive a compiled loop from the host ``chunk`` steps at a time, with a tqdm bar and
    a loss log, until every fit in ``state`` is done, ``max_iter`` steps are taken or a
    chunk makes no progress. ``advance(state, until)`` runs up to step ``until`` and
    returns ``(state, (groups, loss, chi2, n_valid))``; ``state.step`` and ``loss`` may
    have a leading cutout axis (the log then holds the mean loss). Returns the final
    state, outputs and ``(step, loss)`` log."""
    from tqdm.auto import tqdm

    history = []
    with tqdm(total=int(max_iter), desc=desc, disable=not progress, leave=False) as bar:
        step = 0
        while True:
            until = min(step + int(chunk), int(max_iter))
            state, outputs = advance(state, np.int32(until))  # numpy: no conversion program
            new_step = int(np.max(np.asarray(state.step)))
            loss = float(np.mean(np.asarray(outputs[1])))
            bar.update(new_step - step)
            bar.set_postfix(loss=f"{loss:.6g}", change=f"{float(np.max(np.asarray(state.rel_change))):.2e}")
            history.append((new_step, loss))
            if bool(np.all(np.asarray(state.done))) or new_step >= max_iter or new_step == step:
                return state, outputs, history
            step = new_step


def fit(
    scene: Scene | PaddedScene,
    observations: Observation | Sequence[Observation],
    solver: AbstractFitSolver | None = None,
    *,
    max_iter: int = 300,
    constraints: Constraints | None = None,
    fit_centers: bool = True,
    morphology_prior: MorphologyPrior | None = None,
    source_mask: Bool[ArrayLike, " source"] | None = None,
    chunk: int = 25,
    progress: bool = True,
    key: Array | None = None,
) -> tuple[Scene | PaddedScene, FitResult]:
    """Fit a scene to one or several observations (MAP / maximum likelihood).

    Minimises ``chi2 / 2`` over all observations (plus the sparsity penalty and the
    morphology prior, if given) with ``solver`` (default `AdamSolver()`: Adam, each
    parameter kind with its own step size, in the unconstrained space of each morphology's
    parametrisation). The loop runs inside jit, ``chunk`` steps per call, until the
    solver terminates or after ``max_iter`` steps.

    **Arguments:**

    - `scene`: the initial `Scene` (e.g. from `init_scene`), or a `PaddedScene` (spare
      source slots and an active mask, `deconvjax.fit.slots`): a `PaddedScene` is then
      returned, and adding or removing sources between fits compiles nothing.
    - `observations`: an `Observation` or a sequence of them (multi-band, multi-epoch,
      multi-resolution: all are fitted jointly).
    - `solver`: an `AbstractFitSolver` (default `AdamSolver()`: convergence test, step
      sizes, plateau schedule).
    - `max_iter`: the most steps.
    - `constraints`: a `Constraints` (positivity, symmetry, monotonicity, sparsity).
    - `fit_centers`: also fit source centres.
    - `morphology_prior`: optional penalty (negative log-prior, added to the loss) of the
      free-form sources' ``(source, band, h, w)`` stamps (all sources in one call), e.g.
      ``lambda m: deconvjax.diffusion.prior_score_penalty(prior, m, weight, sigma)``. A
      score penalty has value 0 (only its gradient acts), so the loss that the plateau
      schedule watches is then the likelihood alone.
    - `source_mask`: ``(n_source,)`` bool, False for padding sources (zero flux, not fitted).
    - `chunk`: the host is touched (progress bar, loss log) every ``chunk`` steps.
    - `progress`: show a tqdm bar.
    - `key`: unused by this deterministic optimiser; accepted for a uniform API.

    **Returns:** ``(fitted_scene, FitResult)``.
    """
    del key
    t0 = time.perf_counter()
    padded = scene if isinstance(scene, PaddedScene) else None
    if padded is not None:
        if source_mask is not None:
            raise ValueError("source_mask: a PaddedScene carries its own mask (its active slots); leave it None")
        scene, source_mask = padded.scene, padded.active
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    observations = check_observations(scene, observations)
    solver = check_run(solver, max_iter, chunk)
    if not fit_centers:
        solver = solver.without("center")
    objective = Objective(constraints, morphology_prior)
    if not _all_finite(scene.groups):
        raise ValueError("scene has NaN or inf parameters")
    masks = _masks_for(scene, source_mask)
    steps = _steps_of(scene.groups, solver.steps, objective.constraints)
    problem = FitProblem(scene=scene, observations=observations, masks=masks, steps=steps)
    state = _init(solver, problem, objective)
    state, (groups, loss, chi2, n_valid), history = run_in_chunks(
        lambda st, until: _run(solver, st, problem, objective, until), state, max_iter, chunk, "fit", progress
    )
    # On the host: the same count with jax arrays compiles a handful of eager programs.
    n_params = int(count_parameters(jax.tree.map(np.asarray, steps), [np.asarray(m) for m in masks]))
    failed = bool(state.failed)
    if failed:
        warnings.warn(
            f"fit met a non-finite loss or parameter after {int(state.step)} steps; "
            "returning the last finite scene (FitResult.failed is True)",
            RuntimeWarning,
            stacklevel=2,
        )
    fitted = eqx.tree_at(lambda s: s.groups, scene, groups)
    quality = fit_quality(fitted, observations, n_params, symmetric=objective.constraints.symmetric, warn=not failed)
    result = FitResult(
        iterations=int(state.step),
        converged=bool(state.done) and not failed,
        failed=failed,
        loss=float(loss),
        chi2_per_dof=quality.chi2_per_dof,
        n_params=n_params,
        chi2_per_pixel=quality.chi2_per_pixel,
        n_eff=quality.n_eff,
        frac_beyond_3sigma=quality.frac_beyond_3sigma,
        reached_noise=quality.reached_noise,
        loss_history=history,
        wall_time=time.perf_counter() - t0,
    )
    return (fitted if padded is None else padded.replace(fitted)), result
