"""Learned noise likelihoods (SLIC, issue 20 part A): noise cutouts, the noise score model,
the MAP likelihood, `train-noise` and `fit --noise-model`.

References are independent of the code under test: GalSim's correlated noise against our
FFT power spectra, the analytic Gaussian score (`GaussianNoiseModel`), autodiff of the
dense Gaussian chi2, and planted sources / cosmic rays of known position and flux."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from scipy.signal import correlate2d  # noqa: E402

from deconvjax.likelihood.correlated import CorrelatedGaussianLikelihood  # noqa: E402
from deconvjax.likelihood.gaussian import GaussianLikelihood  # noqa: E402
from deconvjax.likelihood.learned import (  # noqa: E402
    LearnedNoiseModel,
    NoiseModelLikelihood,
    empirical_power_spectrum,
    load_noise_model,
    noise_train_config,
    save_noise_model,
    train_noise_model,
)
from deconvjax.likelihood.noise_data import (  # noqa: E402
    blank_cutouts,
    check_noise_cutouts,
    correlated_noise_cutouts,
    cosmos_blank_cutouts,
    non_gaussian_noise_cutouts,
)
from deconvjax.likelihood.noise_model import GaussianNoiseModel  # noqa: E402

SIZE = 16


def _correlation():
    """A well-conditioned correlation function (5x5, unit variance): white noise plus
    white noise smoothed by a 3x3 kernel, so the power spectrum is bounded away from 0."""
    k = np.array([[0.1, 0.2, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.1]])
    cf = correlate2d(k, k, mode="full")
    cf[2, 2] += 0.3
    return cf / cf[2, 2]


def _reference(size=SIZE):
    cf = _correlation()
    return GaussianNoiseModel.from_likelihood(
        CorrelatedGaussianLikelihood.from_correlation_function(cf, (size, size)), size)


def _blob(flux, y0, x0, size=SIZE, sigma=1.5):
    y, x = np.mgrid[:size, :size]
    g = np.exp(-((y - y0) ** 2 + (x - x0) ** 2) / (2 * sigma**2))
    return flux * g / g.sum()


# ----------------------------------------------------------------------------- cutouts


def test_blank_cutouts_avoid_sources_and_have_zero_mean():
    rng = np.random.default_rng(1)
    ny, nx = 160, 160
    sky = 5.0
    image = sky + rng.normal(0, 1.0, (ny, nx))
    truth = np.zeros((ny, nx))
    centres = [(30, 40), (100, 120), (70, 70), (140, 20)]
    yy, xx = np.mgrid[:ny, :nx]
    for cy, cx in centres:
        truth += 400 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2)) / (2 * np.pi * 9)
    image = image + truth
    image[0:16, 100:116] = np.nan
    c = blank_cutouts(image, size=16, seed=0)
    assert c.shape[1:] == (1, 16, 16) and len(c) >= 40
    # No cutout holds a source pixel brighter than 0.05 sigma: rebuild where each came from.
    assert np.all(np.isfinite(c))
    assert abs(float(c.mean())) < 0.1  # sky subtracted: zero mean within 0.1 sigma
    assert abs(float(c.std()) - 1.0) < 0.05
    # The cutouts' pixel sums are what pure noise gives (a source tile would add ~ +40).
    sums = c.sum(axis=(1, 2, 3))
    assert np.max(np.abs(sums)) < 5 * 16
    # Explicit segmentation: all tiles but those touching it are kept.
    seg = (truth > 1e-3).astype(int)
    c2 = blank_cutouts(image, size=16, segmentation=seg, n=20, seed=3)
    assert c2.shape == (20, 1, 16, 16)
    with pytest.raises(ValueError, match="image: only .* blank"):
        blank_cutouts(image, size=16, n=1000)
    with pytest.raises(ValueError, match="segmentation"):
        blank_cutouts(image, size=16, segmentation=np.zeros((3, 3)))


def test_blank_cutouts_mask_rejects_tiles(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(2)
    image = rng.normal(0, 2.0, (64, 64))
    path = tmp_path / "img.fits"
    fits.writeto(path, image)
    mask = np.ones((64, 64), bool)
    mask[:32, :32] = False
    c = blank_cutouts(path, mask, size=16, segmentation=np.zeros((64, 64), int), seed=0)
    # A random grid origin leaves 1 to 4 tiles wholly inside the unmasked quadrant.
    assert 1 <= len(c) <= 4


def test_correlated_noise_matches_its_correlation_function():
    cf = _correlation()
    c = correlated_noise_cutouts(cf, n=1500, size=SIZE, seed=0)
    assert abs(float(c.var()) - 1.0) < 0.05
    p = empirical_power_spectrum(c)
    ref = np.asarray(_reference().power_spectrum)
    rel = np.abs(p - ref) / ref
    # 1500 periodograms: ~3% scatter per frequency.
    assert np.median(rel) < 0.06 and rel.max() < 0.25


def test_non_gaussian_mix_has_outliers_and_zero_median():
    c = non_gaussian_noise_cutouts(n=200, size=SIZE, sigma=1.0, seed=0, cosmic_ray_rate=1.0)
    assert c.shape == (200, 1, SIZE, SIZE)
    assert np.mean(c > 10) > 1e-3  # cosmic rays and hot pixels
    assert abs(float(np.median(c))) < 0.6  # Poisson at 4 counts: median -0.5 sigma at worst
    assert np.mean(np.abs(c) < 3) > 0.97


def test_check_noise_cutouts_errors():
    c = np.zeros((5, 1, 8, 8), np.float32)
    c[3, 0, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"1 of 5 cutouts contain NaN.*\[3\]"):
        check_noise_cutouts(c)
    seg = np.zeros((5, 8, 8), int)
    seg[1, 4, 4] = seg[4, 0, 0] = 7
    with pytest.raises(ValueError, match=r"2 of 5 cutouts contain sources.*\[1, 4\]"):
        check_noise_cutouts(np.zeros((5, 1, 8, 8)), seg)
    with pytest.raises(ValueError, match="cutouts: expected"):
        check_noise_cutouts(np.zeros((5, 8, 8)))


# ----------------------------------------------------------------------------- likelihood


def test_noise_model_likelihood_gradient_is_the_gaussian_one():
    """With the analytic Gaussian noise model, the custom-VJP gradient equals autodiff of
    the dense Gaussian chi2, masked pixels included."""
    ref = _reference()
    lik = NoiseModelLikelihood(ref)
    gauss = CorrelatedGaussianLikelihood(ref.power_spectrum)
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.normal(size=(1, SIZE, SIZE)))
    model = jnp.asarray(rng.normal(size=(1, SIZE, SIZE)))
    w = jnp.ones((1, SIZE, SIZE))
    g1 = jax.grad(lambda m: lik.chi2(data, m, w))(model)
    g2 = jax.grad(lambda m: gauss.chi2(data, m, w))(model)
    np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lik.chi2(data, model, w), gauss.chi2(data, model, w), rtol=1e-6)
    # Dense reference: chi2 = r^T C^-1 r with C the circulant covariance.
    cov = np.linalg.inv(np.asarray(jax.jacfwd(lambda r: -ref.score(r))(jnp.zeros((1, SIZE, SIZE)))
                                   ).reshape(SIZE**2, SIZE**2))
    r = np.asarray(data - model).ravel()
    g_dense = -2 * np.linalg.solve(cov, r)
    np.testing.assert_allclose(np.asarray(g1).ravel(), g_dense, rtol=1e-4, atol=1e-5)
    wm = w.at[0, 3:6, 4:9].set(0.0)
    gm = jax.grad(lambda m: lik.chi2(data, m, wm))(model)
    assert float(jnp.abs(gm[0, 3:6, 4:9]).max()) == 0.0
    jitted = jax.jit(jax.grad(lambda m: lik.chi2(data, m, w)))(model)
    np.testing.assert_allclose(jitted, g1, rtol=1e-5, atol=1e-6)


def test_noise_model_likelihood_shape_errors():
    lik = NoiseModelLikelihood(_reference())
    w = jnp.ones((1, 32, 32))
    with pytest.raises(ValueError, match=r"data: the noise model describes images of shape .*\(1, 16, 16\)"):
        lik.chi2(jnp.zeros((1, 32, 32)), jnp.zeros((1, 32, 32)), w)
    with pytest.raises(ValueError, match="band"):
        lik.check_shape((3, SIZE, SIZE))
    with pytest.raises(TypeError, match="noise_model"):
        NoiseModelLikelihood(GaussianLikelihood())


def test_load_noise_model_rejects_other_files(tmp_path):
    bad = tmp_path / "x.eqx"
    bad.write_bytes(b"not a checkpoint\n")
    with pytest.raises(ValueError, match="not a deconvjax noise model"):
        load_noise_model(bad)
    from importlib import resources

    from deconvjax.diffusion.prior import SHIPPED_PRIOR  # a galaxy prior, not a noise model

    shipped = resources.files("deconvjax") / "data" / "prior" / SHIPPED_PRIOR
    if shipped.is_file():
        with pytest.raises(ValueError, match="not a deconvjax noise model"):
            load_noise_model(str(shipped))


# ----------------------------------------------------------------------------- learned


def _fit_flux(likelihood, data, profile_fn, init, steps=300, lr=0.05):
    """MAP of (flux, y0, x0) minimising chi2 / 2 with Adam, inside one lax.scan."""
    w = jnp.ones_like(data)
    opt = optax.adam(lr)

    def loss(p):
        return 0.5 * likelihood.chi2(data, profile_fn(p)[None], w)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s)
        return (optax.apply_updates(p, u), s), None

    p0 = jnp.asarray(init, dtype=float)
    (p, _), _ = jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)
    return p


def _profile(p, size=SIZE, sigma=1.5):
    y, x = jnp.mgrid[:size, :size]
    g = jnp.exp(-((y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * sigma**2))
    return p[0] * 10.0 * g / (2 * jnp.pi * sigma**2)


@pytest.fixture(scope="module")
def gaussian_noise_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("noise") / "gauss.eqx"
    cut = correlated_noise_cutouts(_correlation(), n=2048, size=SIZE, seed=0)
    cfg = noise_train_config(SIZE, steps=int(os.environ.get("SLIC_TEST_STEPS", 800)),
                             learning_rate=3e-3, sigma_min=0.02, sigma_max=10.0)
    model = train_noise_model(cut, out, config=cfg, seed=0, progress=False, resume=False)
    return model, out


@pytest.mark.slow
def test_learned_score_matches_analytic_gaussian(gaussian_noise_model):
    model, out = gaussian_noise_model
    ref = _reference()
    test = jnp.asarray(correlated_noise_cutouts(_correlation(), n=64, size=SIZE, seed=11))
    errors = {}
    for sigma in (0.3, 1.0, 3.0):
        a = jax.vmap(lambda n: model.score(n, sigma))(test)
        b = jax.vmap(lambda n: ref.score(n, sigma))(test)
        errors[sigma] = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    print("relative L2 error of the learned score:", errors)
    assert errors[3.0] < 0.1 and errors[1.0] < 0.2 and errors[0.3] < 0.35
    # Save / load round trip keeps the score and the header.
    path = out.parent / "copy.eqx"
    save_noise_model(path, model)
    back = load_noise_model(path)
    assert isinstance(back, LearnedNoiseModel) and back.shape == (1, SIZE, SIZE)
    assert back.scale == pytest.approx(model.scale)
    np.testing.assert_allclose(back.score(test[0], 1.0), model.score(test[0], 1.0), rtol=1e-5, atol=1e-5)
    # The Gaussian fit is the training cutouts' power spectrum.
    rel = np.abs(np.asarray(back.gaussian_fit().power_spectrum) - np.asarray(ref.power_spectrum))
    assert np.median(rel / np.asarray(ref.power_spectrum)) < 0.06


@pytest.mark.slow
def test_learned_map_fit_matches_correlated_gaussian(gaussian_noise_model):
    model, _ = gaussian_noise_model
    ref = _reference()
    lik_l = NoiseModelLikelihood(model)
    lik_g = CorrelatedGaussianLikelihood(ref.power_spectrum)
    noise = correlated_noise_cutouts(_correlation(), n=4, size=SIZE, seed=21)[:, 0]
    truth = _blob(60.0, 7.6, 8.3)
    fl, fg = [], []
    for n in noise:
        data = jnp.asarray(truth + n)[None]
        fl.append(np.asarray(_fit_flux(lik_l, data, _profile, [5.0, 8.0, 8.0])))
        fg.append(np.asarray(_fit_flux(lik_g, data, _profile, [5.0, 8.0, 8.0])))
    fl, fg = np.array(fl), np.array(fg)
    flux_sd = np.std(fg[:, 0])  # scatter of the Gaussian MAP flux over noise draws
    diff = np.abs(fl - fg)
    print("learned vs Gaussian MAP (flux/10, y0, x0) differences:", diff.mean(axis=0), "flux sd", flux_sd)
    assert np.all(diff[:, 0] < 0.5 * max(flux_sd, 0.1))
    assert np.all(diff[:, 1:] < 0.15)  # pixels


@pytest.mark.slow
def test_cosmic_ray_does_not_pull_the_learned_fit(tmp_path):
    sigma = 1.0
    cut = non_gaussian_noise_cutouts(n=4096, size=SIZE, sigma=sigma, seed=0, cosmic_ray_rate=1.0,
                                     hot_pixel_rate=5e-3, poisson_counts=None)
    cfg = noise_train_config(SIZE, steps=int(os.environ.get("SLIC_TEST_STEPS", 800)),
                             learning_rate=3e-3, sigma_min=0.02, sigma_max=100.0)
    model = train_noise_model(cut, tmp_path / "mix.eqx", config=cfg, seed=0, progress=False)
    truth = _blob(60.0, 8.0, 8.0)
    rng = np.random.default_rng(3)
    data = truth + rng.normal(0, sigma, truth.shape)
    data[10, 5:9] += 40.0  # a cosmic-ray track next to the galaxy: 160 units (the galaxy: 60)
    data = jnp.asarray(data)[None]
    lik_l = NoiseModelLikelihood(model)
    lik_g = CorrelatedGaussianLikelihood(np.asarray(model.gaussian_fit().power_spectrum))
    lik_w = GaussianLikelihood()
    pl = _fit_flux(lik_l, data, _profile, [5.0, 8.0, 8.0], steps=500)
    pw = _fit_flux(lik_w, data, _profile, [5.0, 8.0, 8.0], steps=500)
    pg = _fit_flux(lik_g, data, _profile, [5.0, 8.0, 8.0], steps=500)
    err_l, err_w, err_g = (abs(float(p[0]) * 10 - 60.0) for p in (pl, pw, pg))
    print(f"flux error with a cosmic ray: learned {err_l:.2f}, white Gaussian {err_w:.2f}, "
          f"Gaussian fit {err_g:.2f} (true flux 60, noise per pixel 1)")
    assert err_w > 10.0
    assert err_l < 0.4 * err_w


# ----------------------------------------------------------------------------- CLI


def test_cli_help_texts():
    from click.testing import CliRunner

    from deconvjax import cli

    r = CliRunner().invoke(cli.main, ["train-noise", "--help"])
    assert r.exit_code == 0
    for opt in ("--cosmos", "--correlation", "--simulate-mix", "--size", "--steps", "--out", "--seed",
                "--resume", "--no-progress", "--mask"):
        assert opt in r.output
    r = CliRunner().invoke(cli.main, ["fit", "--help"])
    assert r.exit_code == 0 and "--noise-model" in r.output
    r = CliRunner().invoke(cli.main, ["train-noise", "--out", "x.eqx"])
    assert r.exit_code != 0 and "exactly one source of noise" in r.output


@pytest.mark.slow
def test_cli_train_noise_then_fit_with_it(tmp_path):
    """train-noise on the simulated mix (a tiny net, a few steps), then fit --noise-model
    on an image of that size; another image size is a clear --noise-model error."""
    from astropy.io import fits
    from click.testing import CliRunner
    from helpers import integrated_gaussian

    from deconvjax import cli

    n = 24
    out = tmp_path / "noise.eqx"
    r = CliRunner().invoke(cli.main, ["train-noise", "--simulate-mix", "--size", str(n), "--n", "64",
                                      "--channels", "8", "--steps", "4", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "noise model for (1, 24, 24)" in r.output
    model = load_noise_model(out)
    assert model.shape == (1, n, n)
    rng = np.random.default_rng(0)
    for size in (n, 32):
        # The mix's Gaussian part has sigma 1 (its std, with outliers, is larger).
        img = 300.0 * integrated_gaussian((size, size), (size / 2 - 0.4, size / 2 + 0.3), 1.8)
        img = img + rng.normal(size=(size, size))
        fits.writeto(tmp_path / f"img{size}.fits", img.astype(np.float32), fits.Header({"PIXSCALE": 0.2}),
                     overwrite=True)
    psf = integrated_gaussian((15, 15), (7, 7), 1.2)
    fits.writeto(tmp_path / "psf.fits", (psf / psf.sum()).astype(np.float32), fits.Header({"PIXSCALE": 0.2}))

    def fit(size):
        return CliRunner().invoke(cli.main, [
            "fit", str(tmp_path / f"img{size}.fits"), "--psf", str(tmp_path / "psf.fits"), "--kind", "gaussian",
            "--no-structure", "--sky", "none", "--rms", "1", "--max-iter", "50",
            "--noise-model", str(out), "--out", str(tmp_path / f"out{size}"), "--no-progress"])

    r = fit(n)
    assert "learned noise model" in r.output, r.output
    assert (tmp_path / f"out{n}" / "catalog.ecsv").is_file(), r.output
    r = fit(32)
    assert r.exit_code == 2 and "--noise-model" in r.output and "(1, 24, 24)" in r.output, r.output


def test_cosmos_blank_cutouts_are_zero_mean_sky(cosmos_dir):
    """Blank-sky cutouts of the real COSMOS stamps: zero mean within 0.1 sigma after the
    per-stamp sky subtraction, and no galaxy light (the sum over each cutout is within what
    the noise alone gives, with margin for correlated noise)."""
    c = cosmos_blank_cutouts(cosmos_dir, size=16, n_per_stamp=4, seed=0)
    assert c.shape[1:] == (1, 16, 16) and len(c) >= 10
    assert abs(float(c.mean())) < 0.1 * float(c.std())
    sums = c.sum(axis=(1, 2, 3)) / float(c.std())
    # Pure white noise gives sums of std 16; ACS correlations roughly double it.
    assert np.max(np.abs(sums)) < 8 * 16
