"""The one host container (`ObservationData`, a `SimulatedField` = one plus truth) and the
one reader (`read_images`): round trips give the same container, real COSMOS stamps read
through it, and `deconvjax.io` does not import the simulations."""

import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pytest
from astropy.io import fits

from deconvjax import sims
from deconvjax.io import (
    NoiseMapError,
    ObservationData,
    SimulatedField,
    is_observation_file,
    read_arrays,
    read_field,
    read_images,
    write_field,
)

_FIELDS = [f.name for f in dataclasses.fields(ObservationData)]


def _assert_same_data(a: ObservationData, b: ObservationData, skip=("path",)):
    """Every field equal: arrays exactly (same dtype), the WCS by its header."""
    for name in _FIELDS:
        if name in skip:
            continue
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        elif name == "wcs":
            assert (x is None) == (y is None)
            assert x is None or x.to_header() == y.to_header()
        else:
            assert x == y, (name, x, y)


@pytest.fixture(scope="module")
def field():
    return sims.simulate_field("lsst", seed=7, shape=(40, 40), n_sources=3, bands=("g", "r"))


def test_io_does_not_import_sims():
    code = ("import sys, deconvjax.io, deconvjax.io.data, deconvjax.io.fits; "
            "assert 'deconvjax.sims' not in sys.modules, 'deconvjax.sims'; "
            "assert 'galsim' not in sys.modules, 'galsim'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_simulated_field_is_a_container_plus_truth(field):
    assert isinstance(field, SimulatedField) and isinstance(field.data, ObservationData)
    assert sims.SimulatedField is SimulatedField
    assert field.images is field.data.images and field.bands == ("g", "r")
    assert field.data.bunit == "ct" and field.data.psf_center == "pixel"
    assert field.data.noise_source.startswith("simulated")
    np.testing.assert_array_equal(field.weights, 1.0 / field.variance.astype(np.float64))
    np.testing.assert_allclose(field.noise_free, field.source_images.sum(0))
    assert field.shape == (40, 40) and field.mask.dtype == bool and not field.mask.any()


def test_simulate_write_read_gives_the_same_container(field, tmp_path):
    p = write_field(tmp_path / "f.fits", field)
    g = read_field(p)
    _assert_same_data(field.data, g.data)
    assert g.data.path == str(p)
    np.testing.assert_array_equal(field.source_images, g.source_images)
    assert g.survey == field.survey == "lsst" and g.seed == field.seed == 7
    assert g.truth.colnames == field.truth.colnames
    for c in field.truth.colnames:
        np.testing.assert_array_equal(np.asarray(field.truth[c]), np.asarray(g.truth[c]))
    # The observation part alone, through the one reader (the survey and seed in its meta).
    for d in (read_images(p), read_arrays(p)):
        _assert_same_data(field.data, d, skip=("path", "meta"))
        assert d.meta == {"SURVEY": "lsst", "SEED": 7}
    # An ObservationData without truth: written and read back the same, no truth HDUs.
    q = write_field(tmp_path / "o.fits", field.data)
    _assert_same_data(field.data, read_images(q))
    with fits.open(q) as hdul:
        assert "TRUTH" not in hdul and "SOURCES" not in hdul
    with pytest.raises(ValueError, match="not a simulated field"):
        read_field(q)


def test_read_images_takes_a_deconvjax_file_whole(field, tmp_path):
    p = write_field(tmp_path / "f.fits", field)
    assert is_observation_file(p) and not is_observation_file(tmp_path / "absent.fits")
    with pytest.raises(ValueError, match="leave out psf"):
        read_images(p, psf=p)
    assert read_images(p, bands=("x", "y")).bands == ("x", "y")


def test_container_checks_and_derives(tmp_path):
    img = np.ones((2, 5, 6), np.float32)
    var = np.full(img.shape, 4.0)
    var[0, 1, 1] = np.inf
    d = ObservationData(img, variance=var)
    assert d.bands == ("0", "1") and d.weights[0, 1, 1] == 0 and d.weights[1, 0, 0] == 0.25
    w = ObservationData(img, weights=d.weights)
    assert np.isinf(w.variance[0, 1, 1]) and w.variance[1, 0, 0] == 4.0
    with pytest.raises(ValueError, match="give at least one"):
        ObservationData(img)
    with pytest.raises(ValueError, match="bands"):
        ObservationData(img, variance=var, bands=("g",))
    with pytest.raises(ValueError, match="psf_images"):
        ObservationData(img, variance=var, psf_images=np.ones((3, 5, 5)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.images = img
    with pytest.raises(ValueError, match="source_images"):
        SimulatedField(d, sims.simulate_field("lsst", seed=0, shape=(40, 40), n_sources=1).truth,
                       np.zeros((1, 2, 5, 5)))


def test_read_images_noise_number_extension_and_missing(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(12, 14)).astype(np.float32)
    psf = np.zeros((5, 5), np.float32)
    psf[2, 2] = 1
    fits.writeto(tmp_path / "psf.fits", psf)
    fits.HDUList([fits.PrimaryHDU(img), fits.ImageHDU(np.full(img.shape, 0.5, np.float32), name="WHT")]
                 ).writeto(tmp_path / "ext.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.full(img.shape, 0.5, np.float32), name="RMS"),
                  fits.ImageHDU(img, name="SCI", header=fits.Header([("BUNIT", "e-/s")]))]
                 ).writeto(tmp_path / "rms_first.fits")
    fits.writeto(tmp_path / "bare.fits", img)
    d = read_images(str(tmp_path / "bare.fits"), psf=str(tmp_path / "psf.fits"), variance=0.25)
    assert np.all(d.weights == 4.0) and d.noise_source == "given: variance map"
    d = read_images(str(tmp_path / "ext.fits"), psf=str(tmp_path / "psf.fits"), noise_extensions=True)
    assert np.all(d.weights == 0.5) and d.noise_source == "given: weight map"
    d = read_images(str(tmp_path / "rms_first.fits"), noise_extensions=True)
    np.testing.assert_array_equal(d.images[0], img)  # the RMS extension is not the image
    assert np.all(d.weights == 4.0) and d.bunit == "e-/s"
    with pytest.raises(NoiseMapError, match="no noise map") as err:
        read_images(str(tmp_path / "bare.fits"), noise_extensions=True, estimate_noise_if_missing=False)
    assert err.value.option == "variance"
    with pytest.raises(NoiseMapError, match="negative"):
        read_images(str(tmp_path / "bare.fits"), variance=-1.0)


def test_psf_larger_than_image_cropped_unless_asked(tmp_path):
    fits.writeto(tmp_path / "img.fits", np.ones((9, 9), np.float32))
    big = np.zeros((21, 21), np.float32)
    big[10, 10] = 1
    fits.writeto(tmp_path / "psf.fits", big)
    with pytest.warns(UserWarning, match="cropped"):
        d = read_images(str(tmp_path / "img.fits"), psf=str(tmp_path / "psf.fits"), variance=1.0)
    assert d.psf_images.shape == (1, 9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = read_images(str(tmp_path / "img.fits"), psf=str(tmp_path / "psf.fits"), variance=1.0,
                        crop_psf=False)
    assert d.psf_images.shape == (1, 21, 21)


def test_real_cosmos_stamp_through_the_reader(cosmos_dir):
    cat = fits.getdata(cosmos_dir / "real_galaxy_catalog_26_extension_example.fits")
    gals = cosmos_dir / "real_galaxy_images_extension.fits"
    psfs = cosmos_dir / "real_galaxy_PSF_images_extension.fits"
    row = 3
    g_hdu, p_hdu = int(cat["GAL_HDU"][row]), int(cat["PSF_HDU"][row])
    var = float(cat["NOISE_VARIANCE"][row])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a PSF larger than the stamp is cropped
        d = read_images((gals, g_hdu), psf=(psfs, p_hdu), variance=var, bands=("F814W",))
    want = fits.getdata(gals, g_hdu)
    assert d.images.shape == (1, *want.shape) and d.bands == ("F814W",)
    np.testing.assert_allclose(d.images[0], want.astype(np.float32))
    np.testing.assert_allclose(d.weights, 1.0 / var)
    assert d.psf_images.shape[0] == 1 and np.all(np.isfinite(d.psf_images))
    assert d.wcs is None and d.noise_source == "given: variance map"
