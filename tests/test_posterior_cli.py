import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astropy.io import fits  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from deconvjax.diffusion import VESDE, ScorePrior, UNet, UNetDenoiser, save_prior  # noqa: E402
from deconvjax.posterior._cli import sample  # noqa: E402

N = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    net = UNet(bands=1, channels=(8, 16), num_res_blocks=1, emb_dim=16, key=jr.key(0))
    prior = ScorePrior(UNetDenoiser(net, 0.5, N), VESDE(1e-2, 20.0), 2.0)
    save_prior(d / "prior.eqx", prior)
    yy, xx = np.mgrid[:N, :N]
    psf = np.exp(-((yy - 7) ** 2 + (xx - 7) ** 2) / (2 * 1.5**2))[:15, :15]
    psf /= psf.sum()
    fits.writeto(d / "psf.fits", psf)
    rng = np.random.default_rng(0)
    img = np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 8.0) + 0.05 * rng.normal(size=(N, N))
    header = fits.Header()
    header["BUNIT"] = "nanomaggy"  # carried to every output
    hdul = fits.HDUList([fits.PrimaryHDU(img, header=header), fits.ImageHDU(np.full((N, N), 0.05**2), name="VARIANCE")])
    hdul.writeto(d / "img.fits")
    fits.writeto(d / "bare.fits", img)
    fits.writeto(d / "big.fits", np.zeros((2 * N, 2 * N)))
    return d


def test_sample_writes_cube_maps_and_panel(files):
    out = files / "out"
    r = CliRunner().invoke(sample, [str(files / "img.fits"), str(files / "bare.fits"),
                                    "--psf", str(files / "psf.fits"), "--psf", str(files / "psf.fits"),
                                    "--variance", "0.0025", "--variance", "0.0025",
                                    "--prior", str(files / "prior.eqx"), "--n-samples", "3",
                                    "--sampler", "ode_fixed", "--sampler-steps", "2", "--method", "convolved", "--cg-iters", "0",
                                    "--out", str(out), "--no-progress"])
    assert r.exit_code == 0, r.output
    cube = fits.getdata(out / "samples.fits")
    assert cube.shape == (3, 1, N, N) and np.all(np.isfinite(cube))
    mean, std = fits.getdata(out / "mean.fits"), fits.getdata(out / "std.fits")
    np.testing.assert_allclose(mean, cube.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(std, cube.std(0, ddof=1), rtol=1e-3, atol=1e-6)
    assert fits.getdata(out / "residuals.fits").shape == (2, 1, N, N)
    for name in ("samples.fits", "mean.fits", "std.fits", "residuals.fits"):
        assert fits.getheader(out / name)["BUNIT"] == "nanomaggy", name
    assert fits.getheader(out / "mean.fits")["CTYPE1"] == "RA---TAN"  # the stamp's WCS
    assert (out / "panel.png").stat().st_size > 1000


def test_sample_bad_input(files):
    base = ["--prior", str(files / "prior.eqx"), "--out", str(files / "o2"), "--n-samples", "1"]
    r = CliRunner().invoke(sample, [str(files / "bare.fits"), "--psf", str(files / "psf.fits"), *base])
    assert r.exit_code != 0 and "noise" in r.output
    r = CliRunner().invoke(sample, [str(files / "big.fits"), "--psf", str(files / "psf.fits"),
                                    "--variance", "1", *base])
    # Any image size is accepted now (the prior's stamp is resampled onto it); an empty
    # image has no galaxy flux to scale the prior to.
    assert r.exit_code != 0 and "not measurably positive" in r.output
    r = CliRunner().invoke(sample, [str(files / "img.fits"), *base[:0], "--psf", str(files / "psf.fits"),
                                    "--psf", str(files / "psf.fits"), *base])
    assert r.exit_code != 0 and "one --psf per image" in r.output
