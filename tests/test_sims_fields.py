"""Simulated fields: truth fluxes, noise levels, WCS, determinism, paired views."""

import galsim
import numpy as np
import pytest

from deconvjax import sims
from deconvjax.sims import blendedness, get_survey, simulate_field
from deconvjax.sims.galaxies import cosmos_dir
from deconvjax.sims.paired import simulate_paired


def _flux_table(field):
    return np.stack([np.asarray(field.truth[f"flux_{b}"]) for b in field.bands], axis=1)


@pytest.fixture(scope="module")
def lsst_field():
    return simulate_field("lsst", seed=7, shape=(64, 64), n_sources=5, star_fraction=0.3)


def test_default_field_is_small_blended_and_deterministic():
    f = sims.default_field(0)
    assert f.images.shape == (3, 80, 80) and f.bands == ("g", "r", "i")
    assert f.source_images.shape == (5, 3, 80, 80)
    assert np.all(f.truth["kind"] == "galaxy")
    assert np.max(f.truth["blendedness"]) > 0.1  # actually blended
    g = sims.default_field(0)
    np.testing.assert_array_equal(f.images, g.images)
    assert not np.array_equal(f.images, sims.default_field(1).images)


@pytest.mark.parametrize(
    "survey, kwargs",
    [
        ("lsst", dict(shape=(64, 64), n_sources=5, star_fraction=0.3)),
        ("hsc", dict(shape=(72, 72), n_sources=3, bands=("g", "i"))),
        ("euclid", dict(shape=(128, 128), n_sources=3)),
        ("hst", dict(shape=(256, 256), n_sources=2, mag_range=(23.0, 25.0), star_fraction=0.0,
                     max_separation=1.5)),
    ],
)
def test_noise_free_fluxes_match_truth_to_one_percent(survey, kwargs):
    f = simulate_field(survey, seed=11, **kwargs)
    measured = f.source_images.sum(axis=(2, 3), dtype=np.float64)
    np.testing.assert_allclose(measured, _flux_table(f), rtol=0.01)


@pytest.mark.parametrize(
    "survey, bands, shape",
    [("lsst", ("u", "g", "r", "i", "z", "y"), (112, 112)), ("hsc", ("r", "y"), (112, 112)),
     ("euclid", None, (128, 128)), ("hst", None, (256, 256))],
)
def test_blank_sky_noise_matches_preset_to_five_percent(survey, bands, shape):
    sv = get_survey(survey)
    f = simulate_field(sv, seed=1, shape=shape, n_sources=2, bands=bands, star_fraction=0.0,
                       max_separation=1.5)
    for b, band in enumerate(f.bands):
        bkg = sv.background_variance(band)
        blank = f.noise_free[b] < 0.01 * np.sqrt(bkg)
        assert blank.sum() > 5000  # enough pixels for a ~2% variance estimate
        resid = (f.images[b] - f.noise_free[b])[blank]
        assert np.var(resid) == pytest.approx(bkg, rel=0.05)
        np.testing.assert_allclose(f.variance[b][blank], bkg, rtol=0.01)
    # Source pixels carry their own Poisson variance on top (gain 1).
    np.testing.assert_allclose(
        f.variance, np.clip(f.noise_free, 0, None) + np.array(
            [sv.background_variance(b) for b in f.bands])[:, None, None], rtol=1e-4)


def test_galaxy_colours_match_galsim_chromatic_flux():
    """Per-band fluxes through an independent path: a GalSim ChromaticSum's calculateFlux."""
    from deconvjax.sims.galaxies import (
        _template_sed,
        draw_galaxy_params,
        galaxy_band_fluxes,
    )

    sv = get_survey("lsst")
    p = draw_galaxy_params(np.random.default_rng(5), 4)
    bp_i = galsim.Bandpass("LSST_i.dat", "nm").withZeropoint("AB")
    for i in range(4):
        bt, kf, z = p["bulge_frac"][i], p["knot_frac"][i], p["z"][i]
        disk_t = ("Sbc", "Scd")[int(p["disk_sed"][i])]
        parts = [(bt, "E"), ((1 - bt) * (1 - kf), disk_t), ((1 - bt) * kf, "Im")]
        total_i = 10 ** (-0.4 * p["mag_i"][i])
        ours = galaxy_band_fluxes(sv, p, i).sum(0)
        for b, band in enumerate(sv.bands):
            bp = galsim.Bandpass(f"LSST_{band.name}.dat", "nm")
            expect = 0.0
            for frac, t in parts:
                if frac <= 0:
                    continue
                sed = _template_sed(t).atRedshift(z)
                # AB normalisation in LSST i, then photons through band b.
                sed = sed.withFluxDensity(1.0, 700.0)
                sed = sed * (frac * total_i / 10 ** (-0.4 * sed.calculateMagnitude(bp_i)))
                expect += sed.calculateFlux(bp) * 32.4e4 * band.exposure_time
            assert ours[b] == pytest.approx(expect, rel=0.01), (i, band.name)


def test_lsst_zero_points_match_descwl_and_galsim_photon_counts():
    sv = get_survey("lsst")
    # WeakLensingDeblending's LSST zero points (electrons / s at AB 24).
    for band, zp24 in (("u", 9.16), ("g", 50.70), ("r", 43.70), ("i", 32.36), ("z", 22.68),
                       ("y", 10.58)):
        rate = sv.mag_to_counts(24.0, band) / sv.band(band).exposure_time
        assert rate == pytest.approx(zp24, rel=2e-3)
    # A star's colours through an independent GalSim path: SED photon flux x area x time.
    f = simulate_field(sv, seed=4, shape=(64, 64), n_sources=3, star_fraction=1.0)
    bp_i = galsim.Bandpass("LSST_i.dat", "nm").withZeropoint("AB")
    from deconvjax.sims.galaxies import _blackbody_sed

    t = f.truth
    for s in range(len(t)):
        temp = float(t["temperature"][s])
        sed = _blackbody_sed(temp).withMagnitude(float(t["mag_i"][s]), bp_i)
        for band in ("g", "r", "z"):
            bp = galsim.Bandpass(f"LSST_{band}.dat", "nm")
            expect = sed.calculateFlux(bp) * 32.4e4 * sv.band(band).exposure_time
            assert t[f"flux_{band}"][s] == pytest.approx(expect, rel=2e-3)


def test_truth_positions_agree_with_wcs_and_source_centroids(lsst_field):
    f = lsst_field
    t = f.truth
    x, y = f.wcs.all_world2pix(np.asarray(t["ra"]), np.asarray(t["dec"]), 0)
    np.testing.assert_allclose(y, t["y"], atol=1e-6)
    np.testing.assert_allclose(x, t["x"], atol=1e-6)
    yy, xx = np.indices(f.shape)
    for s in range(len(t)):
        im = f.source_images[s, 2].astype(np.float64)
        cy, cx = (im * yy).sum() / im.sum(), (im * xx).sum() / im.sum()
        tol = 0.05 if t["kind"][s] == "star" else 0.5  # knots make galaxies lopsided
        assert abs(cy - t["y"][s]) < tol and abs(cx - t["x"][s]) < tol
    # Sky centre on the geometric centre of the image; north up, east left.
    ra, dec = f.wcs.all_pix2world([(f.shape[1] - 1) / 2], [(f.shape[0] - 1) / 2], 0)
    assert ra[0] == pytest.approx(sims.COSMOS_CENTER[0]) and dec[0] == pytest.approx(2.2)
    ra2, dec2 = f.wcs.all_pix2world([(f.shape[1] - 1) / 2 + 10], [(f.shape[0] - 1) / 2 + 10], 0)
    assert ra2[0] < ra[0] and dec2[0] > dec[0]


def test_psf_images_odd_centred_unit_sum(lsst_field):
    p = lsst_field.psf_images
    assert p.shape[1] % 2 == 1 and p.shape[1] == p.shape[2]
    np.testing.assert_allclose(p.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    c = p.shape[1] // 2
    yy, xx = np.indices(p.shape[1:])
    for img in p:
        assert np.unravel_index(img.argmax(), img.shape) == (c, c)
        assert (img * yy).sum() == pytest.approx(c, abs=1e-3)
        assert (img * xx).sum() == pytest.approx(c, abs=1e-3)
    # PSF width follows the preset seeing (u broader than y).
    hw = [(img > img.max() / 2).sum() for img in p]
    assert hw[0] > hw[-1]


def test_blendedness_analytic():
    a = np.zeros((2, 1, 8, 8))
    a[0, 0, 1, 1] = 1.0
    a[1, 0, 6, 6] = 3.0
    np.testing.assert_allclose(blendedness(a), 0.0)
    b = np.ones((2, 1, 4, 4))
    np.testing.assert_allclose(blendedness(b), 0.5)
    c = np.ones((3, 2, 4, 4))
    np.testing.assert_allclose(blendedness(c), 2.0 / 3.0)


def test_paired_views_share_sky_and_catalog():
    p = simulate_paired("hst", "lsst", seed=2, ground_shape=(40, 40), n_sources=3,
                        ground_bands=("r", "i"))
    sp, gr = p.space, p.ground
    assert sp.pixel_scale == 0.03 and gr.pixel_scale == 0.2
    assert sp.shape == (267, 267)
    np.testing.assert_array_equal(sp.truth["id"], gr.truth["id"])
    np.testing.assert_allclose(sp.truth["ra"], gr.truth["ra"], atol=1e-12)
    np.testing.assert_allclose(sp.truth["dec"], gr.truth["dec"], atol=1e-12)
    # The same sky point through both WCSs: pixel positions scale by the pixel-scale ratio.
    ratio = gr.pixel_scale / sp.pixel_scale
    cg = (np.array(gr.shape) - 1) / 2
    cs = (np.array(sp.shape) - 1) / 2
    np.testing.assert_allclose((np.asarray(gr.truth["y"]) - cg[0]) * ratio,
                               np.asarray(sp.truth["y"]) - cs[0], atol=1e-6)
    # Sources keep their total flux in each view (same SED maths, different bandpasses).
    for f in (sp, gr):
        np.testing.assert_allclose(f.source_images.sum(axis=(2, 3)), _flux_table(f), rtol=0.01)
    # Same seed, same pair.
    q = simulate_paired("hst", "lsst", seed=2, ground_shape=(40, 40), n_sources=3,
                        ground_bands=("r", "i"))
    np.testing.assert_array_equal(q.space.images, sp.images)
    np.testing.assert_array_equal(q.ground.images, gr.images)


@pytest.mark.skipif(cosmos_dir() is None, reason="no COSMOS folder ($DECONVJAX_COSMOS) and no shipped subset")
def test_real_cosmos_galaxies_drawn_with_their_flux():
    f = simulate_field("lsst", seed=3, shape=(64, 64), n_sources=3, bands=("r", "i"),
                       real_fraction=1.0, star_fraction=0.0)
    assert np.all(f.truth["kind"] == "real") and np.all(f.truth["cosmos_index"] >= 0)
    np.testing.assert_allclose(f.source_images.sum(axis=(2, 3)), _flux_table(f), rtol=0.01)
    # Truth ellipticities follow the random rotation: compare with adaptive moments of the
    # drawn galaxies at HST resolution (a slightly different PSF, hence the tolerance).
    sp, _ = simulate_paired("hst", "lsst", seed=5, ground_shape=(48, 48), n_sources=3,
                            real_fraction=1.0, star_fraction=0.0, ground_bands=("i",),
                            min_separation=2.0, source_noise=False)
    checked = 0
    for s in range(3):
        img = galsim.Image(sp.source_images[s, 0].astype(np.float64))
        guess = galsim.PositionD(sp.truth["x"][s] + 1, sp.truth["y"][s] + 1)
        try:
            m = galsim.hsm.FindAdaptiveMom(img, guess_centroid=guess)
        except galsim.GalSimHSMError:
            continue
        if m.moments_sigma < 2.0:  # PSF-sized: its shape is the PSF's, not the galaxy's
            continue
        g = complex(m.observed_shape.g1, m.observed_shape.g2)
        e = complex(sp.truth["e1"][s], sp.truth["e2"][s])
        assert abs(g) == pytest.approx(abs(e), rel=0.3, abs=0.05)
        if abs(e) > 0.15:  # position angle, which the rotation sets
            dphi = np.angle(g / e) / 2
            assert abs(np.rad2deg(dphi)) < 10
            checked += 1
    assert checked >= 1


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="survey"):
        simulate_field("sdss")
    with pytest.raises(ValueError, match="band"):
        simulate_field("lsst", bands=("q",))
    with pytest.raises(ValueError, match="shape"):
        simulate_field("lsst", shape=(64,))
    with pytest.raises(ValueError, match="n_sources"):
        simulate_field("lsst", shape=(40, 40), n_sources=12, min_separation=2.0,
                       max_separation=2.5)
    with pytest.raises(TypeError, match="seed"):
        simulate_field("lsst", seed="zero")


def test_to_observation_builds_a_core_observation():
    pytest.importorskip("deconvjax.observation")
    f = sims.default_field(0)
    obs = f.to_observation()
    assert obs.shape == f.images.shape
    np.testing.assert_allclose(np.asarray(obs.weights), 1.0 / f.variance, rtol=1e-6)


def test_epochs_share_catalog_with_own_seeing_and_depth():
    eps = sims.simulate_epochs("lsst", 3, seed=0, shape=(56, 56), n_sources=3, bands=("r",))
    one = get_survey("lsst", ("r",))
    assert len(eps) == 3
    for f in eps:
        np.testing.assert_array_equal(f.truth["ra"], eps[0].truth["ra"])
        np.testing.assert_allclose(f.truth["flux_r"], eps[0].truth["flux_r"])
        np.testing.assert_allclose(f.source_images.sum(axis=(2, 3))[:, 0], f.truth["flux_r"],
                                   rtol=0.01)
        assert f.wcs.to_header() == eps[0].wcs.to_header()
    # One third of the preset depth per epoch.
    np.testing.assert_allclose(eps[0].truth["flux_r"] * 3,
                               one.mag_to_counts(one.counts_to_mag(eps[0].truth["flux_r"] * 3,
                                                                   "r"), "r"))
    peaks = [f.psf_images[0].max() for f in eps]
    assert len(set(np.round(peaks, 6))) == 3  # seeing differs between epochs
    assert not np.array_equal(eps[0].images, eps[1].images)


def test_paired_views_are_consistent_through_the_core_operator():
    """The ground observation's operator, applied to the space view's noise-free sources on
    the space grid, reproduces the ground noise-free image (multi-resolution consistency)."""
    core = pytest.importorskip("deconvjax.observation")
    from deconvjax import Frame
    from deconvjax.psf import GaussianPSF

    sp, gr = simulate_paired("hst", "lsst", seed=2, ground_shape=(40, 40), n_sources=3,
                             ground_bands=("i",), star_fraction=0.0)
    frame = Frame(("i",), sp.shape, pixel_scale=sp.pixel_scale, wcs=sp.wcs,
                  psf=GaussianPSF(0.035))  # close to the HST PSF core
    obs = gr.to_observation(frame=frame)
    assert isinstance(obs, core.Observation)
    # Per-source colour F814W -> LSST i from the truth tables.
    colour = np.asarray(gr.truth["flux_i"]) / np.asarray(sp.truth["flux_F814W"])
    model = np.einsum("s,syx->yx", colour, sp.source_images[:, 0])[None]
    pred = np.asarray(obs(model))
    nf = gr.noise_free
    assert pred.sum() == pytest.approx(nf.sum(), rel=0.01)
    assert np.abs(pred - nf).max() < 0.1 * nf.max()


def test_hst_correlated_noise_keeps_variance_and_correlates_neighbours():
    sv = get_survey("hst")
    kw = dict(seed=6, shape=(200, 200), n_sources=1, star_fraction=1.0)
    white = simulate_field(sv, **kw)
    corr = simulate_field(sv, correlated_noise=True, **kw)
    np.testing.assert_array_equal(white.noise_free, corr.noise_free)
    bkg = sv.background_variance("F814W")
    for f, rho_range in ((white, (-0.03, 0.03)), (corr, (0.3, 0.7))):
        blank = f.noise_free[0] < 0.01 * np.sqrt(bkg)
        n = (f.images[0] - f.noise_free[0]) * blank
        assert np.var(n[blank]) == pytest.approx(bkg, rel=0.05)
        both = blank[:, :-1] & blank[:, 1:]
        rho = np.corrcoef(n[:, :-1][both], n[:, 1:][both])[0, 1]
        assert rho_range[0] < rho < rho_range[1]
    with pytest.raises(ValueError, match="correlated_noise"):
        simulate_field("lsst", correlated_noise=True)
