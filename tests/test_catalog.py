"""Catalogs: units, sky centroids, flux errors against the linear least-squares formula
(numpy) and the scatter over noise realisations, footprint chi2, flags, and input
catalogs in deconvjax, photutils and SExtractor conventions."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import astropy.units as u
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.table import QTable, Table
from astropy.wcs import WCS

from deconvjax import Frame, GaussianMorphology, GaussianPSF, Observation, Scene, Source
from deconvjax.fit import CatalogFlag, FitResult, catalog, flux_errors, positions_from, source_fluxes
from deconvjax.io import flux_unit

SHAPE = (24, 26)
BANDS = ("g", "r")
POS = np.array([[11.2, 11.7], [13.4, 15.1], [2.0, 22.5]])  # a blended pair, one at the edge
FLUX = np.array([[300.0, 500.0], [200.0, 150.0], [80.0, -20.0]])


def tan_wcs(shape=SHAPE, scale=0.2):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cd = np.array([[-scale, 0.0], [0.0, scale]]) / 3600.0
    return w


def make_scene(frame, flux=FLUX):
    morphs = [GaussianMorphology(1.6, 0.1, -0.05, shape=(15, 15)), GaussianMorphology(1.2, -0.1, 0.1, shape=(15, 15)),
              GaussianMorphology(1.0, 0.0, 0.0, shape=(15, 15))]
    return Scene(frame, [Source(f, m, p) for f, m, p in zip(flux, morphs, POS)])


@eqx.filter_jit
def _seen(obs, scene):
    return obs(scene.render())


@pytest.fixture(scope="module")
def setup():
    frame = Frame(BANDS, SHAPE, pixel_scale=0.2, wcs=tan_wcs())
    scene = make_scene(frame)
    rng = np.random.default_rng(1)
    # Uneven noise and a few masked pixels, so that W is not a multiple of the identity.
    sigma = rng.uniform(0.5, 1.5, (2, *SHAPE))
    weights = 1.0 / sigma**2
    weights[0, 5:8, 3:9] = 0.0
    zero = Observation(np.zeros((2, *SHAPE)), frame=frame, psf=GaussianPSF(1.1), weights=weights)
    clean = np.asarray(_seen(zero, scene))
    data = clean + rng.normal(size=clean.shape) * sigma
    obs = Observation(data, frame=frame, psf=GaussianPSF(1.1), weights=weights)
    return frame, scene, obs, weights, sigma


def templates(frame, scene, obs):
    """``(source, band, n_pixels)`` observed image of each source at unit spectrum in one
    band, and each source's flux per unit spectrum (``(source, band)``)."""
    n, nb = scene.n_sources, len(frame.bands)
    out = np.zeros((n, nb, obs.data.size))
    per_unit = source_fluxes(eqx.tree_at(lambda s: s.groups, scene,
                                         tuple(eqx.tree_at(lambda g: g.spectrum, g, jnp.ones_like(g.spectrum))
                                               for g in scene.groups)))
    sources = scene.sources()
    for s in range(n):
        for b in range(nb):
            e = np.zeros(nb)
            e[b] = 1.0
            one = Scene(frame, [eqx.tree_at(lambda src: src.spectrum, sources[s], jnp.asarray(e))])
            out[s, b] = np.asarray(_seen(obs, one), np.float64).ravel()
    return out, per_unit


def test_flux_errors_equal_the_linear_least_squares_errors(setup):
    frame, scene, obs, weights, _ = setup
    a, per_unit = templates(frame, scene, obs)
    n, nb = FLUX.shape
    design = a.reshape(n * nb, -1).T  # (pixel, source x band)
    w = weights.ravel().astype(np.float64)
    cov = np.linalg.inv(design.T @ (w[:, None] * design))
    expected = np.abs(per_unit) * np.sqrt(np.diag(cov)).reshape(n, nb)
    err = flux_errors(scene, obs)
    np.testing.assert_allclose(err, expected, rtol=2e-3)
    # Hessian columns a few at a time (large fields) give the same errors.
    np.testing.assert_allclose(flux_errors(scene, obs, batch=4), err, rtol=1e-5)
    # The blended pair's errors hold their covariance: larger than either alone.
    alone = np.abs(per_unit) / np.sqrt(np.einsum("sbp,p,sbp->sb", a, w, a))
    assert np.all(err[:2] > 1.05 * alone[:2])


def test_flux_errors_match_the_scatter_over_noise_realisations(setup):
    frame, scene, obs, weights, sigma = setup
    a, per_unit = templates(frame, scene, obs)
    n, nb = FLUX.shape
    design = a.reshape(n * nb, -1).T
    w = weights.ravel().astype(np.float64)
    normal = design.T @ (w[:, None] * design)
    clean = design @ (FLUX / per_unit).ravel()
    rng = np.random.default_rng(7)
    fluxes = []
    for _ in range(400):
        d = clean + rng.normal(size=clean.shape) * sigma.ravel()
        amp = np.linalg.solve(normal, design.T @ (w * d))
        fluxes.append(amp.reshape(n, nb) * per_unit)
    scatter = np.std(fluxes, axis=0, ddof=1)
    # 400 draws: the std is known to ~3.5%; allow 4 sigma.
    np.testing.assert_allclose(flux_errors(scene, obs), scatter, rtol=0.15)


def test_catalog_units_sky_centroid_chi2_and_flags(setup):
    frame, scene, obs, weights, _ = setup
    t = catalog(scene, frame, obs, unit="nanomaggy")
    assert isinstance(t, QTable) and len(t) == 3
    assert t["flux_g"].unit == u.nmgy and t["flux_err_r"].unit == u.nmgy
    assert t["deblended_flux_g"].unit == u.nmgy
    assert t["x"].unit == u.pix and t["centroid_y"].unit == u.pix
    np.testing.assert_allclose(t["flux_g"].value, FLUX[:, 0], rtol=1e-4)
    np.testing.assert_allclose(t["y"].value, POS[:, 0])
    np.testing.assert_allclose(t["snr_r"], t["flux_r"].value / t["flux_err_r"].value)
    # sky_centroid is the WCS's sky position of (x, y).
    sky = tan_wcs().pixel_to_world(POS[:, 1], POS[:, 0])
    assert isinstance(t["sky_centroid"], SkyCoord)
    assert np.all(t["sky_centroid"].separation(sky).to_value(u.arcsec) < 1e-6)
    # Footprint chi2 against numpy: the whole residual, whitened, over each source's
    # 1%-of-peak isophote (summed over bands) of its observed image.
    a, per_unit = templates(frame, scene, obs)
    n, nb = FLUX.shape
    images = np.einsum("sbp,sb->sp", a, FLUX / per_unit).reshape(n, nb, *SHAPE)
    resid2 = (np.asarray(obs.data, np.float64) - images.sum(0)) ** 2 * weights
    for s in range(n):
        img = np.abs(images[s]).sum(0)
        foot = img >= 0.01 * img.max()
        assert t["chi2"][s] == pytest.approx((resid2 * foot).sum(), rel=1e-3)
        assert t["npix"][s] == int(((weights > 0) * foot).sum())
    # Noise-only residuals (the truth scene): chi2 per pixel about 1.
    assert np.all(np.abs(t["chi2_per_pixel"] - 1) < 0.25)
    # Flags: the edge source is clipped and negative in r; the others clean.
    assert list(t["flags"]) == [0, 0, CatalogFlag.NEAR_EDGE | CatalogFlag.NEGATIVE_FLUX]
    bad = FitResult(iterations=3, converged=False, failed=False, loss=1.0, chi2_per_dof=1.0, n_params=6)
    assert np.all(catalog(scene, frame, obs, result=bad, errors=False)["flags"] & CatalogFlag.NOT_CONVERGED)
    # No observations: no errors, flagged.
    t0 = catalog(scene, frame)
    assert "flux_err_g" not in t0.colnames and np.all(t0["flags"] & CatalogFlag.ERROR_UNDEFINED)
    assert t0["flux_g"].unit == u.dimensionless_unscaled


def test_error_undefined_where_no_data(setup):
    frame, scene, obs, weights, _ = setup
    w = weights.copy()
    w[1] = 0.0  # band r masked everywhere: r amplitudes are unconstrained
    masked = Observation(np.asarray(obs.data), frame=frame, psf=GaussianPSF(1.1), weights=w)
    err = flux_errors(scene, masked)
    assert np.all(np.isfinite(err[:, 0])) and np.all(np.isnan(err[:, 1]))
    assert np.all(catalog(scene, frame, masked)["flags"] & CatalogFlag.ERROR_UNDEFINED)


def test_flux_unit_of_bunit():
    assert flux_unit("nanomaggy") == u.nmgy
    assert flux_unit("ELECTRONS/S") == u.electron / u.s
    assert flux_unit("MJy/sr") == u.MJy / u.sr
    assert flux_unit("data units") == u.dimensionless_unscaled
    assert flux_unit(None) == u.dimensionless_unscaled


# ------------------------------------------------------------------------------------
# Input catalogs
# ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wcs_frame():
    return Frame(BANDS, SHAPE, pixel_scale=0.2, wcs=tan_wcs())


def test_photutils_columns(wcs_frame):
    t = QTable({"xcentroid": POS[:, 1], "ycentroid": POS[:, 0]})
    np.testing.assert_array_equal(positions_from(wcs_frame, t), POS)
    sky = tan_wcs().pixel_to_world(POS[:, 1], POS[:, 0])
    np.testing.assert_allclose(positions_from(wcs_frame, QTable({"sky_centroid": sky})), POS, atol=1e-6)


def test_sextractor_columns_are_one_based(wcs_frame):
    t = Table({"NUMBER": [1, 2, 3], "X_IMAGE": POS[:, 1] + 1.0, "Y_IMAGE": POS[:, 0] + 1.0})
    # Exactly one pixel off the 0-based convention (up to float rounding of the +1).
    np.testing.assert_allclose(positions_from(wcs_frame, t), POS, rtol=0, atol=1e-12)
    sky = tan_wcs().pixel_to_world(POS[:, 1], POS[:, 0])
    t = Table({"ALPHA_J2000": sky.ra.deg, "DELTA_J2000": sky.dec.deg})
    np.testing.assert_allclose(positions_from(wcs_frame, t), POS, atol=1e-6)


def test_sextractor_ascii_file_through_the_command_reader(wcs_frame, tmp_path):
    # An ASCII_HEAD file as SExtractor writes it.
    from deconvjax.fit._cli import _read_catalog

    lines = ["#   1 NUMBER                 Running object number",
             "#   2 X_IMAGE                Object position along x                [pixel]",
             "#   3 Y_IMAGE                Object position along y                [pixel]"]
    lines += [f"{k + 1:10d} {x + 1:10.4f} {y + 1:10.4f}" for k, (y, x) in enumerate(POS)]
    path = tmp_path / "se.cat"
    path.write_text("\n".join(lines) + "\n")
    np.testing.assert_allclose(_read_catalog(path, wcs_frame), POS, atol=1e-9)


def test_deconvjax_catalog_round_trips(setup, tmp_path):
    frame, scene, obs, _, _ = setup
    t = catalog(scene, frame, obs)
    t.write(tmp_path / "c.ecsv")
    np.testing.assert_allclose(positions_from(frame, QTable.read(tmp_path / "c.ecsv")), POS)
    del t["y"], t["x"]  # sky positions alone
    np.testing.assert_allclose(positions_from(frame, t), POS, atol=1e-6)


def test_unknown_columns_are_named(wcs_frame):
    with pytest.raises(ValueError, match=r"positions: no known position columns; accepted: .*xcentroid.*X_IMAGE.*ALPHA_J2000"):
        positions_from(wcs_frame, Table({"a": [1.0], "b": [2.0]}), "positions")
    nowcs = Frame(BANDS, SHAPE)
    with pytest.raises(ValueError, match="catalog gives sky positions but the frame has no WCS"):
        positions_from(nowcs, Table({"ra": [150.1], "dec": [2.2]}))


def test_command_names_the_catalog_option(wcs_frame, tmp_path):
    import click

    from deconvjax.fit._cli import _read_catalog

    Table({"flux": [1.0]}).write(tmp_path / "bad.ecsv")
    with pytest.raises(click.BadParameter, match="no known position columns; accepted") as err:
        _read_catalog(tmp_path / "bad.ecsv", wcs_frame)
    assert err.value.param_hint == "--catalog"
