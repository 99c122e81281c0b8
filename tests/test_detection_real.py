"""Detection, segmentation and noise on images as they come (issue 14, items 3 and 4): a
cluster-core galaxy's halo with satellites on a sky gradient, images without a noise map,
bad noise maps through the command line, and real HST COSMOS stamps."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import galsim  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astropy.io import fits  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from deconvjax.cli import main  # noqa: E402
from deconvjax.fit.detection import find_sources, psf_width  # noqa: E402
from deconvjax.io import estimate_noise, read_images  # noqa: E402
from deconvjax.io.noise import background_rms, electrons_per_unit  # noqa: E402

SCALE = 0.05  # arcsec / pixel (HST-like)
N = 160
SKY = 200.0  # e- / pixel: the background's Poisson noise, sigma ~14.1 e-
PSF = galsim.Moffat(beta=3.0, fwhm=0.12)
# (dy, dx) from the centre and the flux as a fraction of the central galaxy's.
SATELLITES = ((26.0, -20.0, 0.010), (-34.0, 33.0, 0.006), (7.0, 52.0, 0.004))


def _psf_image(size=25):
    return PSF.drawImage(nx=size, ny=size, scale=SCALE).array


@pytest.fixture(scope="module")
def halo():
    """A bright elliptical (de Vaucouleurs, half-light radius 1 arcsec = 20 pixels) with
    three small satellites, in electrons, with Poisson noise on sky and sources, on a
    sky gradient of 2 background sigma across the image; the variance map given is the
    background's only (as an HST drizzle weight map is)."""
    rng = np.random.default_rng(3)
    c = (N - 1) / 2
    bcg = galsim.DeVaucouleurs(half_light_radius=1.0, flux=1.5e6).shear(e=0.2, beta=30 * galsim.degrees)
    alone = galsim.Convolve(bcg, PSF).drawImage(nx=N, ny=N, scale=SCALE).array
    model = alone.copy()
    for dy, dx, frac in SATELLITES:
        sat = galsim.Convolve(galsim.Exponential(half_light_radius=0.12, flux=1.5e6 * frac), PSF)
        model += sat.drawImage(nx=N, ny=N, scale=SCALE, offset=(dx, dy)).array
    yy, xx = np.mgrid[:N, :N]
    gradient = 2.0 * np.sqrt(SKY) * (0.6 * xx + 0.4 * yy) / N
    data = rng.poisson(model + SKY + gradient).astype(float) - SKY
    truth = np.array([[c, c]] + [[c + dy, c + dx] for dy, dx, _ in SATELLITES])
    return {"data": data, "variance": np.full((N, N), SKY), "alone": alone, "truth": truth}


def test_halo_is_one_detection_with_a_big_stamp(halo):
    truth = halo["truth"]
    det = find_sources(halo["data"], 1.0 / halo["variance"], source_sigma=psf_width(_psf_image()))
    d = np.linalg.norm(det.positions[:, None] - truth[None], axis=-1)
    # The halo and each satellite found, once each, and nothing else (no ring of
    # detections on the halo, none on the sky gradient along the edges).
    assert len(det) == 4, det.positions
    assert d.min(axis=0).max() < 1.5
    assert np.all(d.min(axis=1) < 1.5)
    edge = np.minimum(det.positions, N - 1 - det.positions).min(axis=1)
    assert edge.min() > 10
    # The halo's stamp holds every pixel where its own light (noise-free, drawn alone)
    # is above the noise: no square edge in the residual.
    k = int(np.argmin(d[:, 0]))
    ys, xs = np.nonzero(halo["alone"] > np.sqrt(SKY))
    reach = np.max(np.maximum(np.abs(ys - det.positions[k, 0]), np.abs(xs - det.positions[k, 1])))
    assert det.stamp_sizes[k] // 2 >= reach > 40  # the old largest stamp, 81, was too small
    # The segmentation map: one label per source, the halo's covering its core.
    assert det.segmentation.dtype == np.int32 and det.segmentation.max() == 4
    assert det.segmentation[int(truth[0, 0]), int(truth[0, 1])] == k + 1
    for s in range(1, 4):
        j = int(np.argmin(d[:, s]))
        assert det.segmentation[int(round(truth[s, 0])), int(round(truth[s, 1]))] == j + 1
        assert det.stamp_sizes[j] < det.stamp_sizes[k]


def test_halo_without_noise_map_and_in_init_scene(halo):
    """The same image with the noise estimated (BUNIT electrons: background rms plus the
    sources' Poisson noise): the same four sources; `init_scene` gives the halo its
    segment's stamp."""
    from deconvjax import Frame, Observation
    from deconvjax.fit import init_scene
    from deconvjax.psf import ArrayPSF, GaussianPSF

    header = fits.Header({"BUNIT": "ELECTRONS"})
    var, est = estimate_noise(halo["data"], header, bands=["F814W"])
    assert np.isfinite(est.gain).all() and est.gain[0] == 1.0
    assert abs(est.rms[0] / np.sqrt(SKY) - 1) < 0.1
    frame = Frame(["F814W"], (N, N), pixel_scale=SCALE, psf=GaussianPSF(0.025))
    obs = Observation(halo["data"], frame=frame, psf=ArrayPSF(_psf_image()[None], pixel_scale=SCALE), variance=var)
    scene, det = init_scene(frame, obs, kind="gaussian", return_detection=True)
    assert scene.n_sources == 4
    d = np.linalg.norm(det.positions[:, None] - halo["truth"][None], axis=-1)
    assert d.min(axis=0).max() < 1.5
    sizes = [g.morphology.shape[0] for g in scene.groups for _ in g.spectrum]
    order = np.concatenate([np.asarray(o) for o in scene.order])
    sizes = np.array(sizes)[np.argsort(order)]
    assert sizes[int(np.argmin(d[:, 0]))] == det.stamp_sizes[int(np.argmin(d[:, 0]))] >= 135
    # The satellites (exponential discs, half-light radius 2.4 pixels) get small stamps:
    # not sized by moments that their host's halo inflates.
    for s in range(1, 4):
        j = int(np.argmin(d[:, s]))
        assert det.max_sizes[j] > 0 and sizes[j] <= det.max_sizes[j] <= 35, (sizes[j], det.max_sizes[j])
    assert det.max_sizes[int(np.argmin(d[:, 0]))] == 0  # the host itself has no limit


# ---------------------------------------------------------------------------------------
# Noise estimation
# ---------------------------------------------------------------------------------------

def _small_field(seed=0, n=64, sigma=2.5, unit_scale=1.0):
    """Two small galaxies in Gaussian noise of ``sigma`` on a mild gradient."""
    rng = np.random.default_rng(seed)
    img = galsim.ImageD(n, n, scale=0.2)
    psf = galsim.Gaussian(fwhm=0.7)
    for (dx, dy), flux in (((-8.0, 3.0), 4000.0), ((9.0, -6.0), 2500.0)):
        gal = galsim.Exponential(half_light_radius=0.5, flux=flux)
        galsim.Convolve(gal, psf).drawImage(img, add_to_image=True, offset=(dx, dy))
    yy, xx = np.mgrid[:n, :n]
    data = img.array + 0.5 * sigma * xx / n + rng.normal(0.0, sigma, (n, n))
    psf_img = psf.drawImage(nx=15, ny=15, scale=0.2).array
    return data * unit_scale, psf_img


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_background_rms_within_ten_percent(seed):
    data, _ = _small_field(seed)
    rms, level = background_rms(data)
    assert abs(rms / 2.5 - 1) < 0.1
    assert level.shape == data.shape


def test_electrons_per_unit_cases():
    assert electrons_per_unit({"BUNIT": "ELECTRONS"})[0] == 1.0
    assert electrons_per_unit({"BUNIT": "ELECTRONS/S", "EXPTIME": 2028.0})[0] == 2028.0
    assert electrons_per_unit({"BUNIT": "counts", "GAIN": 2.0})[0] == 2.0
    assert electrons_per_unit({"BUNIT": "ADU/s", "CCDGAIN": 2.0, "EXPTIME": 100.0})[0] == 200.0
    for header, why in (({"BUNIT": "ELECTRONS/S"}, "no EXPTIME"), ({"BUNIT": "DN"}, "no GAIN"),
                        ({"BUNIT": "MJy/sr"}, "not electrons or counts"), ({}, "no BUNIT")):
        g, how = electrons_per_unit(header)
        assert g is None and why in how


def test_poisson_term_from_exposure_time():
    """Data in e-/s with EXPTIME: the variance of a bright source's pixels is the
    background's plus its own Poisson part, data / EXPTIME (both in (e-/s)^2)."""
    rng = np.random.default_rng(5)
    t, n = 400.0, 64
    img = galsim.ImageD(n, n, scale=0.05)
    galsim.Convolve(galsim.Exponential(half_light_radius=0.15, flux=2e5), PSF).drawImage(img)
    sky = 50.0  # e- per pixel
    counts = rng.poisson(img.array + sky) - sky
    rate = counts / t
    var, est = estimate_noise(rate, fits.Header({"BUNIT": "ELECTRONS/S", "EXPTIME": t}))
    true_var = (img.array + sky) / t**2
    bright = img.array > 20 * sky
    assert bright.sum() > 10
    np.testing.assert_allclose(np.median(var[0][bright] / true_var[bright]), 1.0, atol=0.25)
    assert abs(est.rms[0] / (np.sqrt(sky) / t) - 1) < 0.1
    # Without the keywords: background only, and the estimate says so.
    var0, est0 = estimate_noise(rate, fits.Header())
    assert np.median(var0[0][bright] / true_var[bright]) < 0.2
    assert "no BUNIT" in est0.summary() and "no Poisson term" in est0.summary()


def test_blank_regions_are_masked(tmp_path):
    data, psf = _small_field(0)
    data[:, :12] = 0.0  # an unexposed strip of a mosaic
    fits.writeto(tmp_path / "img.fits", data.astype(np.float32))
    fits.writeto(tmp_path / "psf.fits", psf)
    with pytest.warns(UserWarning, match="no noise map given"):
        d = read_images(str(tmp_path / "img.fits"), psf=str(tmp_path / "psf.fits"))
    assert np.all(d.weights[0][:, :12] == 0) and np.all(d.weights[0][:, 12:] > 0)
    assert d.noise_estimate.n_blank[0] == 64 * 12
    assert abs(d.noise_estimate.rms[0] / 2.5 - 1) < 0.1
    with pytest.raises(ValueError, match="no noise map"):
        read_images(str(tmp_path / "img.fits"), psf=str(tmp_path / "psf.fits"), estimate_noise_if_missing=False)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("noise_cli")
    data, psf = _small_field(4, n=48)
    fits.writeto(d / "img.fits", data.astype(np.float32))
    fits.writeto(d / "psf.fits", psf.astype(np.float32))
    return d


def test_cli_estimates_the_noise_and_writes_segmentation(small_files):
    out = small_files / "out"
    res = CliRunner().invoke(main, ["fit", str(small_files / "img.fits"), "--psf", str(small_files / "psf.fits"),
                                    "--out", str(out), "--max-iter", "0", "--kind", "point", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "no noise map given: estimated: sigma-clipped background rms" in res.output
    assert "no Poisson term (no BUNIT in the header)" in res.output
    for name in ("model.fits", "residual.fits", "results.fits", "segmentation.fits"):
        h = fits.getheader(out / name)
        assert h["NOISESRC"].startswith("estimated: sigma-clipped background rms"), name
        assert abs(h["BKGRMS1"] / 2.5 - 1) < 0.1
    seg = fits.getdata(out / "segmentation.fits")
    n = len(fits.getdata(out / "results.fits", "CATALOG"))
    assert seg.shape == (48, 48) and seg.dtype.kind == "i"
    assert n == 2 and set(np.unique(seg)) == set(range(n + 1))


@pytest.mark.parametrize("case", ["negative", "nan", "shape", "zero-weights"])
def test_cli_bad_noise_map_is_a_clear_error(small_files, case):
    data = fits.getdata(small_files / "img.fits")
    option, arr = "--variance", np.full(data.shape, 6.25, np.float32)
    if case == "negative":
        arr[10:20, 10:20] = -1.0
    elif case == "nan":
        arr[5, 5] = np.nan
    elif case == "shape":
        arr = arr[:, :-4]
    else:
        option, arr = "--weights", np.zeros(data.shape, np.float32)
    path = small_files / f"noise_{case}.fits"
    fits.writeto(path, arr, overwrite=True)
    res = CliRunner().invoke(main, ["fit", str(small_files / "img.fits"), "--psf", str(small_files / "psf.fits"),
                                    option, str(path), "--out", str(small_files / f"o_{case}"), "--no-progress"])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], res.output
    assert res.output.rstrip().endswith(errors[0])  # one line, nothing after it
    assert {"negative": "negative", "nan": "NaN", "shape": "shape", "zero-weights": "no pixel with information"}[case] \
        in errors[0]
    assert "no source detected" not in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------------
# Real HST COSMOS stamps
# ---------------------------------------------------------------------------------------

def test_cosmos_stamps_are_one_source_each(cosmos_dir):
    """Real F814W galaxies (knots, spiral arms, correlated drizzle noise): the galaxy at
    each stamp's centre is found once, and the noise estimated from the stamp matches the
    catalog's noise variance."""
    cat = fits.getdata(cosmos_dir / "real_galaxy_catalog_26_extension_example.fits")
    radius = fits.getdata(cosmos_dir / "real_galaxy_catalog_26_extension_example_fits.fits")["flux_radius"]
    # The 30 brightest: the most structure, the hardest not to split.
    rows = np.argsort(cat["MAG"])[:30]
    counts, ratios = [], []
    with fits.open(cosmos_dir / "real_galaxy_images_extension.fits") as gals, \
            fits.open(cosmos_dir / "real_galaxy_PSF_images_extension.fits") as psfs:
        for i in rows:
            image = gals[cat["GAL_HDU"][i]].data.astype(np.float64)
            psf = psfs[cat["PSF_HDU"][i]].data
            var = float(cat["NOISE_VARIANCE"][i])
            det = find_sources(image, np.full(image.shape, 1.0 / var), source_sigma=psf_width(psf))
            centre = (np.array(image.shape) - 1) / 2
            dist = np.linalg.norm(det.positions - centre, axis=1)
            counts.append(int(np.sum(dist < 1.5 * radius[i])))
            ratios.append(background_rms(image)[0] / np.sqrt(var))
    counts = np.array(counts)
    assert np.all(counts >= 1)  # every galaxy found
    assert np.mean(counts == 1) >= 0.7, counts  # the old detector: 28% of all 100 stamps
    assert np.mean(counts) <= 1.5, counts  # the old detector: 4.4 per galaxy
    assert abs(np.median(ratios) - 1) < 0.1
