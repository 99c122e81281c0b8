"""The sky background profiled out of the likelihood, against weighted least squares
done independently with numpy, and a fit of a galaxy on a sky pedestal and gradient."""

import galsim
import jax.numpy as jnp
import numpy as np
import pytest

import deconvjax as dj


def _plane_design(shape):
    ny, nx = shape
    y, x = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    return np.stack([np.ones(shape).ravel(), y.ravel(), x.ravel()], axis=1)


@pytest.mark.parametrize("order", [0, 1])
def test_chi2_is_the_weighted_least_squares_residual(order):
    rng = np.random.default_rng(3)
    shape = (24, 28)
    frame = dj.Frame(["g", "r"], shape)
    data = rng.normal(size=(2, *shape)) + np.array([3.0, -1.0])[:, None, None]
    weights = rng.uniform(0.5, 2.0, size=(2, *shape))
    weights[0, :5, :7] = 0.0  # masked corner
    obs = dj.Observation(data, frame=frame, psf=dj.GaussianPSF(1.5), weights=weights,
                         background=dj.PlaneBackground(order))
    model = jnp.asarray(rng.normal(size=(2, *shape)), dtype=jnp.float32)
    image = np.asarray(obs(model), dtype=np.float64)
    design = _plane_design(shape)[:, : 1 + 2 * order]
    chi2 = 0.0
    for b in range(2):
        sw = np.sqrt(weights[b].ravel())
        coef, *_ = np.linalg.lstsq(design * sw[:, None], (data[b] - image[b]).ravel() * sw, rcond=None)
        chi2 += np.sum(weights[b].ravel() * ((data[b] - image[b]).ravel() - design @ coef) ** 2)
        sky = np.asarray(obs.background_model(model))[b]
        np.testing.assert_allclose(sky.ravel(), design @ coef, rtol=1e-3, atol=1e-4)
    assert float(obs.chi2(model)) == pytest.approx(chi2, rel=1e-4)


def test_fit_on_sky_pedestal_and_gradient():
    """A galaxy on a sky of 5 sigma plus a gradient: with the background the fit is the
    fit of the same data without sky, and reaches the noise; without it, the sky goes into
    the galaxy, and a constant alone cannot reach the noise."""
    rng = np.random.default_rng(0)
    n, scale, sigma = 48, 0.2, 1.0
    psf = galsim.Moffat(beta=3.5, fwhm=0.8)
    image = galsim.ImageD(n, n, scale=scale)
    galsim.Convolve(galsim.Sersic(n=1.5, half_light_radius=0.6, flux=800.0), psf).drawImage(image)
    y, x = np.mgrid[:n, :n]
    sky = 5.0 + 3.0 * (x - n / 2) / n - 2.0 * (y - n / 2) / n
    noise = rng.normal(0.0, sigma, (n, n))
    psf_image = psf.drawImage(nx=25, ny=25, scale=scale).array
    frame = dj.Frame(["r"], (n, n), pixel_scale=scale, psf=dj.psf.model_psf_for(psf_image, scale))

    def run(data, background):
        obs = dj.Observation(data[None], frame=frame, psf=dj.ArrayPSF(psf_image, pixel_scale=scale),
                             variance=sigma**2, background=background)
        scene = dj.fit.init_scene(frame, obs, [(23.5, 23.5)], kind="pixel")
        fitted, result = dj.fit.fit(scene, obs, max_iter=300, progress=False)
        return float(np.asarray(dj.fit.source_fluxes(fitted)).sum()), result

    reference, _ = run(image.array + noise, None)
    assert reference == pytest.approx(800.0, rel=0.06)  # the noise allows ~3% (1 sigma)
    flux, result = run(image.array + sky + noise, dj.PlaneBackground())
    assert flux == pytest.approx(reference, rel=0.01)
    assert 0.8 < result.chi2_per_pixel < 1.2 and result.reached_noise
    flux_constant, result_constant = run(image.array + sky + noise, dj.PlaneBackground(order=0))
    assert not result_constant.reached_noise
    flux_none, result_none = run(image.array + sky + noise, None)
    assert abs(flux_none - reference) > 10 * abs(flux - reference) + 100
    assert not result_none.reached_noise
