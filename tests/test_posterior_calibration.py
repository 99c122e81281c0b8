"""Coverage (TARP), data consistency (chi2), joint observations and bad input."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deconvjax.diffusion import VESDE, StationaryGaussianDenoiser, sample  # noqa: E402
from deconvjax.frame import Frame  # noqa: E402
from deconvjax.observation import Observation  # noqa: E402
from deconvjax.posterior import MMPS, PosteriorDenoiser  # noqa: E402
from deconvjax.posterior.batch import StackedPosterior  # noqa: E402
from deconvjax.posterior.deconvolve import deconvolve, make_observations  # noqa: E402
from deconvjax.posterior.tarp import tarp_coverage, tarp_max_deviation  # noqa: E402
from deconvjax.psf import GaussianPSF  # noqa: E402

N = 8


def _prior(n=N, bands=1):
    k2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2
    power = np.broadcast_to(1.0 / (1.0 + (k2 / 0.02) ** 1.5), (bands, n, n))
    return StationaryGaussianDenoiser(np.zeros((bands, n, n)), power), power


def _draw(rng, power, n_draws):
    z = rng.normal(size=(n_draws, *power.shape))
    return np.fft.ifft2(np.sqrt(power) * np.fft.fft2(z, norm="ortho"), norm="ortho").real


@pytest.mark.parametrize("n_sims,n_samples,tol", [
    (300, 8, 0.1),
    pytest.param(1000, 16, 0.05, marks=pytest.mark.slow),
])
def test_tarp_coverage_and_chi2_on_simulations(n_sims, n_samples, tol):
    """Simulated observations from the prior, MMPS samples (default sampler) for each; the full
    version (1000 simulations, deviation at most 0.05) is marked slow and also run in
    benchmarks/posterior.py. ~0.87/sqrt(n_sims) is the expected deviation of a
    calibrated posterior."""
    noise = 0.2
    prior, power = _prior()
    rng = np.random.default_rng(0)
    truths = _draw(rng, power, n_sims)
    frame = Frame(["a"], (N, N), psf=GaussianPSF(0.3))
    template = PosteriorDenoiser(
        prior, Observation(np.zeros((1, N, N)), frame=frame, psf=GaussianPSF(1.2), rms=noise),
        method=MMPS(cg_iters=6))
    o = template.observations[0]
    data = np.asarray(jax.vmap(o)(jnp.asarray(truths, jnp.float32))) + noise * rng.normal(
        size=(n_sims, 1, N, N))
    stacked = StackedPosterior(template, [data])
    x, _ = sample(jr.key(1), stacked, sde=VESDE(1e-3, 50.0), shape=stacked.shape, n_samples=n_samples)
    x = np.asarray(x).swapaxes(0, 1)  # (n_sims, n_samples, 1, N, N)
    alpha, ecp, _ = tarp_coverage(jr.key(2), x, truths)
    dev = float(tarp_max_deviation(alpha, ecp))
    print(f"TARP max deviation ({n_sims} sims x {n_samples} samples): {dev:.4f}")
    assert dev < tol
    # Data consistency: (x_sample, y) has the law of (x_true, y), so E chi2/pixel = 1.
    model = jax.vmap(jax.vmap(o))(jnp.asarray(x, jnp.float32))
    chi2 = np.asarray(jnp.mean((model - data[:, None]) ** 2) / noise**2)
    print(f"chi2 per pixel of posterior samples: {chi2:.4f}")
    assert abs(chi2 - 1.0) < 0.05


def test_tarp_detects_overconfident_and_biased_posteriors():
    rng = np.random.default_rng(3)
    mu = 3.0 * rng.normal(size=(1000, 5))
    # Truth and samples exchangeable given mu: N(mu, I) is the exact posterior.
    truths = mu + rng.normal(size=mu.shape)
    good = mu[:, None] + rng.normal(size=(1000, 50, 5))
    narrow = mu[:, None] + 0.5 * rng.normal(size=(1000, 50, 5))
    shifted = mu[:, None] + 1.0 + rng.normal(size=(1000, 50, 5))
    for s, ok in ((good, True), (narrow, False), (shifted, False)):
        alpha, ecp, _ = tarp_coverage(jr.key(0), s, truths)
        dev = float(tarp_max_deviation(alpha, ecp))
        assert (dev < 0.06) == ok, dev


def _dense_exact(prior_power, observations, xt, sigma):
    n = N * N
    basis = np.eye(n).reshape(n, 1, N, N)
    cov = np.stack([np.fft.ifft2(prior_power * np.fft.fft2(b, norm="ortho"), norm="ortho").real.ravel()
                    for b in basis], 1)
    eye = jnp.eye(n, dtype=jnp.float32).reshape(n, 1, N, N)
    mats = [np.eye(n)] + [np.asarray(jax.vmap(o)(eye).reshape(n, -1), np.float64).T for o in observations]
    a = np.concatenate(mats, 0)
    y = np.concatenate([xt.ravel()] + [np.asarray(o.data, np.float64).ravel() for o in observations])
    w = np.concatenate([np.full(n, sigma**-2)] + [np.asarray(o.weights, np.float64).ravel()
                                                  for o in observations])
    keep = w > 0  # masked pixels carry no information
    a, y, noise = a[keep], y[keep], 1 / w[keep]
    s = a @ cov @ a.T + np.diag(noise)
    return (cov @ a.T @ np.linalg.solve(s, y)).reshape(1, N, N)


def test_joint_observations_exact_including_binned_view():
    """A ground-like view on the model grid plus a coarser (2x binned) view with a masked
    pixel: MMPS's E[x | x_t, y] matches the exact Gaussian answer (probed stationary
    preconditioner for the resampled view). Two informative views couple in data space,
    which the block preconditioner ignores: CG needs ~40 iterations here for 1e-3."""
    prior, power = _prior()
    rng = np.random.default_rng(5)
    frame = Frame(["a"], (N, N), psf=GaussianPSF(0.3))
    w2 = np.full((1, N // 2, N // 2), 1 / 0.05**2)
    w2[0, 1, 2] = 0.0
    obs = [Observation(rng.normal(size=(1, N, N)), frame=frame, psf=GaussianPSF(1.5), rms=0.1),
           Observation(rng.normal(size=(1, N // 2, N // 2)), frame=frame, psf=GaussianPSF(1.0),
                       weights=w2, pixel_scale=2.0)]
    assert obs[1].coords is not None
    den = PosteriorDenoiser(prior, obs, method=MMPS(cg_iters=48))
    call = jax.jit(lambda x, s: den(x, s))
    for sigma in (0.05, 1.0, 20.0):
        xt = rng.normal(size=(1, N, N)) * np.sqrt(1 + sigma**2)
        exact = _dense_exact(power, obs, xt, sigma)
        got = np.asarray(call(jnp.asarray(xt, jnp.float32), jnp.float32(sigma)))
        assert np.abs(got - exact).max() < 3e-3 * np.abs(exact).max(), sigma


def test_deconvolve_two_views_shrink_uncertainty():
    prior, power = _prior()
    rng = np.random.default_rng(7)
    truth = _draw(rng, power, 1)[0]
    frame = Frame(["a"], (N, N), psf=GaussianPSF(0.3))
    o1 = Observation(np.zeros((1, N, N)), frame=frame, psf=GaussianPSF(1.5), rms=0.2)
    y1 = np.asarray(o1(jnp.asarray(truth))) + 0.2 * rng.normal(size=(1, N, N))
    o1 = Observation(y1, frame=frame, psf=GaussianPSF(1.5), rms=0.2)
    o2 = Observation(np.asarray(o1(jnp.asarray(truth))) + 0.2 * rng.normal(size=(1, N, N)),
                     frame=frame, psf=GaussianPSF(1.5), rms=0.2)
    sde = VESDE(1e-3, 50.0)
    one = deconvolve(jr.key(0), prior, [o1], n_samples=16, sde=sde)
    two = deconvolve(jr.key(0), prior, [o1, o2], n_samples=16, sde=sde)
    assert one.samples.shape == (16, 1, N, N) and len(two.residuals) == 2
    assert float(two.std.mean()) < float(one.std.mean())
    assert 0.6 < float(two.chi2_per_pixel.mean()) < 1.4


def test_bad_input_gives_clear_errors():
    prior, _ = _prior()
    big = Frame(["a"], (2 * N, 2 * N), psf=GaussianPSF(0.3))
    o_big = Observation(np.zeros((1, 2 * N, 2 * N)), frame=big, psf=GaussianPSF(1.0), rms=1.0)
    with pytest.raises(ValueError, match="mismatched sizes"):
        PosteriorDenoiser(prior, o_big)
    three = Frame(["g", "r", "i"], (N, N), psf=GaussianPSF(0.3))
    o3 = Observation(np.zeros((3, N, N)), frame=three, psf=GaussianPSF(1.0), rms=1.0)
    with pytest.raises(ValueError, match="band"):
        PosteriorDenoiser(prior, o3)
    with pytest.raises(ValueError, match="noise"):
        make_observations([np.zeros((N, N))], [np.ones((3, 3)) / 9], variances=None)
    with pytest.raises(ValueError, match="psfs\\[0\\].*larger"):
        make_observations([np.zeros((N, N))], [np.ones((2 * N + 1, 2 * N + 1))], variances=[1.0])
    with pytest.raises(ValueError, match="noise"):
        Observation(np.zeros((1, N, N)), frame=Frame(["a"], (N, N)), psf=GaussianPSF(1.0))
    with pytest.raises(ValueError, match="x: expected"):
        PosteriorDenoiser(prior, Observation(np.zeros((1, N, N)), frame=Frame(["a"], (N, N), psf=GaussianPSF(0.5)),
                                             psf=GaussianPSF(1.5), rms=1.0))(jnp.zeros((N, N)), 1.0)
