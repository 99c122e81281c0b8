"""`deconvjax sample` on real images as they come (issue 14.6): any size, pixel scale, flux
unit and PSF size; a real COSMOS galaxy under a ground-like PSF in counts/s."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astropy.io import fits  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from deconvjax.cli import main  # noqa: E402
from deconvjax.diffusion import VESDE, ScorePrior, UNet, UNetDenoiser, save_prior  # noqa: E402
from deconvjax.diffusion.samplers import FixedStepODE  # noqa: E402
from deconvjax.posterior.deconvolve import deconvolve_images  # noqa: E402

N = 16


def _blob(n, sigma, centre=None, flux=1.0):
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2 if centre is None else centre
    g = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * sigma**2))
    return flux * g / g.sum()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random-weight 16x16 prior and a 24x24 galaxy image (not the prior's size)."""
    d = tmp_path_factory.mktemp("real")
    net = UNet(bands=1, channels=(8, 16), num_res_blocks=1, emb_dim=16, key=jr.key(0))
    prior = ScorePrior(UNetDenoiser(net, 0.5, N), VESDE(1e-2, 20.0), 2.0)
    save_prior(d / "prior.eqx", prior)
    psf = _blob(15, 1.5)
    fits.writeto(d / "psf.fits", psf)
    big = np.zeros((65, 51))
    big[7:58, :] = _blob(65, 1.5)[7:58, 7:58]  # a 65x51 PSF image, wider than the image
    fits.writeto(d / "bigpsf.fits", big / big.sum())
    rng = np.random.default_rng(0)
    img = _blob(24, 2.5, flux=40.0) + 0.05 * rng.normal(size=(24, 24))
    fits.writeto(d / "img.fits", img)
    nan = img.copy()
    nan[3, 4] = np.nan
    fits.writeto(d / "nan.fits", nan)
    return d, prior, img, psf


def _run(args):
    return CliRunner().invoke(main, ["sample", *args])


def test_flux_factor_undoes_exactly(tiny):
    _, prior, img, psf = tiny
    kw = dict(n_samples=2, sampler=FixedStepODE(steps=3), pixel_scales=[0.2])
    r1, s1 = deconvolve_images(jr.key(3), prior, [img], [psf], [0.05**2], **kw)
    r2, s2 = deconvolve_images(jr.key(3), prior, [1000 * img], [psf], [1e6 * 0.05**2], **kw)
    np.testing.assert_allclose(s2.flux_factor, 1000 * s1.flux_factor, rtol=1e-9)
    assert s1.grid_scale == pytest.approx(s2.grid_scale, rel=1e-9)
    scale = float(np.abs(r1.mean).max())
    np.testing.assert_allclose(np.asarray(r2.mean), 1000 * np.asarray(r1.mean), rtol=1e-3,
                               atol=1e-3 * 1000 * scale)
    assert r1.mean.shape == (1, N, N) and r1.residuals[0].shape == (1, 24, 24)


def test_variance_typo_and_missing_file(tiny):
    d, *_ = tiny
    base = [str(d / "img.fits"), "--psf", str(d / "psf.fits"), "--prior", str(d / "prior.eqx"),
            "--out", str(d / "o1"), "--n-samples", "1"]
    r = _run([*base, "--variance", "1e-4x"])
    assert r.exit_code == 2 and r.exception is None or isinstance(r.exception, SystemExit)
    err = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(err) == 1 and "--variance" in err[0] and "1e-4x" in err[0], r.output
    assert "Traceback" not in r.output
    r = _run([*base, "--variance", str(d / "missing.fits")])
    assert r.exit_code == 2 and "--variance" in r.output and "Traceback" not in r.output
    r = _run([*base, "--variance", "1e-4", "--grid-scale", "big"])
    assert r.exit_code == 2 and "--grid-scale" in r.output


def test_nan_pixels_warn_and_big_psf_cropped(tiny):
    d, *_ = tiny
    r = _run([str(d / "nan.fits"), "--psf", str(d / "bigpsf.fits"), "--variance", "0.0025",
              "--prior", str(d / "prior.eqx"), "--out", str(d / "o2"), "--n-samples", "2",
              "--sampler", "ode_fixed", "--sampler-steps", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "NaN" in r.output
    crop = [line for line in r.output.splitlines() if "cropped" in line]
    assert crop and "65x65" in crop[0] and "% of its light left out" in crop[0], r.output
    assert "flux factor" in r.output and "prior grid" in r.output


def _ground_view(cosmos_dir, row=4, n=48, scale=0.1, fwhm=0.45, snr=20.0, seed=0):
    """A COSMOS galaxy (counts/s) under a Moffat PSF at a coarser pixel scale, n x n."""
    galsim = pytest.importorskip("galsim")
    from helpers import cosmos_sample_rows

    from deconvjax.diffusion.data import _cosmos_images

    cat = fits.getdata(cosmos_dir / "real_galaxy_catalog_26_extension_example.fits")
    ((_, img),) = list(_cosmos_images(cosmos_dir, cat, cosmos_sample_rows(cosmos_dir, [row])))
    gal = galsim.InterpolatedImage(galsim.Image(np.asarray(img, np.float64), scale=0.03),
                                   x_interpolant="lanczos5")
    psf = galsim.Moffat(beta=3.5, fwhm=fwhm)
    clean = galsim.Convolve(gal, psf).drawImage(nx=n, ny=n, scale=scale).array
    psf_img = psf.drawImage(nx=25, ny=25, scale=scale).array
    rms = clean.max() / snr
    data = clean + rms * np.random.default_rng(seed).normal(size=clean.shape)
    return data, psf_img, rms


@pytest.mark.slow
def test_real_cosmos_galaxy_ground_view(cosmos_dir, tmp_path):
    data, psf, rms = _ground_view(cosmos_dir)
    hdul = fits.HDUList([fits.PrimaryHDU(data.astype(np.float32)),
                         fits.ImageHDU(np.full(data.shape, rms**2, np.float32), name="VARIANCE")])
    hdul.writeto(tmp_path / "img.fits")
    fits.writeto(tmp_path / "psf.fits", psf.astype(np.float32))
    out = tmp_path / "out"
    r = _run([str(tmp_path / "img.fits"), "--psf", str(tmp_path / "psf.fits"), "--pixel-scale", "0.1",
              "--n-samples", "2", "--sampler-steps", "12", "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "flux factor" in r.output and "arcsec/px" in r.output
    mean = fits.getdata(out / "mean.fits")
    hdr = fits.getheader(out / "mean.fits")
    assert mean.shape == (1, 32, 32) and hdr["BUNIT"] == "data units"
    assert hdr["FLUXSCL"] > 1 and hdr["PIXSCALE"] > 0 and "CTYPE1" in hdr
    # In the data's units: the stamp holds about the galaxy's flux.
    assert 0.6 < mean.sum() / data.sum() < 1.4
    res = fits.getdata(out / "residuals.fits")
    chi2 = float(np.mean(res**2) / rms**2)
    assert 0.7 < chi2 < 1.5, chi2
