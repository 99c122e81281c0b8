"""MAP fitting: Adam with per-parameter step sizes, run inside jit in chunks of
``lax.while_loop`` steps, with a relative-change convergence test.

The host touches the device only between chunks (every ``chunk`` steps): to move a
progress bar and log the loss. The same compiled chunk serves every scene and data of the
same shapes (no recompilation), and `deconvjax.fit.fit_batch` vmaps the very same step
over many cutouts.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, Int

from ..model import GaussianMorphology, PixelMorphology, Scene, SersicMorphology, Source, StructuredMorphology
from ..observation import Observation, as_observations
from .constraints import (
    Constraints,
    free_form_image,
    from_unconstrained,
    project,
    sparsity_penalty,
    to_unconstrained,
)
from .quality import fit_quality

#: Default Adam step sizes, in the unconstrained units of each parameter kind:
#: ``spectrum`` and ``pixels`` (log) and ``size`` (log sigma, log r_e) are relative steps,
#: ``center`` is in model pixels, ``pixels_projection`` is a fraction of each source's
#: brightest pixel, ``n`` is logistic, ``shear`` is in arctanh units of |g|. The steps of
#: free-form scenes (spectrum, centre, pixels) are three times scarlet2's quick-start ones:
#: with reduce-on-plateau shrinking them later, the larger start converges in fewer steps
#: to a lower chi2 (figures: benchmarks/RESULTS.md, "Default step sizes").
DEFAULT_STEPS: dict[str, float] = {
    "spectrum": 0.15,
    "center": 0.06,
    "pixels": 0.3,
    "pixels_projection": 0.15,
    "size": 0.05,
    "n": 0.1,
    "shear": 0.05,
}

#: Default relative loss improvement that resets the plateau counter (see `fit`'s
#: ``patience``), in units of the convergence test's ``rtol``: smaller gains for
#: ``patience`` steps shrink the steps (2e-3 for the default rtol of 1e-4; a fit asked to
#: converge more tightly is also more patient).
PLATEAU_RTOL = 20.0
#: Default factor of the steps at each plateau. Shrinking faster (0.3) reaches the
#: convergence test in 20-30% fewer iterations on the benchmark's blends and cutouts at a
#: ~10% larger flux error, but stalls high-S/N free-form fits short of their chi2.
PLATEAU_FACTOR = 0.5
#: Default patience once the steps have shrunk `LATE_AFTER` times (to 1/8 with the default
#: factor). By then the loss has long stopped moving by ``plateau_rtol`` and each shrink
#: only waits out the jitter of a step that is already small; the shorter wait cut the
#: steps to converge by ~15% on the benchmark's cutouts and blends at the same chi2 and
#: flux errors (a short patience from the start, instead, stops fits short of their chi2:
#: patience 2 throughout raised the blends' median flux error from 0.076 to 0.112).
LATE_PATIENCE = 2
LATE_AFTER = 3
#: Adam's first-moment decay. Less momentum than the usual 0.9 follows the jittery early
#: descent of free-form fits better. On the benchmark's 256 cutouts (1-4 galaxies) and
#: 100 blends (2-6), with `LATE_PATIENCE`: 14,060 and 6,620 steps in all to converge,
#: median flux errors 0.046 and 0.067, against 20,296 and 9,555 steps, 0.054 and 0.076
#: with 0.9 and patience 5 throughout. Less still (0.5-0.7) converged a little faster
#: again, but its trajectories amplify float rounding: a long, jumpy descent then ends
#: differently vmapped and alone (3% of the peak pixel apart at 0.5, 7e-5 at 0.8).
ADAM_B1 = 0.8

MorphologyPrior = Callable[[Float[Array, "source band h w"]], Float[Array, ""]]


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


class _State(eqx.Module):
    u: tuple[Source, ...]
    opt_state: optax.OptState
    step: Int[Array, ""]
    loss: Float[Array, ""]
    rel_change: Float[Array, ""]
    done: Bool[Array, ""]
    failed: Bool[Array, ""]
    best: Float[Array, ""]
    stall: Int[Array, ""]
    scale: Float[Array, ""]


class _Problem(eqx.Module):
    """Everything about one fit that is data (vmapped over in batched fits)."""

    scene: Scene
    observations: tuple[Observation, ...]
    masks: tuple[Float[Array, " source"], ...]
    steps: dict


class _Settings(eqx.Module):
    rtol: Float[Array, ""]
    halflife: Float[Array, ""]
    patience: Int[Array, ""]
    min_iter: Int[Array, ""]
    sparsity: Float[Array, ""]
    plateau_rtol: Float[Array, ""]
    plateau_factor: Float[Array, ""]
    late_patience: Int[Array, ""]
    late_scale: Float[Array, ""]
    constraints: Constraints = eqx.field(static=True)
    prior: MorphologyPrior | None = eqx.field(static=True)


def _check_steps(learning_rate, learning_rates) -> dict[str, float]:
    steps = dict(DEFAULT_STEPS)
    if learning_rates is not None:
        if not isinstance(learning_rates, Mapping):
            raise TypeError(f"learning_rates must be a mapping of parameter kind to step, got {learning_rates!r}")
        unknown = set(learning_rates) - set(steps)
        if unknown:
            raise ValueError(f"learning_rates: unknown kinds {sorted(unknown)}; known: {sorted(steps)}")
        steps.update({k: float(v) for k, v in learning_rates.items()})
    lr = float(learning_rate)
    if not lr > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    bad = {k: v for k, v in steps.items() if not v >= 0}
    if bad:
        raise ValueError(f"learning_rates must be >= 0, got {bad}")
    return {k: v * lr for k, v in steps.items()}


def _group_steps(g: Source, steps: dict, constraints: Constraints) -> Source:
    """Per-leaf step sizes of a batched group (in unconstrained units), same tree as it."""
    s = jax.tree.map(lambda x: jnp.zeros_like(x) if eqx.is_inexact_array(x) else x, g)
    s = eqx.tree_at(
        lambda t: (t.spectrum, t.center),
        s,
        (jnp.full_like(g.spectrum, steps["spectrum"]), jnp.full_like(g.center, steps["center"])),
    )
    m = g.morphology
    if isinstance(m, PixelMorphology):
        if constraints.pixels == "projection":
            scale = jnp.max(jnp.abs(m.pixels), axis=(-2, -1), keepdims=True)
            value = steps["pixels_projection"] * jnp.broadcast_to(scale, m.pixels.shape)
        else:
            value = jnp.full_like(m.pixels, steps["pixels"])
        s = eqx.tree_at(lambda t: t.morphology.pixels, s, value)
    elif isinstance(m, StructuredMorphology):
        if constraints.pixels == "projection":
            scale = jnp.max(jnp.abs(m.total()), axis=(-2, -1), keepdims=True)
            value = steps["pixels_projection"] * jnp.broadcast_to(scale, m.pixels.shape)
        else:
            value = jnp.full_like(m.pixels, steps["pixels"])
        s = eqx.tree_at(lambda t: (t.morphology.pixels, t.morphology.structure), s, (value, value * m.support))
    elif isinstance(m, GaussianMorphology):
        s = eqx.tree_at(
            lambda t: (t.morphology.sigma, t.morphology.g1, t.morphology.g2),
            s,
            (jnp.full_like(m.sigma, steps["size"]), jnp.full_like(m.g1, steps["shear"]), jnp.full_like(m.g2, steps["shear"])),
        )
    elif isinstance(m, SersicMorphology):
        s = eqx.tree_at(
            lambda t: (t.morphology.n, t.morphology.r_e, t.morphology.g1, t.morphology.g2),
            s,
            (
                jnp.full_like(m.n, steps["n"]),
                jnp.full_like(m.r_e, steps["size"]),
                jnp.full_like(m.g1, steps["shear"]),
                jnp.full_like(m.g2, steps["shear"]),
            ),
        )
    return s


def _constrained(u, settings: _Settings, masks) -> tuple[Source, ...]:
    groups = tuple(from_unconstrained(g, settings.constraints) for g in u)
    # Absent (padding) sources have zero flux: they neither render nor receive gradients.
    return tuple(eqx.tree_at(lambda s: s.spectrum, g, g.spectrum * m[:, None]) for g, m in zip(groups, masks))


def _loss(u, problem: _Problem, settings: _Settings) -> Float[Array, ""]:
    return _loss_and_groups(u, problem, settings)[0]


def _loss_and_groups(u, problem: _Problem, settings: _Settings):
    """The loss, and as auxiliaries the constrained (masked) groups it saw and the chi2."""
    groups = _constrained(u, settings, problem.masks)
    scene = eqx.tree_at(lambda s: s.groups, problem.scene, groups)
    model = scene.render()
    chi2 = sum(obs.chi2(model) for obs in problem.observations)
    loss = 0.5 * chi2
    for g in groups:
        image = free_form_image(g.morphology)
        if image is not None:
            loss = loss + settings.sparsity * sparsity_penalty(g)
            if settings.prior is not None:
                stamps = g.spectrum[:, :, None, None] * image[:, None]
                loss = loss + settings.prior(stamps)
    return loss, (groups, chi2)


def _source_norms(groups) -> list[Float[Array, " source"]]:
    """Per source, the squared norm of each parameter leaf (a list over leaves)."""
    out = []
    for g in groups:
        for leaf in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array)):
            out.append(jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1))
    return out


def _moving(steps, masks) -> list[Bool[Array, " source"]]:
    """Per parameter leaf (in `_relative_change`'s order), the sources present whose leaf
    the optimiser moves (a nonzero step somewhere). Constant over a fit: computed once."""
    out = []
    for g_s, m in zip(steps, masks):
        for s in jax.tree.leaves(eqx.filter(g_s, eqx.is_inexact_array)):
            out.append((jnp.max(jnp.abs(s.reshape(s.shape[0], -1)), axis=1) > 0) & (m > 0))
    return out


def _relative_change(old, new, moving) -> Float[Array, ""]:
    """max over sources and parameter leaves of ``|new - old| / |old|`` (constrained
    values), over the leaves that move and the sources present (`_moving`): scarlet2's
    criterion."""
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


def _finite(tree) -> Bool[Array, ""]:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


_ADAM = optax.scale_by_adam(b1=ADAM_B1)


def _init_impl(problem: _Problem, settings: _Settings) -> _State:
    # The initial loss is left to the first step (which checks it is finite): computing
    # it here would compile the model a second time.
    u = tuple(to_unconstrained(g, settings.constraints) for g in problem.scene.groups)
    return _State(
        u=u,
        opt_state=_ADAM.init(u),
        step=jnp.zeros((), jnp.int32),
        loss=jnp.asarray(jnp.nan, dtype=jnp.float32),
        rel_change=jnp.asarray(jnp.inf, dtype=jnp.float32),
        done=jnp.asarray(False),
        failed=jnp.asarray(False),
        best=jnp.asarray(jnp.inf, dtype=jnp.float32),
        stall=jnp.zeros((), jnp.int32),
        scale=jnp.ones((), jnp.float32),
    )


def _step(state: _State, problem: _Problem, settings: _Settings, moving) -> _State:
    (loss, (old, _)), grads = jax.value_and_grad(_loss_and_groups, has_aux=True)(state.u, problem, settings)
    grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(g), g, 0.0), grads)
    updates, opt_state = _ADAM.update(grads, state.opt_state)
    # Adam moves every parameter by about its step size whatever the gradient, so with
    # constant steps it ends up jittering around the optimum (relative changes ~1e-3 for
    # ever). The steps shrink (plateau_factor) whenever the loss has not improved by a
    # relative plateau_rtol for `patience` steps (reduce on plateau: fits still descending keep their pace), and
    # optionally also every `halflife` steps.
    improved = loss < state.best - settings.plateau_rtol * jnp.abs(state.best)
    stall = jnp.where(improved, 0, state.stall + 1)
    patience = jnp.where(state.scale <= settings.late_scale, settings.late_patience, settings.patience)
    plateau = stall >= patience
    scale = jnp.where(plateau, settings.plateau_factor * state.scale, state.scale)
    stall = jnp.where(plateau, 0, stall)
    # The reference moves only on an improvement, so slow steady progress counts too.
    best = jnp.where(improved | ~jnp.isfinite(state.best), loss, state.best)
    decay = scale * jnp.exp2(-state.step.astype(jnp.float32) / settings.halflife)
    u = jax.tree.map(lambda x, d, s: x - decay * s * d, state.u, updates, problem.steps)
    new = tuple(
        project(from_unconstrained(g, settings.constraints), settings.constraints, full=False) for g in u
    )
    u = tuple(
        to_unconstrained(c, settings.constraints) if free_form_image(c.morphology) is not None else g
        for c, g in zip(new, u)
    )
    rel = _relative_change(old, new, moving)
    # `new` derives from every updated leaf (a NaN anywhere shows in it), and non-finite
    # gradients were zeroed, so the optimiser state stays finite.
    ok = jnp.isfinite(loss) & _finite(new)
    step = state.step + 1
    converged = (rel < settings.rtol) & (step >= settings.min_iter)
    keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(ok, x, y), a, b)  # noqa: E731
    return _State(
        u=keep(u, state.u),
        opt_state=keep(opt_state, state.opt_state),
        step=jnp.where(ok, step, state.step),
        loss=jnp.where(jnp.isfinite(loss), loss, state.loss),
        rel_change=jnp.where(ok, rel, state.rel_change),
        done=converged | ~ok,
        failed=~ok,
        best=jnp.where(ok, best, state.best),
        stall=jnp.where(ok, stall, state.stall),
        scale=jnp.where(ok, scale, state.scale),
    )


def _loop_impl(state: _State, problem: _Problem, settings: _Settings, until: Int[Array, ""]) -> _State:
    """Up to ``until`` steps (fewer if the fit converges or fails first)."""

    def cond(s):
        return (~s.done) & (s.step < until)

    moving = _moving(problem.steps, problem.masks)
    return jax.lax.while_loop(cond, lambda s: _step(s, problem, settings, moving), state)


def _outputs_impl(state: _State, problem: _Problem, settings: _Settings):
    """The constrained groups, loss, chi2 and number of valid pixels at ``state``."""
    # Inside the loop monotonicity is one inward sweep per step; finish it exactly.
    u = tuple(
        to_unconstrained(project(from_unconstrained(g, settings.constraints), settings.constraints), settings.constraints)
        if free_form_image(g.morphology) is not None
        else g
        for g in state.u
    )
    # One render gives the loss, the chi2 and the groups.
    loss, (groups, chi2) = _loss_and_groups(u, problem, settings)
    n_valid = sum(obs.n_valid for obs in problem.observations)
    return groups, loss, chi2, n_valid


def _run_impl(state: _State, problem: _Problem, settings: _Settings, until: Int[Array, ""]):
    """Up to ``until`` steps; also returns the constrained groups, loss, chi2 and number
    of valid pixels at the state reached (one compiled function serves both)."""
    state = _loop_impl(state, problem, settings, until)
    return state, _outputs_impl(state, problem, settings)


_init = eqx.filter_jit(_init_impl)
_run = eqx.filter_jit(_run_impl)
_steps_of = eqx.filter_jit(
    lambda groups, steps, constraints: tuple(_group_steps(g, steps, constraints) for g in groups)
)


def compilation_count() -> int:
    """How many times the compiled fitting loop has been compiled in this process (for
    tests: a second fit of the same shapes must not add to it)."""
    return int(_run._cached._cache_size()) + int(_init._cached._cache_size())


def _make_settings(
    rtol,
    halflife,
    patience,
    min_iter,
    constraints,
    prior,
    plateau_rtol=None,
    plateau_factor=PLATEAU_FACTOR,
    late_patience=LATE_PATIENCE,
) -> _Settings:
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
    return _Settings(
        rtol=jnp.asarray(float(rtol)),
        halflife=_halflife(halflife),
        patience=jnp.asarray(int(patience), jnp.int32),
        min_iter=jnp.asarray(int(min_iter), jnp.int32),
        sparsity=jnp.asarray(float(constraints.sparsity)),
        plateau_rtol=jnp.asarray(float(plateau_rtol)),
        plateau_factor=jnp.asarray(float(plateau_factor)),
        late_patience=jnp.asarray(min(int(late_patience), int(patience)), jnp.int32),
        # Just above factor ** LATE_AFTER, so that float rounding of the products cannot
        # miss it (a factor of 1 never shrinks: the late patience then never applies).
        late_scale=jnp.asarray(float(plateau_factor) ** LATE_AFTER * (1 + 1e-4) if plateau_factor < 1 else 0.0),
        constraints=constraints,
        prior=prior,
    )


def _halflife(halflife) -> Array:
    if halflife is None:
        return jnp.asarray(jnp.inf, dtype=jnp.float32)
    if not float(halflife) > 0:
        raise ValueError(f"halflife must be positive or None, got {halflife}")
    return jnp.asarray(float(halflife), dtype=jnp.float32)


def _masks_for(scene: Scene, source_mask) -> tuple[Array, ...]:
    if source_mask is None:
        return tuple(jnp.ones(len(o)) for o in scene.order)
    m = np.asarray(source_mask)
    if m.shape != (scene.n_sources,):
        raise ValueError(f"source_mask must be ({scene.n_sources},) bool, got shape {m.shape}")
    return tuple(jnp.asarray(m[np.asarray(o)], dtype=float) for o in scene.order)


def _n_params(steps, masks) -> Array:
    n = jnp.zeros(())
    for g, m in zip(steps, masks):
        for leaf in jax.tree.leaves(eqx.filter(g, eqx.is_inexact_array)):
            per = jnp.sum((leaf.reshape(leaf.shape[0], -1) > 0), axis=1)
            n = n + jnp.sum(per * m)
    return n


def _check_inputs(scene, observations, max_iter, rtol, chunk):
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    observations = as_observations(observations)
    if not observations:
        raise ValueError("observations must hold at least one Observation")
    for i, o in enumerate(observations):
        if o.frame_shape != scene.shape[1:]:
            raise ValueError(
                f"observations[{i}] was built for a frame of shape {o.frame_shape}, the scene's is {scene.shape[1:]}"
            )
    if int(max_iter) < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if not float(rtol) >= 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    if int(chunk) < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    return observations


def fit(
    scene: Scene,
    observations: Observation | Sequence[Observation],
    *,
    max_iter: int = 300,
    rtol: float = 1e-4,
    min_iter: int = 10,
    learning_rate: float = 1.0,
    learning_rates: Mapping[str, float] | None = None,
    halflife: float | None = None,
    patience: int | None = 5,
    plateau_rtol: float | None = None,
    plateau_factor: float = PLATEAU_FACTOR,
    late_patience: int | None = LATE_PATIENCE,
    constraints: Constraints | None = None,
    fit_centers: bool = True,
    morphology_prior: MorphologyPrior | None = None,
    source_mask=None,
    chunk: int = 25,
    progress: bool = True,
    key: Array | None = None,
) -> tuple[Scene, FitResult]:
    """Fit a scene to one or several observations (MAP / maximum likelihood).

    Minimises ``chi2 / 2`` over all observations (plus the sparsity penalty and the
    morphology prior, if given) with Adam, each parameter kind with its own step size
    (`DEFAULT_STEPS`, times `learning_rate`) in its unconstrained space (see
    `deconvjax.fit.constraints`). The loop runs inside jit, ``chunk`` steps per call; it
    stops when every source's parameters change by less than ``rtol`` (relative) in a step,
    after at least ``min_iter`` steps, or after ``max_iter``.

    **Arguments:**

    - `scene`: the initial `Scene` (e.g. from `init_scene`).
    - `observations`: an `Observation` or a sequence of them (multi-band, multi-epoch,
      multi-resolution: all are fitted jointly).
    - `learning_rates`: per-kind overrides of `DEFAULT_STEPS` (``0`` fixes a kind).
    - `patience`: scale the step sizes by ``plateau_factor`` whenever the loss has not
      improved by a relative ``plateau_rtol`` for ``patience`` steps (``None``: never, as scarlet2; Adam then
      jitters at its step size and rarely meets ``rtol``).
    - `plateau_rtol`: the relative loss improvement that counts as progress for
      `patience` (default: ``PLATEAU_RTOL`` times ``rtol``).
    - `plateau_factor`: the factor in ``(0, 1]`` applied to the steps at each plateau.
    - `late_patience`: the patience once the steps have shrunk `LATE_AFTER` times
      (``None``: ``patience`` throughout).
    - `halflife`: also anneal the step sizes, halving them every ``halflife`` steps
      (``None``: no such schedule).
    - `constraints`: a `Constraints` (positivity, symmetry, monotonicity, sparsity).
    - `fit_centers`: also fit source centres.
    - `morphology_prior`: optional penalty (negative log-prior, added to the loss) of the
      free-form sources' ``(source, band, h, w)`` stamps (all sources in one call), e.g.
      ``lambda m: deconvjax.diffusion.prior_score_penalty(prior, m, weight, sigma)``. A
      score penalty has value 0 (only its gradient acts), so the loss that `patience`
      watches is then the likelihood alone.
    - `source_mask`: ``(n_source,)`` bool, False for padding sources (zero flux, not fitted).
    - `progress`: show a tqdm bar (updated every ``chunk`` steps).
    - `key`: unused by this deterministic optimiser; accepted for a uniform API.

    **Returns:** ``(fitted_scene, FitResult)``.
    """
    del key
    t0 = time.perf_counter()
    observations = _check_inputs(scene, observations, max_iter, rtol, chunk)
    constraints = Constraints() if constraints is None else constraints
    if not isinstance(constraints, Constraints):
        raise TypeError(f"constraints must be a Constraints, got {type(constraints).__name__}")
    steps = _check_steps(learning_rate, learning_rates)
    if not fit_centers:
        steps["center"] = 0.0
    if not bool(_finite(scene.groups)):
        raise ValueError("scene has NaN or inf parameters")
    masks = _masks_for(scene, source_mask)
    settings = _make_settings(
        rtol, halflife, patience, min_iter, constraints, morphology_prior, plateau_rtol, plateau_factor, late_patience
    )
    step_tree = _steps_of(scene.groups, {k: jnp.asarray(v) for k, v in steps.items()}, constraints)
    problem = _Problem(scene=scene, observations=observations, masks=masks, steps=step_tree)
    state = _init(problem, settings)
    history = []
    from tqdm.auto import tqdm

    with tqdm(total=int(max_iter), desc="fit", disable=not progress, leave=False) as bar:
        step = 0
        while True:
            until = min(step + int(chunk), int(max_iter))
            state, (groups, loss, chi2, n_valid) = _run(state, problem, settings, jnp.asarray(until, jnp.int32))
            new_step = int(state.step)
            bar.update(new_step - step)
            bar.set_postfix(loss=f"{float(loss):.6g}", change=f"{float(state.rel_change):.2e}")
            history.append((new_step, float(loss)))
            if bool(state.done) or new_step >= max_iter or new_step == step:
                break
            step = new_step
    n_params = int(_n_params(step_tree, masks))
    failed = bool(state.failed)
    if failed:
        warnings.warn(
            f"fit met a non-finite loss or parameter after {int(state.step)} steps; "
            "returning the last finite scene (FitResult.failed is True)",
            RuntimeWarning,
            stacklevel=2,
        )
    fitted = eqx.tree_at(lambda s: s.groups, scene, groups)
    quality = fit_quality(fitted, observations, n_params, symmetric=constraints.symmetric, warn=not failed)
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
    return fitted, result
