"""Every image product of ``fit`` and ``sample`` keeps the observation's WCS and BUNIT:
written, read back with astropy, and compared pixel by pixel on the sky."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable
from astropy.wcs import WCS
from click.testing import CliRunner

from deconvjax import Frame, GaussianMorphology, GaussianPSF, Observation, PlaneBackground, Scene, Source
from deconvjax.fit import write_products
from deconvjax.posterior import PosteriorResult
from deconvjax.posterior.products import write_posterior

SHAPE = (20, 22)
PIXELS = np.array([[0.0, 0.0], [21.0, 19.0], [5.5, 13.25]])  # (x, y)


def sip_free_tan(shape=SHAPE, scale=0.25, rotation=0.3):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.1, -27.8]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    c, s = np.cos(rotation), np.sin(rotation)
    w.wcs.cd = np.array([[-c, s], [s, c]]) * scale / 3600.0
    return w


def same_sky(path_or_header, wcs, hdu=0):
    header = path_or_header if isinstance(path_or_header, fits.Header) else fits.getheader(path_or_header, hdu)
    got = WCS(header).celestial
    a = got.pixel_to_world(PIXELS[:, 0], PIXELS[:, 1])
    b = wcs.pixel_to_world(PIXELS[:, 0], PIXELS[:, 1])
    return bool(np.all(a.separation(b).to_value(u.arcsec) < 1e-6))


@pytest.fixture(scope="module")
def fitted():
    wcs = sip_free_tan()
    frame = Frame(("g", "r"), SHAPE, pixel_scale=0.25, wcs=wcs)
    scene = Scene(frame, [Source(np.array([50.0, 80.0]), GaussianMorphology(1.5, 0.1, 0.0, shape=(11, 11)), [9.3, 10.2])])
    rng = np.random.default_rng(0)
    data = rng.normal(0, 0.1, (2, *SHAPE)) + 0.3
    obs = Observation(data, frame=frame, psf=GaussianPSF(1.0), rms=0.1, background=PlaneBackground(0))
    return frame, scene, obs, wcs


def test_fit_products_carry_wcs_and_bunit(fitted, tmp_path):
    frame, scene, obs, wcs = fitted
    seg = np.zeros(SHAPE, np.int32)
    written = write_products(tmp_path, scene, frame, obs, segmentation=seg, bunit="nanomaggy",
                             header_cards=[("NOISESRC", "given", "origin of the weights")])
    names = {p.name for p in written}
    assert {"model.fits", "residual.fits", "sources.fits", "background.fits", "segmentation.fits"} <= names
    for name in ("model.fits", "residual.fits", "sources.fits", "background.fits"):
        header = fits.getheader(tmp_path / name)
        assert header["BUNIT"] == "nanomaggy", name
        assert header["NOISESRC"] == "given", name
        assert same_sky(header, wcs), name
    assert same_sky(tmp_path / "segmentation.fits", wcs)
    assert fits.getdata(tmp_path / "sources.fits").shape == (1, 2, *SHAPE)
    with fits.open(tmp_path / "results.fits") as h:
        for name in ("MODEL", "SOURCES", "RESIDUAL", "DEBLEND"):
            assert h[name].header["BUNIT"] == "nanomaggy", name
            assert same_sky(h[name].header, wcs), name
        cat = QTable.read(h["CATALOG"])
        # FITS tables cannot hold a SkyCoord (ra, dec stand in) nor non-FITS units
        # such as nanomaggy (catalog.ecsv keeps both).
        assert {"flux_g", "flux_err_g", "ra", "dec", "flags"} <= set(cat.colnames)
    table = QTable.read(tmp_path / "catalog.ecsv")
    assert table["flux_r"].unit == u.nmgy and table["x"].unit == u.pix
    sky = wcs.pixel_to_world(table["x"].value, table["y"].value)
    assert np.all(table["sky_centroid"].separation(sky).to_value(u.arcsec) < 1e-6)


def test_fit_products_without_bunit_have_none(fitted, tmp_path):
    frame, scene, obs, wcs = fitted
    write_products(tmp_path, scene, frame, obs)
    assert "BUNIT" not in fits.getheader(tmp_path / "model.fits")
    assert same_sky(tmp_path / "residual.fits", wcs)


def test_posterior_products_carry_wcs_and_bunit(tmp_path):
    stamp_wcs = sip_free_tan((16, 16), scale=0.1)
    image_wcs = [sip_free_tan(), sip_free_tan((12, 12), scale=0.6)]
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(4, 1, 16, 16)).astype(np.float32)
    result = PosteriorResult(samples, samples.mean(0), samples.std(0, ddof=1),
                             (rng.normal(size=(1, *SHAPE)), rng.normal(size=(1, 12, 12))), np.ones(4), np.asarray(2))
    write_posterior(tmp_path, result, wcs=stamp_wcs, bunit="electron/s", residual_wcs=image_wcs,
                    header={"METHOD": ("mmps", "guidance")}, panel_data=rng.normal(size=(1, *SHAPE)))
    for name in ("samples.fits", "mean.fits", "std.fits"):
        header = fits.getheader(tmp_path / name)
        assert header["BUNIT"] == "electron/s" and header["METHOD"] == "mmps", name
        assert same_sky(header, stamp_wcs), name
    np.testing.assert_allclose(fits.getdata(tmp_path / "std.fits"), samples.std(0, ddof=1), rtol=1e-6)
    with fits.open(tmp_path / "residuals.fits") as h:
        assert h[0].header["BUNIT"] == "electron/s" and same_sky(h[0].header, image_wcs[0])
        assert h["RES1"].header["BUNIT"] == "electron/s" and same_sky(h["RES1"].header, image_wcs[1])
    assert (tmp_path / "panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # ~40 s: one whole fit; write_products is tested above without the command
def test_fit_command_keeps_wcs_and_bunit(tmp_path):
    from deconvjax.cli import main

    wcs = sip_free_tan((24, 24))
    yy, xx = np.mgrid[:24, :24]
    image = 40.0 * np.exp(-((yy - 11.6) ** 2 + (xx - 12.3) ** 2) / (2 * 2.0**2)) / (2 * np.pi * 4.0)
    image += np.random.default_rng(3).normal(0, 0.05, image.shape)
    header = wcs.to_header()
    header["BUNIT"] = "nanomaggy"
    fits.writeto(tmp_path / "img.fits", image.astype(np.float32), header)
    psf = np.exp(-((yy[:15, :15] - 7) ** 2 + (xx[:15, :15] - 7) ** 2) / (2 * 1.5**2))
    fits.writeto(tmp_path / "psf.fits", (psf / psf.sum()).astype(np.float32))
    fits.writeto(tmp_path / "var.fits", np.full(image.shape, 0.05**2, np.float32))
    res = CliRunner().invoke(main, ["fit", str(tmp_path / "img.fits"), "--psf", str(tmp_path / "psf.fits"),
                                    "--variance", str(tmp_path / "var.fits"), "--out", str(tmp_path / "out"),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("model.fits", "residual.fits", "sources.fits"):
        header = fits.getheader(tmp_path / "out" / name)
        assert header["BUNIT"] == "nanomaggy", name
        assert same_sky(header, wcs), name
    table = QTable.read(tmp_path / "out" / "catalog.ecsv")
    assert table["flux_0"].unit == u.nmgy and np.isfinite(table["flux_err_0"][0].value)
