"""Plots as a library: Figures returned, the caller's axes used, Jupyter pictures
(``_repr_png_``) of scenes, observations, fit and posterior results; posterior catalogs
against numpy."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import astropy.units as u
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.wcs import WCS
from matplotlib.figure import Figure

from deconvjax import Frame, GaussianMorphology, GaussianPSF, Observation, Scene, Source
from deconvjax import plot as djplot
from deconvjax.fit import CatalogFlag, FitResult
from deconvjax.posterior import DeblendResult, PosteriorResult, posterior_catalog

PNG = b"\x89PNG\r\n\x1a\n"
SHAPE = (16, 18)


@pytest.fixture(scope="module")
def scene_obs():
    frame = Frame(("g", "r", "i"), SHAPE)
    scene = Scene(frame, [Source(np.array([5.0, 8.0, 9.0]), GaussianMorphology(1.3, 0.0, 0.1, shape=(9, 9)), [7.2, 8.1]),
                          Source(np.array([3.0, 2.0, 1.0]), GaussianMorphology(1.0, 0.0, 0.0, shape=(9, 9)), [4.0, 12.0])])
    data = np.random.default_rng(0).normal(0, 0.05, (3, *SHAPE))
    obs = Observation(data, frame=frame, psf=GaussianPSF(1.0), rms=0.05)
    return scene, obs


@pytest.fixture(scope="module")
def posterior():
    rng = np.random.default_rng(2)
    samples = rng.normal(1.0, 0.3, (5, 2, 12, 12)).astype(np.float32)
    return PosteriorResult(samples, samples.mean(0), samples.std(0, ddof=1), (rng.normal(size=(2, 10, 10)),),
                           np.ones(5), np.asarray(4))


@pytest.fixture(scope="module")
def deblended():
    rng = np.random.default_rng(3)
    sources = rng.normal(0.2, 0.05, (40, 3, 2, 7, 7))
    sources[:, 2] -= 0.5  # a negative source
    mean = rng.normal(size=(2, 20, 20))
    corners = np.array([[2, 3], [10, 10], [15, 4]])  # the last crosses the edge (15 + 7 > 20)
    return DeblendResult(sources[:, :, :1], sources, np.ones((3, 2)), corners, mean, np.abs(mean),
                         (rng.normal(size=(2, 20, 20)),), np.ones(40))


def test_plot_functions_return_figures_and_honour_ax(scene_obs, posterior, deblended):
    scene, obs = scene_obs
    data = np.asarray(obs.data)
    fig = djplot.plot_scene(data, data * 0.9, weights=np.asarray(obs.weights))
    assert isinstance(fig, Figure) and len(fig.axes) == 4  # three panels and a colour bar
    # The caller's axes are drawn into, and the caller's figure is returned.
    host = Figure()
    axes = host.subplots(2, 3).ravel()
    assert djplot.plot_scene(data, data, axes=axes[:3]) is host
    assert axes[0].images and axes[1].images and axes[2].images and not axes[3].images
    assert djplot.plot_image(data, ax=axes[3]) is host and axes[3].images
    assert djplot.plot_samples(posterior, n=2, axes=axes[4:6]) is host and axes[5].images
    one = Figure().subplots()
    for f in (djplot.plot_mean, djplot.plot_std):
        assert f(posterior, ax=one) is one.figure
    assert djplot.plot_model(scene, ax=one) is one.figure
    assert isinstance(djplot.plot_model(scene, obs), Figure)
    assert isinstance(djplot.plot_observation(obs), Figure)
    assert isinstance(djplot.plot_posterior(posterior, data=np.ones((2, 10, 10))), Figure)
    assert isinstance(djplot.plot_deblend(deblended, truth=np.ones((3, 2))), Figure)
    with pytest.raises(ValueError, match="axes: 3 axes needed, got 1"):
        djplot.plot_scene(data, data, axes=[one])


def test_flux_posterior_histograms_and_truth_lines(deblended):
    fig = djplot.plot_flux_posteriors(deblended, truth=np.array([[9.8, 9.9], [10.0, 10.1], [-14.0, -15.0]]),
                                      bands=("g", "r"))
    assert len(fig.axes) == 3
    ax = fig.axes[0]
    flux = np.asarray(deblended.sources).sum(axis=(-2, -1))
    # Per band: the histogram, then its mean (dashed) and the truth (solid black).
    xs = [line.get_xdata()[0] for line in ax.get_lines()]
    np.testing.assert_allclose(xs, [flux[:, 0, 0].mean(), 9.8, flux[:, 0, 1].mean(), 9.9])
    assert sum(len(p.get_xy()) > 0 for p in ax.patches) == 2


def test_repr_png(scene_obs, posterior, deblended):
    scene, obs = scene_obs
    result = FitResult(iterations=50, converged=True, failed=False, loss=10.0, chi2_per_dof=1.0, n_params=8,
                       chi2_per_pixel=1.01, loss_history=[(25, 30.0), (50, 10.0)])
    for obj in (scene, obs, result, posterior, deblended):
        png = obj._repr_png_()
        assert isinstance(png, bytes) and png.startswith(PNG), type(obj).__name__
    # A stack of scenes (many cutouts) has no single picture: text repr only.
    stacked = jax.tree.map(lambda x: jnp.stack([x, x]), scene)
    assert stacked._repr_png_() is None


def test_posterior_catalog_against_numpy(deblended):
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, -5.0]
    wcs.wcs.cdelt = [-1e-4, 1e-4]
    t = posterior_catalog(deblended, wcs=wcs, bands=("g", "r"), unit="nanomaggy")
    flux = np.asarray(deblended.sources, np.float64).sum(axis=(-2, -1))
    np.testing.assert_allclose(t["flux_r"].value, flux[:, :, 1].mean(0))
    np.testing.assert_allclose(t["flux_err_g"].value, np.std(flux[:, :, 0], axis=0, ddof=1))
    assert t["flux_err_g"].unit == u.nmgy and t["x"].unit == u.pix
    mean_img = np.asarray(deblended.sources).mean(0)[1].sum(0)
    yy, xx = np.mgrid[:7, :7]
    np.testing.assert_allclose(t["y"][1].value, 10 + (yy * mean_img).sum() / mean_img.sum())
    sky = wcs.pixel_to_world(t["x"].value, t["y"].value)
    assert np.all(t["sky_centroid"].separation(sky).to_value(u.arcsec) < 1e-6)
    assert list(t["flags"]) == [0, 0, CatalogFlag.NEAR_EDGE | CatalogFlag.NEGATIVE_FLUX]
    np.testing.assert_array_equal([t["y"][2].value, t["x"][2].value], [15 + 3, 4 + 3])  # no light: stamp centre


def test_posterior_catalog_of_one_galaxy(posterior):
    t = posterior_catalog(posterior)
    assert len(t) == 1 and t["flux_0"].unit == u.dimensionless_unscaled
    sums = np.asarray(posterior.samples, np.float64).sum(axis=(-2, -1))
    np.testing.assert_allclose(t["flux_err_1"].value, [np.std(sums[:, 1], ddof=1)])
    with pytest.raises(TypeError, match="result: expected a DeblendResult or a PosteriorResult"):
        posterior_catalog(np.ones(3))
