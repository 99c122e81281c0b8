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
from deconvjax.diffusion.samplers import (
    AdaptiveODE,
    Ancestral,
    DPMSolver2M,
    EDMHeun,
    FixedStepODE,
    PredictorCorrector,
    ReverseSDE,
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
    "sde,sampler",
    [
        (VESDE(1e-3, 100.0), AdaptiveODE()),
        (VESDE(1e-3, 100.0), ReverseSDE(steps=200)),
        (VPSDE(), AdaptiveODE()),
        (VESDE(1e-3, 100.0), PredictorCorrector(steps=200)),
        (VESDE(1e-3, 100.0), FixedStepODE(steps=200)),
        (VESDE(1e-3, 100.0), Ancestral(steps=800)),  # first order: many steps
        pytest.param(VPSDE(), ReverseSDE(steps=200), marks=pytest.mark.slow),
        pytest.param(VESDE(1e-3, 100.0), ReverseSDE(steps=200, solver=dfx.ShARK()),
                     marks=pytest.mark.slow),
        pytest.param(VPSDE(), PredictorCorrector(steps=200), marks=pytest.mark.slow),
    ],
)
def test_gaussian_mean_and_covariance(gauss, sde, sampler):
    mean, cov, den = gauss
    x, nfe = sample(jr.key(1), den, sampler, sde=sde, shape=(D,), n_samples=40_000)
    assert x.shape == (40_000, D)
    mean_err, cov_err = _rel_errs(x, mean, cov)
    assert mean_err < 0.02, (sampler, mean_err)
    assert cov_err < 0.02, (sampler, cov_err)
    assert int(nfe) > 0


@pytest.mark.parametrize("sde", [VESDE(1e-3, 100.0), VPSDE()])
def test_default_host_loop_sampler_gaussian(gauss, sde):
    # The default sampler (DPM-Solver++(2M), 48 steps on the EDM schedule, host loop) at
    # its default step count; and EDM Heun at 48 steps.
    mean, cov, den = gauss
    x, nfe = sample(jr.key(1), den, sde=sde, shape=(D,), n_samples=40_000)
    assert int(nfe) == 49
    mean_err, cov_err = _rel_errs(x, mean, cov)
    assert mean_err < 0.02 and cov_err < 0.02, (mean_err, cov_err)
    x, nfe = sample(jr.key(1), den, EDMHeun(steps=48), sde=sde, shape=(D,), n_samples=40_000)
    assert int(nfe) == 97
    mean_err, cov_err = _rel_errs(x, mean, cov)
    assert mean_err < 0.02 and cov_err < 0.02, (mean_err, cov_err)


def test_edm_churn_is_a_valid_sampler(gauss):
    # EDM's stochastic variant: different draws, same distribution.
    mean, cov, den = gauss
    sde = VESDE(1e-3, 100.0)
    x, _ = sample(jr.key(1), den, EDMHeun(steps=64, churn=20.0), sde=sde, shape=(D,),
                  n_samples=40_000)
    x0, _ = sample(jr.key(1), den, EDMHeun(steps=64), sde=sde, shape=(D,), n_samples=16)
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
    for cls in (DPMSolver2M, EDMHeun, Ancestral, PredictorCorrector):
        sample(jr.key(0), Counting(mean, cov), cls(steps=6), sde=sde, shape=(D,), n_samples=8)
        n = len(traces)
        assert n > 0
        # Same call, other key, other steps, and a new denoiser of the same structure.
        sample(jr.key(1), Counting(mean + 1.0, cov), cls(steps=9), sde=sde, shape=(D,),
               n_samples=8)
        assert len(traces) == n, cls


def test_nfe_counts_denoiser_calls(gauss):
    _, _, den = gauss
    calls = []

    def counting(x, sigma):
        jax.debug.callback(lambda: calls.append(1))
        return den(x, sigma)

    for sampler in [AdaptiveODE(), ReverseSDE(steps=9), DPMSolver2M(steps=7), EDMHeun(steps=5),
                    EDMHeun(steps=5, second_order=False), FixedStepODE(steps=4),
                    FixedStepODE(steps=4, host_loop=True), PredictorCorrector(steps=3),
                    Ancestral(steps=6)]:
        for traceable in (False, True):
            calls.clear()
            # batch of 1 so vmap does not multiply the callback
            _, nfe = sample(jr.key(0), counting, sampler, sde=VESDE(1e-3, 100.0), shape=(D,),
                            n_samples=1, traceable=traceable)
            jax.effects_barrier()
            assert len(calls) == int(nfe), (sampler, traceable, len(calls), int(nfe))


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
        x, _ = sample(jr.key(0), den, FixedStepODE(steps=steps, solver=solver), sde=sde,
                      shape=(D,), n_samples=16, final_denoise=False, x_init=x1)
        errs.append(float(jnp.max(jnp.abs(x - exact))))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(np.abs(np.log2(ratios) - order) < 0.3), (errs, ratios)


@pytest.mark.parametrize("make,order", [(lambda n: EDMHeun(steps=n, second_order=False), 1),
                                        (lambda n: EDMHeun(steps=n), 2),
                                        (lambda n: DPMSolver2M(steps=n), 2)])
def test_host_loop_convergence_order(gauss, make, order):
    _, _, den = gauss
    sde = VESDE(1e-2, 10.0)
    x1 = sde.prior_std() * jr.normal(jr.key(3), (16, D))
    exact = _exact_pf_ode(den, sde, x1)
    errs = []
    for steps in (40, 80, 160):
        x, _ = sample(jr.key(0), den, make(steps), sde=sde, shape=(D,), n_samples=16,
                      final_denoise=False, x_init=x1)
        errs.append(float(jnp.max(jnp.abs(x - exact))))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(np.abs(np.log2(ratios) - order) < 0.3), (errs, ratios)


def test_adaptive_ode_matches_exact(gauss):
    _, _, den = gauss
    sde = VESDE(1e-3, 100.0)
    x1 = sde.prior_std() * jr.normal(jr.key(4), (8, D))
    exact = _exact_pf_ode(den, sde, x1)
    x_loose, n_loose = sample(jr.key(0), den, AdaptiveODE(rtol=1e-3, atol=1e-3), sde=sde,
                              shape=(D,), n_samples=8, final_denoise=False, x_init=x1)
    x_tight, n_tight = sample(jr.key(0), den, AdaptiveODE(rtol=1e-6, atol=1e-6), sde=sde,
                              shape=(D,), n_samples=8, final_denoise=False, x_init=x1)
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
    x, _ = sample(jr.key(2), den, AdaptiveODE(), sde=VESDE(1e-3, 100.0), shape=(2,), n_samples=4000)
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
    with pytest.raises(TypeError, match="sampler"):
        sample(jr.key(0), den, "ddim", sde=VESDE(), shape=(D,), n_samples=2)
    with pytest.raises(TypeError, match="sde"):
        sample(jr.key(0), den, sde="ve", shape=(D,), n_samples=2)
    with pytest.raises(ValueError, match="x_init"):
        sample(jr.key(0), den, sde=VESDE(), shape=(D,), n_samples=2, x_init=jnp.zeros((3, D)))
    with pytest.raises(ValueError, match="n_samples"):
        sample(jr.key(0), den, sde=VESDE(), shape=(D,), n_samples=0)
    with pytest.raises(ValueError, match="batch_size"):
        sample(jr.key(0), den, sde=VESDE(), shape=(D,), n_samples=2, batch_size=0)
    with pytest.raises(ValueError, match="sigma_min"):
        VESDE(1.0, 0.5)
    with pytest.raises(TypeError, match="churn"):
        DPMSolver2M(churn=1.0)  # DPM-Solver++(2M) has no churn option


@pytest.mark.parametrize("make,name", [
    (lambda: DPMSolver2M(steps=0), "steps"),
    (lambda: DPMSolver2M(steps=2.5), "steps"),
    (lambda: DPMSolver2M(rho=0.0), "rho"),
    (lambda: DPMSolver2M(unroll=0), "unroll"),
    (lambda: EDMHeun(steps=-1), "steps"),
    (lambda: EDMHeun(churn=-1.0), "churn"),
    (lambda: EDMHeun(second_order="yes"), "second_order"),
    (lambda: EDMHeun(rho=-7.0), "rho"),
    (lambda: Ancestral(steps=0), "steps"),
    (lambda: AdaptiveODE(solver=dfx.Euler()), "solver"),
    (lambda: AdaptiveODE(rtol=0.0), "rtol"),
    (lambda: AdaptiveODE(atol=-1.0), "atol"),
    (lambda: AdaptiveODE(dt_min=0.0), "dt_min"),
    (lambda: AdaptiveODE(max_steps=0), "max_steps"),
    (lambda: FixedStepODE(steps=0), "steps"),
    (lambda: FixedStepODE(solver="heun"), "solver"),
    (lambda: FixedStepODE(solver=dfx.Tsit5(), host_loop=True), "solver"),
    (lambda: FixedStepODE(host_loop=1), "host_loop"),
    (lambda: ReverseSDE(steps=0), "steps"),
    (lambda: ReverseSDE(solver=None), "solver"),
    (lambda: PredictorCorrector(steps=0), "steps"),
    (lambda: PredictorCorrector(snr=0.0), "snr"),
])
def test_invalid_sampler_options_name_the_argument(make, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        make()


@pytest.mark.parametrize("sampler", [
    DPMSolver2M(steps=7), EDMHeun(steps=5), EDMHeun(steps=5, churn=3.0),
    EDMHeun(steps=5, second_order=False), Ancestral(steps=6), PredictorCorrector(steps=5),
    DPMSolver2M(steps=7, unroll=True),
])
def test_scan_form_equals_host_loop(gauss, sampler):
    # The traceable form (lax.scan, here inside jit and vmap) and the host loop run the same
    # step on the same inputs and keys: equal to float rounding.
    _, _, den = gauss
    sde = VESDE(1e-2, 10.0)
    host, n_host = sample(jr.key(4), den, sampler, sde=sde, shape=(D,), n_samples=6, batch_size=4)
    run = jax.jit(lambda k: sample(k, den, sampler, sde=sde, shape=(D,), n_samples=6,
                                   batch_size=4, traceable=True))
    scan, n_scan = run(jr.key(4))
    np.testing.assert_allclose(scan, host, rtol=1e-5, atol=1e-5)
    assert int(n_scan) == int(n_host) == sampler.nfe() + 1
    # Inside vmap over keys: the first key's draws are the unbatched ones.
    many, _ = jax.vmap(lambda k: sample(k, den, sampler, sde=sde, shape=(D,), n_samples=6,
                                        batch_size=4, traceable=True))(jnp.stack([jr.key(4), jr.key(5)]))
    np.testing.assert_allclose(many[0], host, rtol=1e-5, atol=1e-5)


def test_diffrax_ode_host_loop_equals_compiled_solve(gauss):
    _, _, den = gauss
    sde = VESDE(1e-2, 10.0)
    kw = dict(sde=sde, shape=(D,), n_samples=8)
    ref, n_ref = sample(jr.key(0), den, FixedStepODE(steps=12), **kw)
    host, n_host = sample(jr.key(0), den, FixedStepODE(steps=12, host_loop=True), **kw)
    np.testing.assert_allclose(host, ref, rtol=1e-5, atol=1e-5)
    assert int(n_ref) == int(n_host) == 25
    for sampler in (FixedStepODE(steps=12), AdaptiveODE(), ReverseSDE(steps=12)):
        a, _ = sample(jr.key(0), den, sampler, **kw)
        b, _ = jax.jit(lambda k, s=sampler: sample(k, den, s, traceable=True, **kw))(jr.key(0))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_default_sampler_is_the_cli_default():
    from click.testing import CliRunner

    from deconvjax.diffusion.samplers import DEFAULT_SAMPLER, sampler_from_name
    from deconvjax.diffusion.samplers.names import DEFAULT_SAMPLER_NAME, SAMPLER_NAMES
    from deconvjax.posterior._cli import sample as cli_sample

    assert DEFAULT_SAMPLER == DPMSolver2M() and DEFAULT_SAMPLER.steps == 48
    params = {p.name: p for p in cli_sample.params}
    assert params["sampler"].default == DEFAULT_SAMPLER_NAME
    assert params["sampler_steps"].default is None
    assert sampler_from_name(params["sampler"].default, params["sampler_steps"].default) == DEFAULT_SAMPLER
    assert set(params["sampler"].type.choices) == set(SAMPLER_NAMES)
    for name in SAMPLER_NAMES:
        assert sampler_from_name(name) is not None
        if name != "pf_ode":
            assert sampler_from_name(name, 5).steps == 5
    assert sampler_from_name("edm") == EDMHeun() and sampler_from_name("edm").steps == 18
    with pytest.raises(ValueError, match="sampler"):
        sampler_from_name("ddim")
    with pytest.raises(ValueError, match="steps"):
        sampler_from_name("pf_ode", 10)
    res = CliRunner().invoke(cli_sample, ["--help"])
    assert "[default: dpm2m]" in res.output, res.output


def test_a_new_sampler_is_one_class():
    # What a new sampler implements (see the package docstring): a final AbstractSampler
    # subclass with `run`; here a deliberately crude one, the identity "denoise at once".
    import equinox as eqx

    from deconvjax.diffusion.samplers import AbstractSampler

    class JumpToTweedie(AbstractSampler):
        def run(self, key, denoiser, sde, x1, *, progress=False):
            x = x1 / sde.scale(1.0)
            sig = jnp.asarray(sde.sigma(1.0), x.dtype)
            return jax.vmap(denoiser, in_axes=(0, None))(x, sig), jnp.asarray(1, jnp.int32)

    den = GaussianDenoiser(jnp.zeros(D), jnp.eye(D))
    x, nfe = sample(jr.key(0), den, JumpToTweedie(), sde=VESDE(1e-3, 1.0), shape=(D,),
                    n_samples=4, final_denoise=False)
    assert x.shape == (4, D) and int(nfe) == 1
    x2, _ = eqx.filter_jit(lambda k: sample(k, den, JumpToTweedie(), sde=VESDE(1e-3, 1.0),
                                            shape=(D,), n_samples=4, final_denoise=False,
                                            traceable=True))(jr.key(0))
    np.testing.assert_allclose(x, x2, rtol=1e-6)



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
    x, nfe = sample(jr.key(2), post, DPMSolver2M(), sde=VESDE(1e-3, 100.0), shape=(1, n, n),
                    n_samples=1000)
    s = np.asarray(x, np.float64).reshape(-1, m)
    sd = np.sqrt(np.diag(cov_exact))
    z = (s.mean(0) - mean_exact) / (sd / np.sqrt(len(s)))
    assert np.mean(z**2) < 1.5, np.mean(z**2)
    var_ratio = np.var(s, axis=0, ddof=1) / np.diag(cov_exact)
    assert abs(np.mean(np.log(var_ratio))) < 0.05, np.mean(np.log(var_ratio))
    assert int(nfe) == 49
