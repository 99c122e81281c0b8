"""Samplers and log-densities against analytic Gaussian / Gaussian-mixture results."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from deconvjax.diffusion import (
    VESDE,
    VPSDE,
    GaussianDenoiser,
    GaussianMixtureDenoiser,
    StationaryGaussianDenoiser,
    log_prob,
    sample,
)

D = 3


@pytest.fixture(scope="module")
def gauss():
    a = np.array([[0.8, 0.0, 0.0], [0.3, 0.5, 0.0], [-0.2, 0.1, 0.4]])
    cov = a @ a.T
    mean = np.array([0.5, -0.3, 0.2])
    return jnp.asarray(mean), jnp.asarray(cov), GaussianDenoiser(mean, cov)


def _rel_errs(x, mean, cov):
    m = jnp.mean(x, axis=0)
    c = jnp.cov(x.T)
    mean_err = float(jnp.max(jnp.abs(m - mean) / jnp.sqrt(jnp.diag(cov))))
    cov_err = float(jnp.linalg.norm(c - cov) / jnp.linalg.norm(cov))
    return mean_err, cov_err


@pytest.mark.parametrize(
    "sde,method",
    [
        (VESDE(1e-3, 100.0), "pf_ode"),
        (VESDE(1e-3, 100.0), "sde"),
        (VPSDE(), "pf_ode"),
        (VESDE(1e-3, 100.0), "pc"),
        pytest.param(VPSDE(), "sde", marks=pytest.mark.slow),
        pytest.param(VESDE(1e-3, 100.0), "sde_shark", marks=pytest.mark.slow),
        pytest.param(VPSDE(), "pc", marks=pytest.mark.slow),
    ],
)
def test_gaussian_mean_and_covariance(gauss, sde, method):
    mean, cov, den = gauss
    x, nfe = sample(jr.key(1), den, sde, (D,), 40_000, method=method, steps=200)
    assert x.shape == (40_000, D)
    mean_err, cov_err = _rel_errs(x, mean, cov)
    assert mean_err < 0.02, (method, mean_err)
    assert cov_err < 0.02, (method, cov_err)
    assert int(nfe) > 0


@pytest.mark.parametrize("sde", [VESDE(1e-3, 100.0), VPSDE()])
def test_default_host_loop_sampler_gaussian(gauss, sde):
    # The default sampler (DPM-Solver++(2M), 48 steps on the EDM schedule, host loop) at
    # its default step count; and EDM Heun at 48 steps.
    mean, cov, den = gauss
    x, nfe = sample(jr.key(1), den, sde, (D,), 40_000)
    assert int(nfe) == 49
    mean_err, cov_err = _rel_errs(x, mean, cov)
    assert mean_err < 0.02 and cov_err < 0.02, (mean_err, cov_err)
    x, nfe = sample(jr.key(1), den, sde, (D,), 40_000, method="edm", steps=48)
    assert int(nfe) == 97
    mean_err, cov_err = _rel_errs(x, mean, cov)
    assert mean_err < 0.02 and cov_err < 0.02, (mean_err, cov_err)


def test_edm_churn_is_a_valid_sampler(gauss):
    # EDM's stochastic variant: different draws, same distribution.
    mean, cov, den = gauss
    x, _ = sample(jr.key(1), den, VESDE(1e-3, 100.0), (D,), 40_000, method="edm", steps=64,
                  churn=20.0)
    x0, _ = sample(jr.key(1), den, VESDE(1e-3, 100.0), (D,), 16, method="edm", steps=64)
    assert not np.allclose(x[:16], x0, atol=1e-3)
    mean_err, cov_err = _rel_errs(x, mean, cov)
    assert mean_err < 0.02 and cov_err < 0.05, (mean_err, cov_err)


def test_host_loop_sampler_does_not_recompile(gauss):
    mean, cov, _ = gauss
    traces = []

    class Counting(GaussianDenoiser):
        def __call__(self, x, sigma):
            traces.append(1)  # runs at trace time only
            return super().__call__(x, sigma)

    sde = VESDE(1e-3, 100.0)
    for method in ("dpm2m", "edm"):
        sample(jr.key(0), Counting(mean, cov), sde, (D,), 8, method=method, steps=6)
        n = len(traces)
        assert n > 0
        # Same call, other key, other steps, and a new denoiser of the same structure.
        sample(jr.key(1), Counting(mean + 1.0, cov), sde, (D,), 8, method=method, steps=9)
        assert len(traces) == n, method


def test_nfe_counts_denoiser_calls(gauss):
    _, _, den = gauss
    calls = []

    def counting(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return den(x, sigma)

    for method, kw in [("pf_ode", {}), ("sde", {"steps": 9}), ("dpm2m", {"steps": 7}),
                       ("edm", {"steps": 5}), ("edm", {"steps": 5, "solver": dfx.Euler()})]:
        calls.clear()
        # batch of 1 so vmap does not multiply the callback
        _, nfe = sample(jr.key(0), counting, VESDE(1e-3, 100.0), (D,), 1, method=method, **kw)
        jax.effects_barrier()
        assert len(calls) == int(nfe), (method, len(calls), int(nfe))


def _exact_pf_ode(den, sde, x1):
    # For N(m, C) with VE noise the PF-ODE maps x1 -> m + C^(1/2) ... exactly along each
    # eigenvector: (x - m)_i scales as sqrt(lam_i + sigma^2).
    m, lam, v = den.mean, den.eigvals, den.eigvecs
    s0, s1 = sde.sigma(sde.t_min), sde.sigma(1.0)
    z = (x1 - m) @ v
    return m + (z * jnp.sqrt((lam + s0**2) / (lam + s1**2))) @ v.T


@pytest.mark.parametrize("solver,order", [(dfx.Euler(), 1), (dfx.Heun(), 2)])
def test_ode_convergence_order(gauss, solver, order):
    _, _, den = gauss
    sde = VESDE(1e-2, 10.0)
    x1 = sde.prior_std() * jr.normal(jr.key(3), (16, D))
    exact = _exact_pf_ode(den, sde, x1)
    errs = []
    for steps in (40, 80, 160):
        x, _ = sample(jr.key(0), den, sde, (D,), 16, method="ode_fixed", steps=steps,
                      solver=solver, final_denoise=False, x_init=x1)
        errs.append(float(jnp.max(jnp.abs(x - exact))))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(np.abs(np.log2(ratios) - order) < 0.3), (errs, ratios)


@pytest.mark.parametrize("method,solver,order", [("edm", dfx.Euler(), 1), ("edm", None, 2),
                                                 ("dpm2m", None, 2)])
def test_host_loop_convergence_order(gauss, method, solver, order):
    _, _, den = gauss
    sde = VESDE(1e-2, 10.0)
    x1 = sde.prior_std() * jr.normal(jr.key(3), (16, D))
    exact = _exact_pf_ode(den, sde, x1)
    errs = []
    for steps in (40, 80, 160):
        x, _ = sample(jr.key(0), den, sde, (D,), 16, method=method, steps=steps, solver=solver,
                      final_denoise=False, x_init=x1)
        errs.append(float(jnp.max(jnp.abs(x - exact))))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(np.abs(np.log2(ratios) - order) < 0.3), (errs, ratios)


def test_adaptive_ode_matches_exact(gauss):
    _, _, den = gauss
    sde = VESDE(1e-3, 100.0)
    x1 = sde.prior_std() * jr.normal(jr.key(4), (8, D))
    exact = _exact_pf_ode(den, sde, x1)
    x_loose, n_loose = sample(jr.key(0), den, sde, (D,), 8, method="pf_ode", rtol=1e-3,
                              atol=1e-3, final_denoise=False, x_init=x1)
    x_tight, n_tight = sample(jr.key(0), den, sde, (D,), 8, method="pf_ode", rtol=1e-6,
                              atol=1e-6, final_denoise=False, x_init=x1)
    e_loose = float(jnp.max(jnp.abs(x_loose - exact)))
    e_tight = float(jnp.max(jnp.abs(x_tight - exact)))
    assert e_tight < 1e-3 and e_tight < e_loose
    assert int(n_tight) > int(n_loose)


@pytest.mark.parametrize("sde", [VESDE(1e-3, 100.0), pytest.param(VPSDE(), marks=pytest.mark.slow)])
def test_log_prob_gaussian(gauss, sde):
    mean, _, den = gauss
    x = mean + jr.normal(jr.key(5), (6, D))
    ref = jax.vmap(lambda z: den.log_prob(z, sde.sigma(sde.t_min)))(x)
    lp, nfe = log_prob(jr.key(0), den, sde, x, exact_trace=True)
    assert float(jnp.max(jnp.abs(lp - ref) / jnp.abs(ref))) < 0.01
    # Hutchinson: unbiased, so with many probes it converges to the same value.
    lp_h, _ = log_prob(jr.key(1), den, sde, x, n_probes=512)
    assert float(jnp.max(jnp.abs(lp_h - ref) / jnp.abs(ref))) < 0.01
    assert int(nfe) > 0


def test_mixture_denoiser_is_tweedie():
    w = jnp.array([0.3, 0.7])
    means = jnp.array([[1.0, 0.0], [-1.0, 0.5]])
    covs = jnp.stack([jnp.eye(2) * 0.2, jnp.array([[0.3, 0.1], [0.1, 0.2]])])
    den = GaussianMixtureDenoiser(w, means, covs)
    x = jnp.array([0.3, -0.2])
    for sigma in (0.05, 0.5, 3.0):
        # Tweedie: D = x + sigma^2 grad log p_sigma(x)
        g = jax.grad(lambda z: den.log_prob(z, sigma))(x)
        np.testing.assert_allclose(den(x, sigma), x + sigma**2 * g, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mixture_sampling_weights():
    w = jnp.array([0.25, 0.75])
    means = jnp.array([[3.0, 0.0], [-3.0, 0.0]])
    covs = jnp.stack([jnp.eye(2) * 0.1] * 2)
    den = GaussianMixtureDenoiser(w, means, covs)
    x, _ = sample(jr.key(2), den, VESDE(1e-3, 100.0), (2,), 4000, method="pf_ode")
    frac = float(jnp.mean(x[:, 0] > 0))
    assert abs(frac - 0.25) < 0.03


def test_stationary_denoiser_matches_dense():
    n = 6
    ky, kx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    power = 1.0 / (0.05 + ky**2 + kx**2)
    mean = np.full((1, n, n), 0.1)
    st = StationaryGaussianDenoiser(mean, power[None])
    # Dense covariance: C = F^H diag(p) F with the orthonormal 2-D DFT.
    eye = np.eye(n * n).reshape(n * n, n, n)
    cols = np.fft.ifft2(np.fft.fft2(eye, norm="ortho") * power, norm="ortho").real
    cov = cols.reshape(n * n, n * n).T
    dense = GaussianDenoiser(mean, cov)
    x = jr.normal(jr.key(0), (1, n, n))
    for sigma in (0.1, 1.0):
        np.testing.assert_allclose(st(x, sigma), dense(x, sigma), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(st.log_prob(x, sigma), dense.log_prob(x, sigma), rtol=1e-4)


def test_bad_arguments(gauss):
    _, _, den = gauss
    with pytest.raises(ValueError, match="method"):
        sample(jr.key(0), den, VESDE(), (D,), 2, method="ddim")
    with pytest.raises(TypeError, match="sde"):
        sample(jr.key(0), den, "ve", (D,), 2)
    with pytest.raises(ValueError, match="x_init"):
        sample(jr.key(0), den, VESDE(), (D,), 2, x_init=jnp.zeros((3, D)))
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="solver"):
        sample(jr.key(0), den, VESDE(), (D,), 2, method="edm", solver=dfx.Tsit5())
    with pytest.raises(ValueError, match="churn"):
        sample(jr.key(0), den, VESDE(), (D,), 2, method="dpm2m", churn=1.0)
    with pytest.raises(ValueError, match="steps"):
        sample(jr.key(0), den, VESDE(), (D,), 2, steps=0)



def test_host_loop_sampler_with_posterior_denoiser():
    """`PosteriorDenoiser` (MMPS, VJPs of the prior) through the default host-loop sampler:
    exact linear-Gaussian posterior (stationary prior, PSF convolution, white noise)."""
    from deconvjax.frame import Frame
    from deconvjax.observation import Observation
    from deconvjax.posterior import MMPS, PosteriorDenoiser
    from deconvjax.psf import GaussianPSF

    n, noise = 8, 0.1
    k2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2
    power = (1.0 / (1.0 + (k2 / 0.02) ** 1.5))[None]
    prior = StationaryGaussianDenoiser(np.zeros((1, n, n)), power)
    rng = np.random.default_rng(0)
    truth = np.fft.ifft2(np.sqrt(power) * np.fft.fft2(rng.normal(size=(1, n, n)), norm="ortho"),
                         norm="ortho").real
    frame = Frame(["a"], (n, n), psf=GaussianPSF(0.3))
    psf = GaussianPSF(1.2)
    op = Observation(np.zeros((1, n, n)), frame=frame, psf=psf, rms=noise)
    y = np.asarray(op(jnp.asarray(truth, jnp.float32))) + noise * rng.normal(size=(1, n, n))
    post = PosteriorDenoiser(prior, Observation(y, frame=frame, psf=psf, rms=noise),
                             method=MMPS(cg_iters=8))
    # Dense exact posterior (float64).
    m = n * n
    eye = np.eye(m).reshape(m, 1, n, n)
    cov = np.stack([np.fft.ifft2(power * np.fft.fft2(b, norm="ortho"), norm="ortho").real.ravel()
                    for b in eye], 1)
    a = np.asarray(jax.vmap(op)(jnp.asarray(eye, jnp.float32)).reshape(m, -1), np.float64).T
    gain = cov @ a.T @ np.linalg.inv(a @ cov @ a.T + noise**2 * np.eye(m))
    mean_exact = gain @ y.ravel()
    cov_exact = cov - gain @ a @ cov
    x, nfe = sample(jr.key(2), post, VESDE(1e-3, 100.0), (1, n, n), 1000, method="dpm2m")
    s = np.asarray(x, np.float64).reshape(-1, m)
    sd = np.sqrt(np.diag(cov_exact))
    z = (s.mean(0) - mean_exact) / (sd / np.sqrt(len(s)))
    assert np.mean(z**2) < 1.5, np.mean(z**2)
    var_ratio = np.var(s, axis=0, ddof=1) / np.diag(cov_exact)
    assert abs(np.mean(np.log(var_ratio))) < 0.05, np.mean(np.log(var_ratio))
    assert int(nfe) == 49
