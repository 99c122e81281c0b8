"""`deconvjax fit` defaults on an undersampled space PSF: the model PSF is chosen from the
data (a wider one is refused with an error naming the option), and the fit reaches the
noise; expectations from the simulation's truth."""

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from deconvjax.cli import main

SCALE = 0.13  # arcsec per pixel, WFC3/IR-like
FLUX = 900.0


@pytest.fixture(scope="module")
def undersampled(tmp_path_factory):
    d = tmp_path_factory.mktemp("undersampled")
    rng = np.random.default_rng(4)
    psf = galsim.Airy(lam_over_diam=1.6e-6 / 2.4 * 206265)  # FWHM ~1.1 pixels: undersampled
    image = galsim.ImageD(48, 48, scale=SCALE)
    galaxy = galsim.Sersic(n=1.5, half_light_radius=0.35, flux=FLUX).shear(g1=0.2, g2=-0.1)
    galsim.Convolve(galaxy, psf).drawImage(image, offset=(0.3, -0.2))
    sigma = 0.5
    fits.writeto(d / "img.fits", (image.array + rng.normal(0.0, sigma, image.array.shape)).astype(np.float32),
                 fits.Header({"PIXSCALE": SCALE}))
    fits.writeto(d / "psf.fits", psf.drawImage(nx=31, ny=31, scale=SCALE).array.astype(np.float32))
    fits.writeto(d / "var.fits", np.full(image.array.shape, sigma**2, np.float32))
    return d


def test_default_model_psf_fits_an_undersampled_psf(undersampled):
    d = undersampled
    res = CliRunner().invoke(main, ["fit", str(d / "img.fits"), "--psf", str(d / "psf.fits"), "--variance",
                                    str(d / "var.fits"), "--out", str(d / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "model PSF: Gaussian FWHM" in res.output
    header = fits.getheader(d / "out" / "results.fits")
    assert 0.8 <= header["CHI2PIX"] <= 1.2
    assert header["FRAC3SIG"] <= 0.01
    table = Table.read(d / "out" / "catalog.ecsv")
    assert len(table) == 1
    # Free-form sources on a 6" image with a sky plane fitted: 8% low here (the plane and
    # the stamp edge share the faint wings; 5% without the plane, 3% for a Sersic model).
    assert float(table["flux_0"][0]) == pytest.approx(FLUX, rel=0.1)


def test_too_wide_model_psf_is_refused(undersampled):
    d = undersampled
    res = CliRunner().invoke(main, ["fit", str(d / "img.fits"), "--psf", str(d / "psf.fits"), "--variance",
                                    str(d / "var.fits"), "--out", str(d / "out2"), "--no-progress",
                                    "--model-psf-fwhm", "0.4"])
    assert res.exit_code == 2
    assert "--model-psf-fwhm" in res.output and "narrower" in res.output
