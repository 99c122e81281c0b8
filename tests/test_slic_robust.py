"""Robust noise-model guidance (`ScoreWhitenedMMPS`) and the Fisher power spectrum of a noise
model (`fisher_power_spectrum`), issue 20.

References: the dense Gaussian conditional mean (numpy, float64), the exact algebraic identity
``P_F = P^2 / P_hat`` of a Gaussian score, the Fisher information of a scale mixture by
quadrature (scipy), and the dense posterior with the outlier pixel removed."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import integrate, stats  # noqa: E402

from deconvjax.diffusion.denoiser import GaussianDenoiser  # noqa: E402
from deconvjax.frame import Frame  # noqa: E402
from deconvjax.likelihood.correlated import CorrelatedGaussianLikelihood  # noqa: E402
from deconvjax.likelihood.learned import fisher_power_spectrum  # noqa: E402
from deconvjax.likelihood.noise_model import AbstractNoiseModel, GaussianNoiseModel  # noqa: E402
from deconvjax.observation import Observation  # noqa: E402
from deconvjax.posterior.base import PosteriorDenoiser  # noqa: E402
from deconvjax.posterior.slic import GaussianFitMMPS, ScoreWhitenedMMPS  # noqa: E402
from deconvjax.psf import GaussianPSF  # noqa: E402

N = 8
NOISE = 0.15


class MixtureNoise(AbstractNoiseModel):
    """IID pixels from ``(1 - eps) N(0, s1^2) + eps N(0, s2^2)``: Gaussian noise with
    outliers, whose score is analytic."""

    s1: float
    s2: float
    eps: float

    @property
    def shape(self):
        return (1, N, N)

    def score(self, noise, sigma=0.0):
        v = jnp.stack([self.s1**2 + sigma**2, self.s2**2 + sigma**2])[:, None, None, None]
        logw = jnp.log(jnp.asarray([1 - self.eps, self.eps]))[:, None, None, None]
        logp = logw - 0.5 * jnp.log(v) - 0.5 * noise[None] ** 2 / v
        resp = jax.nn.softmax(logp, axis=0)
        return -jnp.sum(resp * noise[None] / v, axis=0)

    def gaussian_fit(self):
        var = (1 - self.eps) * self.s1**2 + self.eps * self.s2**2
        return CorrelatedGaussianLikelihood(np.full((1, N, N // 2 + 1), var))


def _power(corr_len):
    ky = np.fft.fftfreq(N)[:, None]
    kx = np.fft.rfftfreq(N)[None, :]
    p = np.exp(-2 * np.pi**2 * corr_len**2 * (ky**2 + kx**2)) + 0.05
    return (p / p.mean() * NOISE**2)[None]


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    n = N * N
    yy, xx = np.mgrid[:N, :N]
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    d2 = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    prior_cov = 0.8 * np.exp(-d2 / (2 * 1.5**2)) + 0.05 * np.eye(n)
    prior_mean = 0.3 * np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 8.0)[None]
    prior = GaussianDenoiser(prior_mean, prior_cov)
    frame = Frame(["a"], (N, N), psf=GaussianPSF(0.3))
    psf = GaussianPSF(1.2)
    probe = Observation(np.zeros((1, N, N)), frame=frame, psf=psf, rms=NOISE)
    eye = jnp.eye(n, dtype=jnp.float32).reshape(n, 1, N, N)
    a = np.asarray(jax.vmap(probe)(eye).reshape(n, n), np.float64).T
    x_true = prior_mean.ravel() + np.linalg.cholesky(prior_cov) @ rng.normal(size=n)
    return prior, frame, psf, a, prior_cov, np.asarray(prior_mean).ravel(), x_true, rng


def _conditional_mean(pc, pm, a, noise_cov, x, y, sigma):
    """E[x | x_t = x, y] for x ~ N(pm, pc), x_t = x + sigma eps, y = A x + n, n ~ N(0, noise_cov)."""
    n = len(pm)
    h = np.concatenate([np.eye(n), a])
    r = np.block([[sigma**2 * np.eye(n), np.zeros((n, len(y)))], [np.zeros((len(y), n)), noise_cov]])
    s = h @ pc @ h.T + r
    return pm + pc @ h.T @ np.linalg.solve(s, np.concatenate([x, y]) - h @ pm)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_score_whitened_mmps_is_exact_for_gaussian_noise():
    """With a Gaussian noise model (score -C^-1 r), every blend weight gives the Gaussian
    conditional mean: checked against the dense formula at small, middle and large sigma."""
    prior, frame, psf, a, pc, pm, x_true, rng = _setup(3)
    power = _power(1.5)
    nm = GaussianNoiseModel(power, N)
    # The full-layout spectrum through the covariance function.
    full = np.fft.fft2(np.fft.irfft2(power[0], s=(N, N))).real
    basis = np.eye(N * N).reshape(-1, N, N)
    noise_cov = np.stack([np.fft.ifft2(full * np.fft.fft2(b)).real.ravel() for b in basis], 1)
    y = a @ x_true + np.linalg.cholesky(noise_cov + 1e-12 * np.eye(N * N)) @ rng.normal(size=N * N)
    obs = Observation(y.reshape(1, N, N), frame=frame, psf=psf, rms=NOISE)
    post = PosteriorDenoiser(prior, obs, method=ScoreWhitenedMMPS(nm))
    x = rng.normal(size=N * N)
    for sigma in (0.05, 1.0, 10.0):
        ref = _conditional_mean(pc, pm, a, noise_cov, x, y, sigma)
        got = np.asarray(post(jnp.asarray(x.reshape(1, N, N), jnp.float32), sigma), np.float64).ravel()
        assert _rel(got, ref) < 3e-3, (sigma, _rel(got, ref))


def test_fisher_power_of_gaussian_noise_is_its_power():
    """For a Gaussian score s = -C^-1 n: P_F = P^2 / P_hat exactly (P_hat the cutouts'
    periodogram), and P_F -> P as the cutouts grow in number."""
    power = _power(1.0)
    nm = GaussianNoiseModel(power, N)
    # Not seed 0: fisher_power_spectrum draws its perturbation with seed 0.
    rng = np.random.default_rng(7)
    white = rng.normal(size=(2000, 1, N, N))
    cut = np.fft.irfft2(np.fft.rfft2(white) * np.sqrt(power), s=(N, N))
    pf = fisher_power_spectrum(nm, cut)
    p_hat = np.mean(np.abs(np.fft.rfft2(cut)) ** 2, 0) / N**2
    np.testing.assert_allclose(pf, power**2 / p_hat, rtol=2e-3)
    # 2000 cutouts: each bin's periodogram mean has a relative error ~ 1/sqrt(2000) (x sqrt 2
    # on the real-valued bins).
    assert np.max(np.abs(pf / power - 1)) < 0.15
    assert abs(np.mean(pf / power) - 1) < 0.01
    # At a perturbation sigma: the score of n + sigma eps, minus sigma^2, is P again.
    pf = fisher_power_spectrum(nm, cut, sigma=0.1)
    assert np.max(np.abs(pf / power - 1)) < 0.2
    assert abs(np.mean(pf / power) - 1) < 0.02


def test_fisher_power_of_outlier_mixture_is_its_core():
    """IID Gaussian noise with 2% outliers 30x broader: the second moments are ~19x the
    core's variance; P_F is the inverse Fisher information (by quadrature), close to the core."""
    s1, s2, eps = 1.0, 30.0, 0.02
    nm = MixtureNoise(s1, s2, eps)
    rng = np.random.default_rng(1)
    m = 3000
    out = rng.random((m, 1, N, N)) < eps
    cut = np.where(out, rng.normal(0, s2, (m, 1, N, N)), rng.normal(0, s1, (m, 1, N, N)))

    def pdf(z):
        return (1 - eps) * stats.norm.pdf(z, 0, s1) + eps * stats.norm.pdf(z, 0, s2)

    def score(z):
        return -((1 - eps) * stats.norm.pdf(z, 0, s1) * z / s1**2
                 + eps * stats.norm.pdf(z, 0, s2) * z / s2**2) / pdf(z)

    info = integrate.quad(lambda z: pdf(z) * score(z) ** 2, -300, 300, points=[0], limit=200)[0]
    pf = fisher_power_spectrum(nm, cut)
    assert abs(np.mean(pf) * info - 1) < 0.02, (np.mean(pf), 1 / info)
    assert 1.0 < 1 / info < 1.1  # the core, not the second moment (18.98)


def test_score_whitened_mmps_ignores_a_cosmic_ray():
    """One pixel of the data hit by a 40-sigma outlier. At small sigma the robust guidance
    with the outlier mixture's score and its Fisher fit is close to the dense posterior
    mean without that pixel; GaussianFitMMPS (second moments) and MMPS with the core's
    white Gaussian are pulled by the hit."""
    prior, frame, psf, a, pc, pm, x_true, rng = _setup(4)
    s1, s2, eps = NOISE, 30 * NOISE, 0.02
    nm = MixtureNoise(s1, s2, eps)
    y = a @ x_true + rng.normal(0, s1, N * N)
    hit = 3 * N + 4
    y[hit] += 40 * s1
    obs = Observation(y.reshape(1, N, N), frame=frame, psf=psf, rms=s1)
    # The Fisher fit of the mixture: inverse Fisher information by quadrature.
    z = np.linspace(-200 * s1, 200 * s1, 400001)
    sc = np.asarray(nm.score(jnp.asarray(z.reshape(1, 1, -1))), np.float64).ravel()
    pdf = (1 - eps) * stats.norm.pdf(z, 0, s1) + eps * stats.norm.pdf(z, 0, s2)
    v_f = 1.0 / np.trapezoid(pdf * sc**2, z)
    fit = CorrelatedGaussianLikelihood(np.full((1, N, N // 2 + 1), v_f))
    sigma = 0.05
    # x_t as the sampler sees it: the truth perturbed at sigma.
    x = x_true + sigma * rng.normal(size=N * N)
    keep = np.arange(N * N) != hit
    ref = _conditional_mean(pc, pm, a[keep], v_f * np.eye(N * N - 1), x, y[keep], sigma)
    xt = jnp.asarray(x.reshape(1, N, N), jnp.float32)
    robust = np.asarray(PosteriorDenoiser(prior, obs, method=ScoreWhitenedMMPS(nm, fits=fit))(xt, sigma)).ravel()
    gauss = np.asarray(PosteriorDenoiser(prior, obs, method=GaussianFitMMPS(nm))(xt, sigma)).ravel()
    core = np.asarray(PosteriorDenoiser(prior, obs, method=GaussianFitMMPS(
        GaussianNoiseModel.white(s1**2, (1, N, N))))(xt, sigma)).ravel()
    err = np.abs(robust - ref).max()
    assert err < 0.2 * np.abs(core - ref).max(), (err, np.abs(core - ref).max())
    assert err < 0.5 * np.abs(gauss - ref).max(), (err, np.abs(gauss - ref).max())


def test_score_whitened_mmps_bad_inputs():
    nm = MixtureNoise(1.0, 10.0, 0.1)
    with pytest.raises(TypeError, match="fits"):
        ScoreWhitenedMMPS(nm, fits=[nm.gaussian_fit(), nm.gaussian_fit()])
    with pytest.raises(ValueError, match="max_sigma"):
        ScoreWhitenedMMPS(nm, max_sigma=-1.0)
    with pytest.raises(ValueError, match="trust"):
        ScoreWhitenedMMPS(nm, trust=0.0)
    with pytest.raises(ValueError, match="batch"):
        fisher_power_spectrum(nm, np.zeros((2, 1, N, N)), batch=0)
    with pytest.raises(ValueError, match="cutouts"):
        fisher_power_spectrum(nm, np.zeros((2, 1, N + 2, N + 2)))


@pytest.mark.slow  # compiles a U-Net and its training step: ~50 s of CPU
def test_train_noise_model_progress_bar_and_min_sigma(tmp_path, capsys):
    """The noise training's progress bar is labelled as such (not "train-prior"), and a
    learned model's min_sigma is its floor in data units (floor x the cutouts' std)."""
    from deconvjax.likelihood.learned import noise_train_config, train_noise_model

    rng = np.random.default_rng(0)
    cut = rng.normal(0, 2.5, (16, 1, N, N)).astype(np.float32)
    config = noise_train_config(N, channels=(4, 8), emb_dim=8, steps=2, steps_per_call=1,
                                batch_size=4, warmup_steps=1, checkpoint_every=2)
    model = train_noise_model(cut, tmp_path / "n.eqx", config=config, sigma_floor=0.3)
    err = capsys.readouterr().err
    assert "train-noise" in err and "train-prior" not in err
    assert model.min_sigma == pytest.approx(0.3 * float(np.std(cut)), rel=1e-6)
    assert GaussianNoiseModel.white(1.0, (1, N, N)).min_sigma == 0.0
