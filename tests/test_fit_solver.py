"""The fit's solver object: its plateau transform against a schedule derived by hand,
its public init / step / terminate / postprocess composing to what `fit` returns, and its
options checked."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp
import numpy as np
import pytest

import deconvjax as dj
from deconvjax.fit import AdamSolver, FitProblem, Objective, fit, init_scene
from deconvjax.fit.solver import group_step_sizes, reduce_on_plateau, run_steps


def test_plateau_schedule_matches_the_hand_derived_one():
    # A loss that never improves, patience 5, factor 0.5, then patience 2 once the factor
    # is at 1/8: shrinks after steps 5, 10, 15, then 17, 19, 21.
    late = 0.5**3 * (1 + 1e-4)
    t = reduce_on_plateau(0.5, 5, 1e-3, 2, late)
    state = t.init(None)
    scales = []
    for _ in range(21):
        out, state = t.update({"x": jnp.ones(())}, state, value=jnp.asarray(10.0))
        scales.append(float(out["x"]))
    expect = []
    s = 1.0
    for step in range(1, 22):
        if step in (5, 10, 15, 17, 19, 21):
            s *= 0.5
        expect.append(s)
    np.testing.assert_allclose(scales, expect)
    # An improvement by more than rtol resets the wait; less does not.
    state = t.init(None)
    for value in (10.0, 9.0, 8.995, 8.993, 8.992, 8.9915):  # 9 - 1e-3 * 9 = 8.991
        out, state = t.update({"x": jnp.ones(())}, state, value=jnp.asarray(value))
    assert int(state.stall) == 4 and float(state.best) == 9.0 and float(out["x"]) == 1.0


@pytest.fixture(scope="module")
def problem():
    frame = dj.Frame(("r",), (31, 31), psf=dj.GaussianPSF(0.8))
    truth = dj.Scene(frame, [dj.Source([300.0], dj.GaussianMorphology(2.0, 0.1, 0.0, shape=(21, 21)), (15.2, 14.7))])
    obs0 = dj.Observation(np.zeros((1, 31, 31)), frame=frame, psf=dj.GaussianPSF(1.4), rms=0.5)
    data = np.asarray(obs0.predict(truth.render())) + np.random.default_rng(2).normal(0, 0.5, (1, 31, 31))
    obs = dj.Observation(data, frame=frame, psf=dj.GaussianPSF(1.4), rms=0.5)
    return init_scene(frame, obs, [(15.0, 15.0)], kind="pixel", stamp_size=15), obs


def test_public_methods_compose_to_fit(problem):
    scene, obs = problem
    solver, objective = AdamSolver(rtol=0.0, min_iter=40), Objective()
    steps = group_step_sizes(scene.groups, solver.steps, objective.constraints)
    prob = FitProblem(scene=scene, observations=(obs,), masks=(jnp.ones(1),), steps=steps)
    state = run_steps(solver, solver.init(prob, objective), prob, objective, jnp.asarray(40))
    assert int(state.step) == 40 and not bool(solver.terminate(state))
    groups, loss, chi2, n_valid = solver.postprocess(state, prob, objective)
    fitted, result = fit(scene, obs, solver, max_iter=40, chunk=40, progress=False)
    assert result.iterations == 40
    np.testing.assert_allclose(float(loss), result.loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(groups[0].morphology.pixels),
                               np.asarray(fitted.groups[0].morphology.pixels), rtol=1e-4, atol=1e-7)
    assert int(n_valid) == 31 * 31


def test_fixed_kinds_do_not_move(problem):
    scene, obs = problem
    fitted, _ = fit(scene, obs, AdamSolver(learning_rates={"center": 0.0}), max_iter=30, progress=False)
    np.testing.assert_array_equal(np.asarray(fitted.groups[0].center), np.asarray(scene.groups[0].center))
    held, _ = fit(scene, obs, AdamSolver().without("center"), max_iter=30, progress=False)
    np.testing.assert_array_equal(np.asarray(held.groups[0].center), np.asarray(scene.groups[0].center))


@pytest.mark.parametrize("kwargs, name", [
    ({"rtol": -1.0}, "rtol"), ({"min_iter": -1}, "min_iter"), ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rates": {"pixels": -1.0}}, "learning_rates"), ({"patience": 0}, "patience"),
    ({"late_patience": 0}, "late_patience"), ({"plateau_rtol": -1.0}, "plateau_rtol"),
    ({"plateau_factor": 1.5}, "plateau_factor"), ({"halflife": 0.0}, "halflife"), ({"b1": 1.0}, "b1"),
])
def test_bad_options_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdamSolver(**kwargs)


def test_bad_solver_and_budget(problem):
    scene, obs = problem
    with pytest.raises(TypeError, match="solver"):
        fit(scene, obs, "adam", progress=False)
    with pytest.raises(ValueError, match="max_iter"):
        fit(scene, obs, max_iter=-1, progress=False)
    with pytest.raises(ValueError, match="kinds"):
        AdamSolver().without("radius")
