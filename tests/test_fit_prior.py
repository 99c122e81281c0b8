"""The `morphology_prior` hook of `fit`: a diffusion prior's score as a regulariser of
free-form morphologies, all sources in one batched call (analytic Gaussian prior)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from deconvjax import Frame, GaussianPSF, Observation, PixelMorphology, Scene, Source
from deconvjax.diffusion import GaussianDenoiser, prior_score_penalty
from deconvjax.fit import AdamSolver, Constraints, FitProblem, Objective, fit
from deconvjax.fit.solver import group_step_sizes

STAMP = 7
SHAPE = (17, 17)


def _blob(sigma, shape=(STAMP, STAMP)):
    yy, xx = np.mgrid[: shape[0], : shape[1]] - np.array(shape)[:, None, None] // 2
    img = np.exp(-0.5 * (yy**2 + xx**2) / sigma**2)
    return img / img.sum()


def _scene(frame, positions, sigma=1.2, flux=100.0):
    return Scene(frame, [Source(np.full(frame.n_bands, flux), PixelMorphology(_blob(sigma)), p) for p in positions])


def _problem(scene, obs, prior, constraints):
    """The problem and objective through the public solver API."""
    objective = Objective(constraints, prior)
    step_tree = group_step_sizes(scene.groups, AdamSolver().steps, constraints)
    masks = tuple(jnp.ones(len(o)) for o in scene.order)
    problem = FitProblem(scene=scene, observations=(obs,), masks=masks, steps=step_tree)
    return problem, objective


def _loss(u, problem, objective):
    return objective.loss_and_groups(u, problem)[0]


def test_prior_gradient_is_the_analytic_gaussian_score_in_one_call():
    frame = Frame(("g", "r"), SHAPE)
    rng = np.random.default_rng(0)
    scene = _scene(frame, [(5.3, 6.0), (9.0, 10.2), (11.7, 5.4)])
    scene = eqx.tree_at(
        lambda s: (s.groups[0].spectrum, s.groups[0].morphology.pixels),
        scene,
        (jnp.asarray(rng.uniform(50, 150, (3, 2))), jnp.asarray(rng.uniform(0.5, 1.5, (3, STAMP, STAMP)) * _blob(1.5))),
    )
    obs = Observation(rng.normal(0, 1, (2, *SHAPE)), frame=frame, psf=GaussianPSF(1.5), rms=1.0)
    a = rng.standard_normal((2 * STAMP * STAMP, 8)) * 0.02
    cov = a @ a.T + 1e-3 * np.eye(2 * STAMP * STAMP)
    mean = np.stack([_blob(1.0), _blob(2.0)])
    den = GaussianDenoiser(mean, cov)
    sigma, weight, scale = 0.05, 0.3, 100.0
    calls = []

    def hook(stamps):
        calls.append(stamps.shape)  # at trace time: one call per loss, all sources at once
        return prior_score_penalty(den, stamps, weight, sigma, scale=scale)

    cons = Constraints(symmetric=False, monotonic=False)
    with_prior, settings = _problem(scene, obs, hook, cons)
    without, settings0 = _problem(scene, obs, None, cons)
    u = AdamSolver().init(with_prior, settings).u
    g1 = jax.grad(_loss)(u, with_prior, settings)
    g0 = jax.grad(_loss)(u, without, settings0)
    assert calls == [(3, 2, STAMP, STAMP)]
    # Analytic: the penalty's gradient w.r.t. the stamps m = spectrum x pixels is
    # -weight * score, score = -(C + sigma^2)^-1 (m / scale - mean) / scale; the fit moves
    # log-spectra and log-pixels, so the chain rule multiplies by m.
    spec = np.asarray(scene.groups[0].spectrum, np.float64)
    pix = np.asarray(scene.groups[0].morphology.pixels, np.float64)
    m = spec[:, :, None, None] * pix[:, None]
    prec = np.linalg.inv(cov + sigma**2 * np.eye(cov.shape[0]))
    d = (m / scale - mean[None]).reshape(3, -1)
    score = -(d @ prec.T).reshape(m.shape) / scale
    g_m = -weight * score
    expect_pix = np.sum(g_m * m, axis=1)
    expect_spec = np.sum(g_m * m, axis=(2, 3))
    got_pix = np.asarray(g1[0].morphology.pixels - g0[0].morphology.pixels)
    got_spec = np.asarray(g1[0].spectrum - g0[0].spectrum)
    np.testing.assert_allclose(got_pix, expect_pix, rtol=2e-3, atol=1e-4 * np.abs(expect_pix).max())
    np.testing.assert_allclose(got_spec, expect_spec, rtol=2e-3, atol=1e-4 * np.abs(expect_spec).max())
    # The penalty adds nothing to the loss value itself.
    np.testing.assert_allclose(_loss(u, with_prior, settings), _loss(u, without, settings0), rtol=1e-6)


def test_strong_prior_pulls_the_morphology_to_the_prior_mean():
    """Data of a compact source, a prior tightly around a wider shape: with a strong
    prior weight the fitted morphology ends much nearer the prior mean than without."""
    frame = Frame(("g",), SHAPE)
    truth = _scene(frame, [(8.0, 8.0)], sigma=1.0, flux=200.0)
    obs0 = Observation(np.zeros((1, *SHAPE)), frame=frame, psf=GaussianPSF(1.5), rms=1.0)
    data = np.asarray(obs0(truth.render())) + np.random.default_rng(1).normal(0, 1.0, (1, *SHAPE))
    obs = Observation(data, frame=frame, psf=GaussianPSF(1.5), rms=1.0)
    wide = _blob(2.0)[None]
    den = GaussianDenoiser(wide, 1e-6 * np.eye(STAMP * STAMP))
    start = _scene(frame, [(8.0, 8.0)], sigma=1.4, flux=200.0)
    cons = Constraints(symmetric=False, monotonic=False)

    def shape_error(scene):
        pix = np.asarray(scene.groups[0].morphology.pixels)[0]
        return np.abs(pix / pix.sum() - wide[0]).sum()

    free, _ = fit(start, obs, max_iter=150, constraints=cons, fit_centers=False, progress=False)

    def hook(stamps):
        return prior_score_penalty(den, stamps, 10.0, 0.01, scale=200.0)

    held, result = fit(start, obs, max_iter=150, constraints=cons, fit_centers=False, progress=False,
                       morphology_prior=hook)
    assert not result.failed
    assert shape_error(held) < 0.2 * shape_error(free)
    assert shape_error(free) > 0.2  # the data alone make it compact, far from the prior
