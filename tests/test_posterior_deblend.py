import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deconvjax.diffusion import VESDE, StationaryGaussianDenoiser  # noqa: E402
from deconvjax.frame import Frame  # noqa: E402
from deconvjax.observation import Observation  # noqa: E402
from deconvjax.posterior import MMPS, PosteriorDenoiser  # noqa: E402
from deconvjax.posterior.deblend import ProductDenoiser, SourcePlacement, deblend  # noqa: E402
from deconvjax.psf import GaussianPSF  # noqa: E402

S, F = 8, 16
CENTERS = np.array([[6.0, 6.0], [9.0, 10.0]])
SPECTRA = np.array([[0.5, 1.5], [1.4, 0.6]])


def _prior(amp=0.0, p0=1.0):
    k2 = np.fft.fftfreq(S)[:, None] ** 2 + np.fft.fftfreq(S)[None, :] ** 2
    power = p0 / (1.0 + (k2 / 0.02) ** 1.5)[None]
    yy, xx = np.mgrid[:S, :S]
    mean = amp * np.exp(-((yy - S // 2) ** 2 + (xx - S // 2) ** 2) / (2 * 1.5**2))[None]
    return StationaryGaussianDenoiser(mean, power), mean, power


def _scene_obs(data, frame, rms=0.1):
    return Observation(data, frame=frame, psf=GaussianPSF(1.2), rms=rms)


def test_placement_is_linear_and_drops_outside_pixels():
    emb = SourcePlacement(jnp.asarray(SPECTRA, jnp.float32), jnp.array([[-3, 2], [12, 12]]), (F, F))
    x = jnp.ones((2, 1, S, S))
    m = np.asarray(emb(x))
    assert m.shape == (2, F, F)
    # Source 0 loses its top 3 rows, source 1 its 4 rightmost/bottom rows and columns.
    np.testing.assert_allclose(m[0].sum(), 0.5 * 5 * 8 + 1.4 * 4 * 4, rtol=1e-6)
    assert m[0, F - 1, 0] == 0  # nothing wrapped around


def test_product_posterior_is_exact():
    prior, mean, power = _prior()
    frame = Frame(["g", "r"], (F, F), psf=GaussianPSF(0.3))
    rng = np.random.default_rng(0)
    obs = _scene_obs(rng.normal(size=(2, F, F)), frame)
    corners = np.round(CENTERS).astype(np.int32) - S // 2
    emb = SourcePlacement(jnp.asarray(SPECTRA, jnp.float32), jnp.asarray(corners), (F, F))
    den = PosteriorDenoiser(ProductDenoiser(prior, 2), obs, method=MMPS(cg_iters=48), embed=emb)
    n = 2 * S * S
    basis = np.eye(S * S).reshape(S * S, 1, S, S)
    c1 = np.stack([np.fft.ifft2(power * np.fft.fft2(b, norm="ortho"), norm="ortho").real.ravel()
                   for b in basis], 1)
    cov = np.kron(np.eye(2), c1)
    eye = jnp.eye(n, dtype=jnp.float32).reshape(n, 2, 1, S, S)
    a = np.asarray(jax.vmap(lambda v: obs(emb(v)))(eye).reshape(n, -1), np.float64).T
    call = jax.jit(lambda x, s: den(x, s))
    for sigma in (0.05, 1.0, 20.0):
        xt = rng.normal(size=(2, 1, S, S)) * np.sqrt(1 + sigma**2)
        big = np.concatenate([np.eye(n), a])
        y = np.concatenate([xt.ravel(), np.asarray(obs.data, np.float64).ravel()])
        noise = np.concatenate([np.full(n, sigma**2), np.full(a.shape[0], 0.01)])
        exact = cov @ big.T @ np.linalg.solve(big @ cov @ big.T + np.diag(noise), y)
        got = np.asarray(call(jnp.asarray(xt, jnp.float32), jnp.float32(sigma))).ravel()
        assert np.abs(got - exact).max() < 3e-3 * np.abs(exact).max(), sigma


def test_deblend_recovers_spectra_and_fits_data():
    prior, mean, power = _prior(amp=4.0, p0=0.05)
    frame = Frame(["g", "r"], (F, F), psf=GaussianPSF(0.3))
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 1, S, S))
    morph = mean + np.fft.ifft2(np.sqrt(power) * np.fft.fft2(z, norm="ortho"), norm="ortho").real
    corners = np.round(CENTERS).astype(np.int32) - S // 2
    emb = SourcePlacement(jnp.asarray(SPECTRA, jnp.float32), jnp.asarray(corners), (F, F))
    clean = _scene_obs(np.zeros((2, F, F)), frame)(emb(jnp.asarray(morph, jnp.float32)))
    obs = _scene_obs(np.asarray(clean) + 0.1 * rng.normal(size=(2, F, F)), frame)
    res = deblend(jr.key(0), prior, obs, CENTERS, n_samples=8, sde=VESDE(1e-3, 50.0),
                  n_init_samples=8, method=MMPS(cg_iters=4))
    assert res.sources.shape == (8, 2, 2, S, S)
    np.testing.assert_allclose(np.asarray(res.spectra), SPECTRA, rtol=0.1)
    assert 0.7 < float(res.chi2_per_pixel.mean()) < 1.3
    err = np.abs(np.asarray(res.morphologies.mean(0)) - morph).mean()
    assert err < 0.5 * np.abs(morph - mean).mean() + 0.1


def test_deblend_bad_input():
    prior, _, _ = _prior()
    frame = Frame(["g", "r", "i"], (F, F), psf=GaussianPSF(0.3))
    obs = Observation(np.zeros((3, F, F)), frame=frame, psf=GaussianPSF(1.2), rms=0.1)
    with pytest.raises(ValueError, match="centers"):
        deblend(jr.key(0), prior, obs, np.zeros(3), sde=VESDE())
    two = StationaryGaussianDenoiser(np.zeros((2, S, S)), np.ones((2, S, S)))
    with pytest.raises(ValueError, match="prior has 2 bands"):
        deblend(jr.key(0), two, obs, CENTERS, sde=VESDE())
