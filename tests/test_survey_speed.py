"""The fit-survey speed-ups: `read_arrays`' fast path gives what astropy reads, the
last-batch size ladder, and the reading groups that never split a bucket."""

import numpy as np
import pytest
from astropy.io import fits

from deconvjax.io import read_arrays
from deconvjax.survey.task import SOURCE_BUCKETS, padded_batch, padded_count


@pytest.fixture(scope="module")
def field_file(tmp_path_factory):
    from click.testing import CliRunner

    from deconvjax.cli import main

    root = tmp_path_factory.mktemp("fast_read")
    res = CliRunner().invoke(main, ["simulate", "--n-fields", "1", "--size", "40", "--n-sources", "2", "--bands",
                                    "g,r", "--star-fraction", "0", "--seed", "4", "--out", str(root), "--no-progress"])
    assert res.exit_code == 0, res.output
    (path,) = sorted(root.glob("*.fits"))
    return path


def test_fast_read_equals_astropy(field_file):
    """Reference: the file opened by astropy directly (its HDUs by EXTNAME / EXTVER)."""
    data = read_arrays(field_file)
    with fits.open(field_file) as h:
        h0 = h[0].header
        assert data.bands == tuple(h0[f"BAND{k + 1}"] for k in range(h0["NBAND"]))
        for k in range(len(data.bands)):
            np.testing.assert_array_equal(data.images[k], h["SCI", k + 1].data)
            np.testing.assert_array_equal(data.variance[k], h["VAR", k + 1].data)
            np.testing.assert_array_equal(data.mask[k], h["MASK", k + 1].data.astype(bool))
            np.testing.assert_array_equal(data.psf_images[k], h["PSF", k + 1].data)
            var = h["VAR", k + 1].data.astype(np.float64)
            w = np.where(h["MASK", k + 1].data.astype(bool), 0.0, 1.0 / var)
            np.testing.assert_allclose(data.weights[k], w, rtol=1e-12)
        assert data.pixel_scale == h0["PIXSCALE"] and data.bunit == h0["BUNIT"]
        assert data.noise_source == h0["NOISESRC"]
        from astropy.wcs import WCS

        ref = WCS(h["SCI", 1].header).celestial
    assert data.images.dtype == np.float32
    yx = np.array([[3.0, 7.0], [20.5, 33.25]])
    np.testing.assert_allclose(np.array(data.wcs.pixel_to_world_values(yx[:, 1], yx[:, 0])),
                               np.array(ref.pixel_to_world_values(yx[:, 1], yx[:, 0])), rtol=0, atol=1e-12)
    # Each read has its own WCS object (they are mutable).
    assert read_arrays(field_file).wcs is not data.wcs


def test_files_the_fast_path_declines_read_as_astropy_reads_them(field_file, tmp_path):
    """A long NOISESRC (CONTINUE cards) and a scaled (BZERO) mask: read through astropy,
    with astropy's values."""
    long = tmp_path / "long.fits"
    with fits.open(field_file) as h:
        h[0].header["NOISESRC"] = "given: " + "x" * 100
        i = h.index_of(("MASK", 1))
        header = h[i].header.copy()
        del header["DJHASH"]  # no hash to check on this rewritten plane
        # uint16: astropy stores it as int16 with BZERO = 32768.
        h[i] = fits.ImageHDU(h[i].data.astype(np.uint16), header=header, name="MASK", ver=1)
        h.writeto(long)
    with fits.open(long, do_not_scale_image_data=True) as h:
        assert h["MASK", 1].header["BZERO"] == 32768
    data = read_arrays(long)
    assert data.noise_source == "given: " + "x" * 100
    with fits.open(long) as h:
        np.testing.assert_array_equal(data.mask[0], h["MASK", 1].data.astype(bool))


def test_flipped_byte_is_caught(field_file, tmp_path):
    raw = bytearray(field_file.read_bytes())
    with fits.open(field_file) as h:
        offset = h.fileinfo(h.index_of(("VAR", 2)))["datLoc"]
    raw[offset + 100] ^= 0x40
    bad = tmp_path / "flip.fits"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flip\.fits: HDU 'VAR' \(EXTVER 2\) is corrupted"):
        read_arrays(bad)


@pytest.mark.parametrize(("n", "batch", "min_batch", "want"), [
    (1, 256, 8, 8), (8, 256, 8, 8), (9, 256, 8, 16), (65, 256, 8, 128), (129, 256, 8, 256), (256, 256, 8, 256),
    (1, 2, 8, 2), (2, 2, 8, 2), (5, 20, 3, 5), (6, 20, 3, 10), (3, 64, 64, 64), (1, 7, 1, 1), (3, 7, 1, 4),
])
def test_padded_batch_ladder(n, batch, min_batch, want):
    assert padded_batch(n, batch, min_batch) == want


def test_padded_batch_bad_input():
    with pytest.raises(ValueError, match="n must be"):
        padded_batch(0, 8, 2)
    with pytest.raises(ValueError, match="n must be"):
        padded_batch(9, 8, 2)
    from deconvjax.survey import FitTask

    with pytest.raises(ValueError, match="min_batch"):
        FitTask(min_batch=0)


def test_read_groups_keep_buckets_whole():
    """Every (shape, padded source count) class lies in one reading group, in order of
    first appearance; a row with too many sources gets a group of its own."""
    from deconvjax.survey.run import read_groups

    rng = np.random.default_rng(0)
    rows = [{"ny": int(s), "nx": int(s), "y": [0.0] * int(n)}
            for s, n in zip(rng.choice([32, 48], 40), rng.integers(1, 10, 40))]
    rows.append({"ny": 32, "nx": 32, "y": [0.0] * (max(SOURCE_BUCKETS) + 1)})
    groups = read_groups(rows)
    assert sorted(k for g in groups for k, _ in g) == list(range(len(rows)))
    classes = [{(r["ny"], padded_count(len(r["y"])) if len(r["y"]) <= max(SOURCE_BUCKETS) else None)
                for _, r in g} for g in groups]
    assert all(len(c) == 1 for c in classes)
    assert len({next(iter(c)) for c in classes}) == len(groups)
    firsts = [g[0][0] for g in groups]
    assert firsts == sorted(firsts)
