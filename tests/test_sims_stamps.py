"""Isolated training stamps and their streamable shard format; the simulate CLI."""

import numpy as np
import pytest
from click.testing import CliRunner

from deconvjax.io import read_field
from deconvjax.sims._cli import simulate
from deconvjax.sims.stamps import (
    iter_stamp_batches,
    read_stamp_index,
    read_stamp_truth,
    simulate_stamps,
    write_stamp_shards,
)


def test_stamps_shapes_fluxes_and_centring():
    st = simulate_stamps("lsst", 12, size=64, seed=0, bands=("g", "i"), mag_range=(22.0, 24.0))
    assert st.images.shape == (12, 2, 64, 64) and st.images.dtype == np.float32
    flux = np.stack([st.truth["flux_g"], st.truth["flux_i"]], axis=1)
    np.testing.assert_allclose(st.images.sum(axis=(2, 3)), flux, rtol=0.02)
    yy, xx = np.indices((64, 64))
    # Without knots galaxies are point-symmetric: the centroid is the centre pixel.
    sym = simulate_stamps("lsst", 4, size=32, seed=1, bands=("r",), knots=False)
    for im in sym.images[:, 0].astype(np.float64):
        yy, xx = np.indices(im.shape)
        assert (im * yy).sum() / im.sum() == pytest.approx(16.0, abs=0.02)
        assert (im * xx).sum() / im.sum() == pytest.approx(16.0, abs=0.02)
    assert st.psf_images.shape[0] == 2
    from deconvjax.sims import get_survey

    sv = get_survey("lsst")
    np.testing.assert_allclose(st.noise_sigma ** 2, [sv.background_variance("g"),
                                                     sv.background_variance("i")], rtol=1e-6)


def test_stamps_at_chosen_resolution_without_psf():
    st = simulate_stamps("hst", 3, size=64, seed=2, pixel_scale=0.06, convolve_psf=False,
                         mag_range=(23.0, 24.0))
    assert st.pixel_scale == 0.06 and st.psf_images.shape == (1, 25, 25)
    assert st.truth.meta["model_psf_fwhm_pixels"] == 1.0
    np.testing.assert_allclose(st.images.sum(axis=(2, 3))[:, 0], st.truth["flux_F814W"],
                               rtol=0.03)


def test_noise_is_added_at_the_preset_level():
    a = simulate_stamps("lsst", 6, size=32, seed=3, bands=("r",))
    b = simulate_stamps("lsst", 6, size=32, seed=3, bands=("r",), add_noise=True)
    resid = (b.images - a.images)[:, 0]
    assert np.std(resid) == pytest.approx(a.noise_sigma[0], rel=0.05)


def test_shards_deterministic_and_streamable(tmp_path):
    kw = dict(size=32, bands=("r",), shard_size=4, progress=False)
    d1 = write_stamp_shards(tmp_path / "a", "lsst", 10, seed=9, **kw)
    d2 = write_stamp_shards(tmp_path / "b", "lsst", 10, seed=9, **kw)
    idx = read_stamp_index(d1)
    assert idx["n"] == 10 and [s["n"] for s in idx["shards"]] == [4, 4, 2]
    for s in idx["shards"]:
        assert (d1 / s["images"]).read_bytes() == (d2 / s["images"]).read_bytes()
        assert (d1 / s["truth"]).read_bytes() == (d2 / s["truth"]).read_bytes()
    full = np.concatenate([np.load(d1 / s["images"]) for s in idx["shards"]])
    batches = list(iter_stamp_batches(d1, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), full)
    sh1 = np.concatenate(list(iter_stamp_batches(d1, batch_size=3, shuffle=True, seed=1)))
    sh2 = np.concatenate(list(iter_stamp_batches(d1, batch_size=3, shuffle=True, seed=1)))
    np.testing.assert_array_equal(sh1, sh2)
    assert not np.array_equal(sh1, full)
    key = lambda a: np.sort(a.reshape(len(a), -1).sum(1))  # noqa: E731
    np.testing.assert_allclose(key(sh1), key(full))
    assert len(read_stamp_truth(d1)) == 10
    assert len(list(iter_stamp_batches(d1, batch_size=4, drop_last=True))) == 2


@pytest.mark.slow
def test_parallel_shards_are_identical_to_serial(tmp_path):
    kw = dict(size=16, bands=("r",), shard_size=3, progress=False)
    a = write_stamp_shards(tmp_path / "a", "lsst", 7, seed=2, workers=1, **kw)
    b = write_stamp_shards(tmp_path / "b", "lsst", 7, seed=2, workers=2, **kw)
    for name in ("index.json", "stamps_00000.npy", "stamps_00002.npy", "truth_00001.ecsv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_corrupted_shard_is_named(tmp_path):
    d = write_stamp_shards(tmp_path / "s", "lsst", 3, seed=0, size=16, bands=("r",),
                           progress=False)
    (d / "stamps_00000.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="stamps_00000.npy"):
        list(iter_stamp_batches(d))


def test_cli_simulate_writes_identical_files_for_a_seed(tmp_path):
    args = ["--survey", "lsst", "--n-fields", "2", "--seed", "0", "--size", "40",
            "--bands", "r,i", "--n-sources", "3", "--no-progress"]
    r1 = CliRunner().invoke(simulate, [*args, "--out", str(tmp_path / "a")])
    r2 = CliRunner().invoke(simulate, [*args, "--out", str(tmp_path / "b")])
    assert r1.exit_code == 0, r1.output
    assert r2.exit_code == 0, r2.output
    for name in ("field_00000.fits", "field_00001.fits", "truth_00001.ecsv", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    f = read_field(tmp_path / "a" / "field_00001.fits")
    assert f.bands == ("r", "i") and f.images.shape == (2, 40, 40) and len(f.truth) == 3
    r3 = CliRunner().invoke(simulate, ["--survey", "lsst", "--n-fields", "1", "--size", "40",
                                       "--bands", "q", "--out", str(tmp_path / "c")])
    assert r3.exit_code != 0 and "band" in r3.output


def test_cli_paired_and_stamps(tmp_path):
    r = CliRunner().invoke(simulate, ["--survey", "lsst", "--paired", "euclid", "--n-fields", "1",
                                      "--size", "40", "--bands", "i", "--no-progress",
                                      "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    g = read_field(tmp_path / "p" / "field_00000.fits")
    s = read_field(tmp_path / "p" / "field_00000_euclid.fits")
    assert s.pixel_scale == 0.1 and s.images.shape == (1, 80, 80)
    np.testing.assert_allclose(s.truth["ra"], g.truth["ra"])
    r = CliRunner().invoke(simulate, ["--stamps", "--n-fields", "5", "--size", "32",
                                      "--bands", "r", "--no-progress",
                                      "--out", str(tmp_path / "st")])
    assert r.exit_code == 0, r.output
    assert read_stamp_index(tmp_path / "st")["n"] == 5
    r = CliRunner().invoke(simulate, ["--stamps", "--fits-cubes", "--n-fields", "3", "--size",
                                      "16", "--bands", "g,r", "--no-progress",
                                      "--out", str(tmp_path / "fc")])
    assert r.exit_code == 0, r.output
    from astropy.io import fits

    cube = fits.getdata(tmp_path / "fc" / "stamps_00000.fits")
    np.testing.assert_array_equal(cube, np.load(tmp_path / "fc" / "stamps_00000.npy"))
    assert cube.shape == (3, 2, 16, 16)


@pytest.mark.parametrize("survey, bands", [("lsst", ("u", "i")), ("hst", None), ("euclid", None)])
def test_fast_knot_path_matches_galsim_drawing(survey, bands):
    """Multi-band stamps are drawn with band-shared FFTs; the result must equal GalSim drawing
    the whole galaxy (bulge + disk + RandomKnots) convolved with each band's PSF."""
    import galsim

    from deconvjax.sims import get_survey
    from deconvjax.sims.galaxies import draw_galaxy_params, galaxy_profiles

    sv = get_survey(survey, bands)
    st = simulate_stamps(sv, 6, size=48, seed=np.random.default_rng(4), mag_range=(21.0, 23.0))
    rng = np.random.default_rng(4)
    rng.permutation(6)  # simulate_stamps first picks which stamps are real galaxies
    gal = draw_galaxy_params(rng, 6, mag_range=(21.0, 23.0))
    assert np.any(gal["knot_frac"] > 0)
    np.testing.assert_allclose(st.truth["mag_i"], gal["mag_i"])
    for k in range(6):
        profs = galaxy_profiles(sv, gal, k)
        for b, band in enumerate(sv.bands):
            ref = galsim.Convolve(profs[b], sv.psf(band.name)).drawImage(
                nx=48, ny=48, scale=sv.pixel_scale, method="auto", use_true_center=False).array
            # Only the FFT period (wing folding, < 1e-4 of the peak) may differ.
            np.testing.assert_allclose(st.images[k, b], ref, atol=1e-4 * ref.max())
            assert st.images[k, b].sum() == pytest.approx(ref.sum(), rel=5e-4)
