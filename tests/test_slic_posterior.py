"""Noise-model guidance (deconvjax.posterior.slic) on linear-Gaussian problems whose posterior
is known exactly: a dense Gaussian prior (GaussianDenoiser), a PSF convolution, and
stationary correlated Gaussian noise (GaussianNoiseModel, the analytic noise model).

With a deterministic sampler (the probability-flow ODE) and guidance that is affine in
``x_t``, the map from the starting point to the sample is affine, ``x_0 = M x_1 + b``; pushing
zero and the basis vectors through the sampler gives the sampled distribution's mean ``b``
and covariance ``sigma_max^2 M M^T`` without Monte Carlo noise. These are compared with the
exact posterior computed densely in float64."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deconvjax.diffusion.denoiser import GaussianDenoiser  # noqa: E402
from deconvjax.diffusion.samplers import EDMHeun, sample  # noqa: E402
from deconvjax.diffusion.sde import VESDE  # noqa: E402
from deconvjax.frame import Frame  # noqa: E402
from deconvjax.likelihood.noise_model import GaussianNoiseModel  # noqa: E402
from deconvjax.observation import Observation  # noqa: E402
from deconvjax.posterior.base import PosteriorDenoiser  # noqa: E402
from deconvjax.posterior.mmps import MMPS  # noqa: E402
from deconvjax.posterior.slic import GaussianFitMMPS, NoiseScoreGuidance, effective_sigma  # noqa: E402
from deconvjax.psf import GaussianPSF  # noqa: E402

N = 8
NOISE = 0.15
SIGMA_MAX = 20.0


def _noise_power(corr_len: float) -> np.ndarray:
    """Full-layout power spectrum of stationary noise with pixel variance NOISE^2: a
    Gaussian correlation of length ``corr_len`` pixels (0: white) plus a white floor of
    5% of the peak (drizzled noise keeps some power at every frequency; without it the
    whitening would divide by ~1e-9 in float32)."""
    ky = np.fft.fftfreq(N)[:, None]
    kx = np.fft.fftfreq(N)[None, :]
    p = np.exp(-2 * np.pi**2 * corr_len**2 * (ky**2 + kx**2)) + 0.05 if corr_len > 0 else np.ones((N, N))
    p = p / p.mean() * NOISE**2  # mean of the spectrum = pixel variance
    return p[None]


def _problem(corr_len: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = N * N
    yy, xx = np.mgrid[:N, :N]
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    prior_cov = 0.8 * np.exp(-d2 / (2 * 1.5**2)) + 0.05 * np.eye(n)
    prior_mean = 0.3 * np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 8.0)[None]
    prior = GaussianDenoiser(prior_mean, prior_cov)
    power = _noise_power(corr_len)
    noise_model = GaussianNoiseModel(power[..., : N // 2 + 1], N)
    frame = Frame(["a"], (N, N), psf=GaussianPSF(0.3))
    psf = GaussianPSF(1.2)
    probe = Observation(np.zeros((1, N, N)), frame=frame, psf=psf, rms=NOISE)
    eye = jnp.eye(n, dtype=jnp.float32).reshape(n, 1, N, N)
    a = np.asarray(jax.vmap(probe)(eye).reshape(n, n), np.float64).T
    basis = np.eye(n).reshape(n, N, N)
    noise_cov = np.stack([np.fft.ifft2(power[0] * np.fft.fft2(b)).real.ravel() for b in basis], 1)
    x_true = prior_mean.ravel() + np.linalg.cholesky(prior_cov) @ rng.normal(size=n)
    y = a @ x_true + np.linalg.cholesky(noise_cov + 1e-12 * np.eye(n)) @ rng.normal(size=n)
    obs = Observation(y.reshape(1, N, N), frame=frame, psf=psf, rms=NOISE)
    s = a @ prior_cov @ a.T + noise_cov
    gain = prior_cov @ a.T @ np.linalg.inv(s)
    mean = prior_mean.ravel() + gain @ (y - a @ prior_mean.ravel())
    cov = prior_cov - gain @ a @ prior_cov
    return prior, obs, noise_model, mean, cov, a, noise_cov


def _sampled_moments(post, mean, cov, steps=48):
    """Mean and covariance of the ODE sampler's output distribution (affine guidance), the
    sampler started from the exact marginal at t = 1, ``N(mean, cov + sigma_max^2 I)``
    (rather than ``N(0, sigma_max^2 I)``, whose error would add to the guidance's)."""
    n = N * N
    sde = VESDE(sigma_min=0.002, sigma_max=SIGMA_MAX)
    x_init = jnp.concatenate([jnp.zeros((1, 1, N, N)), jnp.eye(n).reshape(n, 1, N, N)])
    out, _ = sample(jr.key(0), post, EDMHeun(steps=steps), sde=sde, shape=(1, N, N),
                    n_samples=n + 1, x_init=x_init)
    out = np.asarray(out, np.float64).reshape(n + 1, n)
    b = out[0]
    m = (out[1:] - b).T
    return b + m @ mean, m @ (cov + SIGMA_MAX**2 * np.eye(n)) @ m.T


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=[0.0, 1.0, 2.0], ids=["white", "correlated", "strong"])
def problem(request):
    return request.param, _problem(request.param)


def test_gaussian_fit_mmps_matches_exact_posterior(problem):
    corr, (prior, obs, nm, mean, cov, _, _) = problem
    post = PosteriorDenoiser(prior, obs, method=GaussianFitMMPS(nm))
    b, c = _sampled_moments(post, mean, cov)
    assert _rel(b, mean) < 0.005, (corr, _rel(b, mean))
    assert _rel(c, cov) < 0.03, (corr, _rel(c, cov))


def test_noise_score_guidance_bias_reported(problem, capsys):
    """The convolved-likelihood form is biased: measured here (printed) and checked to be
    finite and larger than GaussianFitMMPS's error on the strongly correlated case."""
    corr, (prior, obs, nm, mean, cov, _, _) = problem
    b, c = _sampled_moments(PosteriorDenoiser(prior, obs, method=NoiseScoreGuidance(nm)), mean, cov)
    b2, c2 = _sampled_moments(PosteriorDenoiser(prior, obs, method=GaussianFitMMPS(nm)), mean, cov)
    with capsys.disabled():
        print(f"\n[corr {corr}] NoiseScoreGuidance rel. err mean {_rel(b, mean):.3f} cov {_rel(c, cov):.3f}; "
              f"GaussianFitMMPS mean {_rel(b2, mean):.4f} cov {_rel(c2, cov):.4f}")
    assert np.isfinite(b).all() and np.isfinite(c).all()
    assert _rel(b, mean) < 0.5  # biased, but a posterior near the right one
    assert _rel(c, cov) + _rel(b, mean) > _rel(c2, cov) + _rel(b2, mean)


def test_white_gaussian_fit_mmps_equals_mmps():
    """With white noise of the weights' variance, GaussianFitMMPS is MMPS."""
    prior, obs, nm, *_ = _problem(0.0)
    x = jr.normal(jr.key(1), (1, N, N))
    for sigma in (0.05, 0.5, 5.0):
        a = PosteriorDenoiser(prior, obs, method=GaussianFitMMPS(nm))(x, sigma)
        b = PosteriorDenoiser(prior, obs, method=MMPS())(x, sigma)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=2e-3)


def test_gaussian_fit_mmps_denoiser_is_exact_conditional_mean():
    """At each sigma, E[x | x_t, y] against the dense formula for the joint Gaussian."""
    prior, obs, nm, _, _, a, noise_cov = _problem(2.0, seed=3)
    n = N * N
    pc = np.asarray(prior.cov, np.float64)
    pm = np.asarray(prior.mean, np.float64).ravel()
    y = np.asarray(obs.data, np.float64).ravel()
    post = PosteriorDenoiser(prior, obs, method=GaussianFitMMPS(nm))
    x = np.random.default_rng(5).normal(size=n)
    for sigma in (0.1, 1.0, 10.0):
        # Observed: x_t = x + sigma eps and y = A x + n; condition x on both.
        h = np.concatenate([np.eye(n), a])
        r = np.block([[sigma**2 * np.eye(n), np.zeros((n, n))], [np.zeros((n, n)), noise_cov]])
        s = h @ pc @ h.T + r
        obs_vec = np.concatenate([x, y])
        ref = pm + pc @ h.T @ np.linalg.solve(s, obs_vec - h @ pm)
        got = np.asarray(post(jnp.asarray(x.reshape(1, N, N), jnp.float32), sigma), np.float64).ravel()
        assert _rel(got, ref) < 2e-3, (sigma, _rel(got, ref))


def test_effective_sigma_is_trace_of_aat():
    prior, obs, nm, _, _, a, _ = _problem(0.0)
    post = PosteriorDenoiser(prior, obs, method=NoiseScoreGuidance(nm))
    (s_eff,) = effective_sigma(post, jnp.asarray(2.0))
    # Periodic convolution symbol vs the dense (edge-affected) operator: close, not equal.
    ref = 2.0 * np.sqrt(np.trace(a @ a.T) / (N * N))
    assert abs(float(s_eff) - ref) / ref < 0.1


def test_noise_score_guidance_flat_prior_limit():
    """For a (near) flat prior and A = I the convolved likelihood is exact: the guided
    denoiser is then the Gaussian conditional mean with data noise C + sigma^2 I."""
    n = N * N
    prior = GaussianDenoiser(np.zeros((1, N, N)), 1e6 * np.eye(n))
    power = _noise_power(1.0)
    nm = GaussianNoiseModel(power[..., : N // 2 + 1], N)
    frame = Frame(["a"], (N, N), psf=GaussianPSF(0.3))
    rng = np.random.default_rng(0)
    y = rng.normal(size=(1, N, N))
    obs = Observation(y, frame=frame, psf=GaussianPSF(0.3), rms=NOISE)  # same PSF: A = I
    post = PosteriorDenoiser(prior, obs, method=NoiseScoreGuidance(nm))
    x = rng.normal(size=(1, N, N))
    sigma = 0.3
    got = np.asarray(post(jnp.asarray(x, jnp.float32), sigma), np.float64)
    # D = x (flat prior); E[x|x_t,y] = x + sigma^2 (C + sigma^2)^-1 (y - x)
    ref = x + sigma**2 * np.fft.ifft2(np.fft.fft2(y - x) / (power + sigma**2)).real
    assert _rel(got, ref) < 1e-3


def test_noise_score_guidance_max_sigma_switches_to_gaussian_fit():
    """Above max_sigma the Gaussian fit's convolved score is used: for a Gaussian noise model
    that is the model's own score, so the denoiser is unchanged; for a model whose score
    is wrong (scaled by 3) it is changed only above max_sigma."""
    prior, obs, nm, *_ = _problem(1.0)
    x = jr.normal(jr.key(2), (1, N, N))

    class Wrong(GaussianNoiseModel):
        def score(self, noise, sigma=0.0):
            return 3.0 * super().score(noise, sigma)

    wrong = Wrong(nm.power_spectrum, N)
    for sigma in (0.05, 3.0):
        (s_eff,) = effective_sigma(PosteriorDenoiser(prior, obs, method=NoiseScoreGuidance(nm)), sigma)
        ref = PosteriorDenoiser(prior, obs, method=NoiseScoreGuidance(nm))(x, sigma)
        sw = PosteriorDenoiser(prior, obs, method=NoiseScoreGuidance(wrong, max_sigma=0.5))(x, sigma)
        if float(s_eff) > 0.5:
            np.testing.assert_allclose(np.asarray(sw), np.asarray(ref), rtol=1e-4, atol=1e-5)
        else:
            assert float(jnp.abs(sw - ref).max()) > 1e-3


def test_bad_inputs():
    prior, obs, nm, *_ = _problem(0.0)
    with pytest.raises(TypeError, match="noise_models"):
        GaussianFitMMPS("not a model")
    with pytest.raises(ValueError, match="trust"):
        GaussianFitMMPS(nm, trust=-1.0)
    wrong = GaussianNoiseModel.white(NOISE**2, (1, N + 2, N + 2))
    post = PosteriorDenoiser(prior, obs, method=NoiseScoreGuidance(wrong))
    with pytest.raises(ValueError, match="observations\\[0\\]"):
        post(jnp.zeros((1, N, N)), 1.0)
    post = PosteriorDenoiser(prior, obs, method=GaussianFitMMPS((nm, nm)))
    with pytest.raises(ValueError, match="one per observation"):
        post(jnp.zeros((1, N, N)), 1.0)


# -- deconvjax sample --noise-model -----------------------------------------------------------


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    pytest.importorskip("deconvjax.likelihood.learned", reason="the learned noise model (branch slicnoise)")
    from astropy.io import fits

    from deconvjax.diffusion import ScorePrior, UNet, UNetDenoiser, save_prior
    from deconvjax.likelihood.learned import LearnedNoiseModel, save_noise_model

    d = tmp_path_factory.mktemp("slic_cli")
    size = 16

    def tiny(seed):
        net = UNet(bands=1, channels=(8, 16), num_res_blocks=1, emb_dim=16, key=jr.key(seed))
        return net

    save_prior(d / "prior.eqx", ScorePrior(UNetDenoiser(tiny(0), 0.5, size), VESDE(1e-2, 20.0), 2.0))
    for name, s in (("noise.eqx", size), ("noise24.eqx", 24)):
        # An untrained network: the command's plumbing is under test, not the model.
        model = LearnedNoiseModel(ScorePrior(UNetDenoiser(tiny(1), 1.0, s), VESDE(1e-2, 20.0), 0.05, ()),
                                  jnp.full((1, s, s // 2 + 1), 0.05**2), 0.05)
        save_noise_model(d / name, model)
    yy, xx = np.mgrid[:size, :size]
    psf = np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / (2 * 1.5**2))[:15, :15]
    fits.writeto(d / "psf.fits", psf / psf.sum())
    rng = np.random.default_rng(0)
    img = np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 8.0) + 0.05 * rng.normal(size=(size, size))
    fits.writeto(d / "img.fits", img)
    return d


def _run(cli_files, noise, out):
    from click.testing import CliRunner

    from deconvjax.posterior._cli import sample as sample_cmd

    d = cli_files
    return CliRunner().invoke(sample_cmd, [str(d / "img.fits"), "--psf", str(d / "psf.fits"),
                                           "--variance", "0.0025", "--prior", str(d / "prior.eqx"),
                                           "--noise-model", str(noise), "--n-samples", "2",
                                           "--sampler", "ode_fixed", "--sampler-steps", "2",
                                           "--out", str(out), "--no-progress"])


@pytest.mark.slow  # a posterior run through the CLI: ~50 s on the shared 2-core CPU
def test_cli_sample_noise_model(cli_files):
    from astropy.io import fits

    r = _run(cli_files, cli_files / "noise.eqx", cli_files / "out")
    assert r.exit_code == 0, r.output
    cube = fits.getdata(cli_files / "out" / "samples.fits")
    assert cube.shape[0] == 2 and np.all(np.isfinite(cube))
    assert fits.getheader(cli_files / "out" / "mean.fits")["METHOD"] == "mmps_noise_fit"


def test_cli_sample_noise_model_errors(cli_files):
    r = _run(cli_files, cli_files / "noise24.eqx", cli_files / "o2")
    assert r.exit_code != 0 and "(1, 24, 24)" in r.output and "(1, 16, 16)" in r.output, r.output
    r = _run(cli_files, cli_files / "prior.eqx", cli_files / "o3")  # a galaxy prior, not a noise model
    assert r.exit_code != 0 and "--noise-model" in r.output and "not a deconvjax noise model" in r.output, r.output
