"""FITS I/O: exact round trips, deterministic files, clear errors, common real layouts."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from deconvjax import sims
from deconvjax.io import (
    read_arrays,
    read_field,
    read_images,
    read_observation,
    read_truth,
    write_field,
    write_observation,
    write_truth,
)


@pytest.fixture(scope="module")
def field():
    return sims.simulate_field("lsst", seed=5, shape=(40, 40), n_sources=3, bands=("g", "r"),
                               star_fraction=0.3)


def _assert_tables_equal(a: Table, b: Table):
    assert a.colnames == b.colnames
    for c in a.colnames:
        np.testing.assert_array_equal(np.asarray(a[c]), np.asarray(b[c]))
        assert a[c].unit == b[c].unit
    assert dict(a.meta) == dict(b.meta)


def test_field_round_trip_is_exact(field, tmp_path):
    p = write_field(tmp_path / "f.fits", field)
    g = read_field(p)
    for name in ("images", "variance", "psf_images", "source_images", "mask"):
        a, b = getattr(field, name), getattr(g, name)
        assert a.dtype == b.dtype and a.dtype.isnative == b.dtype.isnative
        np.testing.assert_array_equal(a, b)
    assert g.bands == field.bands and g.pixel_scale == field.pixel_scale
    assert g.survey == "lsst" and g.seed == 5
    assert g.wcs.to_header() == field.wcs.to_header()
    pix = np.array([[0.0, 0.0], [13.5, 27.25], [39.0, 39.0]])
    np.testing.assert_array_equal(g.wcs.all_pix2world(pix, 0), field.wcs.all_pix2world(pix, 0))
    _assert_tables_equal(field.truth, g.truth)


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])
def test_truth_table_round_trip(field, tmp_path, suffix):
    p = write_truth(tmp_path / f"truth{suffix}", field.truth)
    _assert_tables_equal(field.truth, read_truth(p))


def test_same_seed_gives_identical_files(tmp_path):
    kw = dict(seed=3, shape=(40, 40), n_sources=2, bands=("i",))
    a = write_field(tmp_path / "a.fits", sims.simulate_field("lsst", **kw))
    b = write_field(tmp_path / "b.fits", sims.simulate_field("lsst", **kw))
    c = write_field(tmp_path / "c.fits", sims.simulate_field("lsst", **{**kw, "seed": 4}))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    ta = write_truth(tmp_path / "a.ecsv", read_field(a).truth)
    tb = write_truth(tmp_path / "b.ecsv", read_field(b).truth)
    assert ta.read_bytes() == tb.read_bytes()


def test_weights_and_mask_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 9, 11)).astype(np.float32)
    wht = rng.uniform(0.5, 2.0, size=img.shape).astype(np.float32)
    mask = np.zeros(img.shape, bool)
    mask[1, 3, 4] = True
    psf = np.zeros((2, 5, 5), np.float32)
    psf[:, 2, 2] = 1.0
    p = write_observation(tmp_path / "o.fits", img, psf_images=psf, bands=("a", "b"),
                          weights=wht, mask=mask, wcs=sims.make_wcs((9, 11), 0.2))
    d = read_arrays(p)
    np.testing.assert_array_equal(d.images, img)
    np.testing.assert_array_equal(d.mask, mask)
    np.testing.assert_array_equal(d.weights, np.where(mask, 0.0, wht.astype(np.float64)))
    assert d.pixel_scale == pytest.approx(0.2)
    assert not hasattr(d, "truth") and d.noise_source.startswith("given: deconvjax observation file")


def test_missing_hdu_is_named(field, tmp_path):
    p = write_field(tmp_path / "f.fits", field)
    with fits.open(p) as hdul:
        keep = [h for h in hdul if not (h.name == "PSF" and h.ver == 2)]
        fits.HDUList([h.copy() for h in keep]).writeto(tmp_path / "nopsf.fits")
    with pytest.raises(ValueError, match=r"nopsf\.fits.*missing HDU 'PSF' \(EXTVER 2\)"):
        read_arrays(tmp_path / "nopsf.fits")


def test_corrupted_file_is_named(field, tmp_path):
    p = write_field(tmp_path / "f.fits", field)
    raw = p.read_bytes()
    (tmp_path / "cut.fits").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.fits.*(corrupted|truncated)"):
        read_arrays(tmp_path / "cut.fits")
    (tmp_path / "junk.fits").write_bytes(b"this is not a FITS file at all" * 100)
    with pytest.raises(ValueError, match=r"junk\.fits"):
        read_arrays(tmp_path / "junk.fits")
    with pytest.raises(FileNotFoundError, match="absent"):
        read_arrays(tmp_path / "absent.fits")


def test_flipped_bits_in_data_are_reported(field, tmp_path):
    p = write_field(tmp_path / "f.fits", field)
    with fits.open(p) as hdul:
        idx = next(i for i, h in enumerate(hdul) if h.name == "SCI" and h.ver == 2)
        loc = hdul.fileinfo(idx)["datLoc"]
    raw = bytearray(p.read_bytes())
    raw[loc + 1000] ^= 0xFF
    (tmp_path / "flip.fits").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flip\.fits: HDU 'SCI' \(EXTVER 2\) is corrupted"):
        read_arrays(tmp_path / "flip.fits")


def test_mismatched_shapes_are_named(field, tmp_path):
    p = write_field(tmp_path / "f.fits", field)
    with fits.open(p) as hdul:
        hdus = [h.copy() for h in hdul]
    for h in hdus:
        if h.name == "VAR" and h.ver == 2:
            h.data = np.ones((40, 39), np.float32)
    fits.HDUList(hdus).writeto(tmp_path / "bad.fits")
    with pytest.raises(ValueError, match=r"bad\.fits.*VAR of band 'r' has shape \(40, 39\)"):
        read_arrays(tmp_path / "bad.fits")
    with pytest.raises(ValueError, match="variance: expected shape"):
        write_observation(tmp_path / "x.fits", field.images, psf_images=field.psf_images,
                          bands=field.bands, variance=field.variance[:, :-1])
    with pytest.raises(ValueError, match="bands"):
        write_observation(tmp_path / "x.fits", field.images, psf_images=field.psf_images,
                          bands=("g",), variance=field.variance)


def test_not_a_deconvjax_file(tmp_path):
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(tmp_path / "plain.fits")
    with pytest.raises(ValueError, match=r"plain\.fits.*not a deconvjax observation file"):
        read_arrays(tmp_path / "plain.fits")


def _write_plain(path, data, header=None):
    fits.PrimaryHDU(np.asarray(data, np.float32), header=header).writeto(path)
    return path


def test_read_images_one_file_per_band(field, tmp_path):
    wh = field.wcs.to_header()
    imgs, rmss, psfs = [], [], []
    for k, b in enumerate(field.bands):
        h = wh.copy()
        h["FILTER"] = b
        imgs.append(_write_plain(tmp_path / f"img_{b}.fits", field.images[k], h))
        rmss.append(_write_plain(tmp_path / f"rms_{b}.fits", np.sqrt(field.variance[k])))
        psfs.append(_write_plain(tmp_path / f"psf_{b}.fits", field.psf_images[k]))
    d = read_images(imgs, psf=psfs, rms=rmss)
    assert d.bands == field.bands
    np.testing.assert_array_equal(d.images, field.images)
    np.testing.assert_allclose(d.weights, 1.0 / field.variance, rtol=1e-6)
    np.testing.assert_array_equal(d.psf_images, field.psf_images)
    assert d.pixel_scale == pytest.approx(0.2)
    np.testing.assert_allclose(d.wcs.wcs.crval, field.wcs.wcs.crval)
    # Mismatched shapes across the per-band files are reported with the file names.
    bad = _write_plain(tmp_path / "img_bad.fits", field.images[1][:, :-3], wh)
    with pytest.raises(ValueError, match=r"mismatched shapes.*img_bad\.fits: \(40, 37\)"):
        read_images([imgs[0], bad])
    with pytest.raises(ValueError, match=r"rms: files have mismatched shapes.*img_bad\.fits"):
        read_images(imgs, rms=rmss[0:1] + [bad])
    with pytest.raises(ValueError, match=r"img_bad\.fits: rms has shape \(2, 40, 37\)"):
        read_images(imgs, rms=[bad, bad])


def test_read_images_cube_with_weights(field, tmp_path):
    wh = field.wcs.to_header()
    cube = _write_plain(tmp_path / "cube.fits", field.images, wh)
    wht = _write_plain(tmp_path / "wht.fits", 1.0 / field.variance)
    psf = _write_plain(tmp_path / "psf.fits", field.psf_images[0])  # one PSF for all bands
    d = read_images(cube, weight=wht, psf=psf, bands=("g", "r"))
    assert d.images.shape == (2, 40, 40) and d.psf_images.shape[0] == 2
    np.testing.assert_allclose(d.variance, field.variance, rtol=1e-6)
    nan = field.images.copy()
    nan[0, 5, 5] = np.nan
    cube2 = _write_plain(tmp_path / "cube2.fits", nan, wh)
    d2 = read_images(cube2, bands=("g", "r"))
    assert d2.mask[0, 5, 5] and d2.weights[0, 5, 5] == 0 and d2.images[0, 5, 5] == 0


def test_read_observation_gives_core_observation(field, tmp_path):
    pytest.importorskip("deconvjax.observation")
    p = write_field(tmp_path / "f.fits", field)
    obs = read_observation(p)
    assert obs.shape == field.images.shape
    np.testing.assert_array_equal(np.asarray(obs.data), field.images)


def test_read_images_multi_extension_pairs(field, tmp_path):
    """An HST-drizzle-like file: SCI and WHT extensions in one file, FILTER in the primary."""
    wh = field.wcs.to_header()
    prim = fits.PrimaryHDU()
    prim.header["FILTER"] = "F814W"
    hdul = fits.HDUList([prim, fits.ImageHDU(field.images[0], header=wh, name="SCI"),
                         fits.ImageHDU(1.0 / field.variance[0], name="WHT")])
    hdul.writeto(tmp_path / "drz.fits")
    psf = _write_plain(tmp_path / "psf.fits", field.psf_images[0])
    d = read_images((tmp_path / "drz.fits", "SCI"), weight=(tmp_path / "drz.fits", "WHT"),
                    psf=psf)
    assert d.bands == ("F814W",)
    np.testing.assert_array_equal(d.images[0], field.images[0])
    np.testing.assert_allclose(d.variance[0], field.variance[0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"drz\.fits: missing HDU 'ERR'"):
        read_images((tmp_path / "drz.fits", "SCI"), rms=(tmp_path / "drz.fits", "ERR"))


def test_sip_distorted_wcs_round_trips(tmp_path):
    """A real header with SIP distortion (shipped with astropy) survives write and read."""
    import warnings
    from pathlib import Path

    import astropy
    from astropy.wcs import WCS

    raw = (Path(astropy.__file__).parent / "wcs/tests/data/irac_sip.hdr").read_text()
    hdr = fits.Header.fromstring(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = WCS(hdr)
    assert wcs.sip is not None
    img = np.arange(2 * 30 * 40, dtype=np.float32).reshape(2, 30, 40)
    psf = np.zeros((2, 5, 5), np.float32)
    psf[:, 2, 2] = 1
    p = write_observation(tmp_path / "sip.fits", img, psf_images=psf, bands=("a", "b"),
                          variance=np.ones_like(img), wcs=wcs)
    d = read_arrays(p)
    assert d.wcs.sip is not None
    pix = np.array([[0.0, 0.0], [250.5, 100.25], [10.0, 200.0]])
    np.testing.assert_allclose(d.wcs.all_pix2world(pix, 0), wcs.all_pix2world(pix, 0),
                               rtol=0, atol=1e-12)
