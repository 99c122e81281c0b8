"""Structure components for resolved irregular galaxies (`deconvjax.fit.structure`) and a
noise map where the noise varies across the image (`deconvjax.io.noise`).

Expectations come from the simulation's truth (GalSim: a disc with off-centre clumps,
one galaxy) and from the real COSMOS stamps' noise."""

import galsim
import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from deconvjax import Frame, GaussianPSF, Observation, PixelMorphology, Scene, StructuredMorphology
from deconvjax.cli import main
from deconvjax.fit import Constraints, fit
from deconvjax.fit.init import init_scene
from deconvjax.fit.io import load_scene, save_scene
from deconvjax.fit.measure import source_fluxes
from deconvjax.fit.structure import add_structure
from deconvjax.io.noise import estimate_noise

SHAPE = (48, 48)
SIGMA = 0.05
FLUX = 400.0


def _clumpy(seed=0, clumps=True):
    """A disc with two off-centre clumps (one galaxy) through a Gaussian PSF of 1 pixel:
    image with white noise, and the PSF image."""
    rng = np.random.default_rng(seed)
    psf = galsim.Gaussian(sigma=1.0)
    gal = galsim.Exponential(half_light_radius=4.0, flux=FLUX * (0.7 if clumps else 1.0)).shear(g1=0.2, g2=0.1)
    if clumps:
        gal = gal + galsim.Gaussian(sigma=1.2, flux=0.18 * FLUX).shift(5.0, 3.0)
        gal = gal + galsim.Gaussian(sigma=1.5, flux=0.12 * FLUX).shift(-2.0, -6.0)
    image = galsim.Convolve(gal, psf).drawImage(nx=SHAPE[1], ny=SHAPE[0], scale=1.0, method="no_pixel").array
    psf_image = psf.drawImage(nx=21, ny=21, scale=1.0, method="no_pixel").array
    return image + rng.normal(0.0, SIGMA, SHAPE), psf_image


def _fit(image, psf_image):
    from deconvjax.psf import ArrayPSF

    frame = Frame(["b"], SHAPE, pixel_scale=1.0, psf=GaussianPSF(0.8))
    obs = Observation(image[None], weights=np.full((1, *SHAPE), SIGMA**-2), psf=ArrayPSF(psf_image[None]), frame=frame)
    # One galaxy at the image centre (galsim's centre of a 48 x 48 image), given: the
    # detection would deblend bright clumps into sources of their own.
    scene = init_scene(frame, obs, np.array([[23.5, 23.5]]), kind="pixel")
    fitted, result = fit(scene, obs, progress=False)
    return frame, obs, fitted, result


@pytest.fixture(scope="module")
def clumpy():
    return _fit(*_clumpy())


def test_structure_brings_a_clumpy_galaxy_to_the_noise(clumpy):
    frame, obs, fitted, result = clumpy
    # The constrained (symmetric, monotonic) fit cannot follow the clumps.
    assert result.chi2_per_pixel > 1.3, result.chi2_per_pixel
    structured, changed = add_structure(fitted, frame, obs)
    assert changed == [0]  # the galaxy got a structure component
    refit, result2 = fit(structured, obs, progress=False)
    assert 0.8 <= result2.chi2_per_pixel <= 1.2, result2.chi2_per_pixel
    assert result2.frac_beyond_3sigma <= 0.01
    assert refit.n_sources == fitted.n_sources  # the galaxy stays as many sources, one row each
    # Total flux against the truth (noise on the total: ~SIGMA * 48 = 2.4).
    assert abs(source_fluxes(refit).sum() - FLUX) < 0.03 * FLUX
    # The structure is exactly zero off its support, and positive.
    for g in refit.groups:
        m = g.morphology
        if isinstance(m, StructuredMorphology):
            assert np.all(np.asarray(m.structure)[np.asarray(m.support) == 0] == 0)
            assert np.all(np.asarray(m.structure) >= 0) and np.all(np.asarray(m.pixels) >= 0)
            assert np.asarray(m.structure).sum() > 0.05  # it carries a share of the light


def test_no_structure_where_the_constraints_fit():
    frame, obs, fitted, result = _fit(*_clumpy(seed=1, clumps=False))
    assert result.chi2_per_pixel < 1.2
    structured, changed = add_structure(fitted, frame, obs)
    assert changed == [] and structured is fitted


def test_structured_scene_saves_and_loads(clumpy, tmp_path):
    frame, obs, fitted, _ = clumpy
    structured, changed = add_structure(fitted, frame, obs)
    save_scene(tmp_path / "scene", structured, frame)
    loaded, _, _ = load_scene(tmp_path / "scene")
    np.testing.assert_allclose(np.asarray(loaded.render()), np.asarray(structured.render()), rtol=1e-6, atol=1e-9)
    kinds = {type(g.morphology) for g in loaded.groups}
    assert StructuredMorphology in kinds


def test_structured_morphology_checks_shapes():
    with pytest.raises(ValueError, match="structure and support"):
        StructuredMorphology(np.ones((5, 5)), np.ones((5, 5)), np.ones((3, 3)))
    m = StructuredMorphology(np.ones((5, 5)), np.full((5, 5), 2.0), np.eye(5))
    # The structure is held at zero off the support; the image is body plus structure.
    np.testing.assert_allclose(np.asarray(m.image()), 1.0 + 2.0 * np.eye(5), atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.image()), np.asarray(PixelMorphology(1.0 + 2.0 * np.eye(5)).image()),
                               atol=1e-6)


def test_structure_respects_constraints_in_the_fit(clumpy):
    """The body stays monotonic under the fit's constraints."""
    from deconvjax.fit.constraints import monotonise

    frame, obs, fitted, _ = clumpy
    structured, _ = add_structure(fitted, frame, obs)
    refit, _ = fit(structured, obs, progress=False, constraints=Constraints())
    for g in refit.groups:
        if isinstance(g.morphology, StructuredMorphology):
            body = g.morphology.pixels
            np.testing.assert_allclose(np.asarray(monotonise(body)), np.asarray(body), rtol=1e-5, atol=1e-9)


def test_scene_without_structure_is_untouched_for_profiles():
    frame = Frame(["b"], SHAPE, pixel_scale=1.0, psf=GaussianPSF(0.8))
    image, psf_image = _clumpy(seed=2)
    from deconvjax.psf import ArrayPSF

    obs = Observation(image[None], weights=np.full((1, *SHAPE), SIGMA**-2), psf=ArrayPSF(psf_image[None]), frame=frame)
    scene = init_scene(frame, obs, np.array([[23.5, 23.5]]), kind="sersic")
    fitted, _ = fit(scene, obs, progress=False, max_iter=30)
    out, changed = add_structure(fitted, frame, obs)
    assert changed == [] and isinstance(out, Scene)  # only free-form sources take structure


# ---------------------------------------------------------------------------------------
# Noise that varies across the image
# ---------------------------------------------------------------------------------------


def test_noise_map_where_the_noise_varies():
    rng = np.random.default_rng(3)
    rms = np.where(np.arange(96)[:, None] < 48, 1.0, 1.8) * np.ones((96, 96))
    var, est = estimate_noise(rng.normal(0.0, 1.0, (96, 96)) * rms)
    assert est.varies[0] > 1.3
    ratio_low = np.sqrt(np.median(var[0, :40]))
    ratio_high = np.sqrt(np.median(var[0, 56:]))
    assert abs(ratio_low - 1.0) < 0.15 and abs(ratio_high - 1.8) < 0.2, (ratio_low, ratio_high)
    assert "varies" in est.summary()
    # Uniform noise keeps one rms for the whole image.
    var, est = estimate_noise(rng.normal(0.0, 1.0, (96, 96)))
    assert est.varies[0] == 1.0 and np.ptp(var) == 0.0


def test_cli_fits_a_real_clumpy_cosmos_galaxy_to_the_noise(cosmos_dir, tmp_path):
    """The brightest clumpy COSMOS galaxy (catalog row 46: a lopsided disc), given as it is
    (counts/s, its own PSF, no noise map): the default `deconvjax fit` reaches the noise
    (the constrained fit alone: chi2/pixel 2.3, 5% of pixels beyond 3 sigma)."""
    from helpers import cosmos_sample_rows

    (row,) = cosmos_sample_rows(cosmos_dir, [46])
    cat = fits.getdata(cosmos_dir / "real_galaxy_catalog_26_extension_example.fits")
    with fits.open(cosmos_dir / "real_galaxy_images_extension.fits") as gals, \
            fits.open(cosmos_dir / "real_galaxy_PSF_images_extension.fits") as psfs:
        image = gals[int(cat["GAL_HDU"][row])].data
        psf = psfs[int(cat["PSF_HDU"][row])].data
    fits.writeto(tmp_path / "img.fits", image.astype(np.float32), fits.Header({"BUNIT": "counts/s", "PIXSCALE": 0.03}))
    fits.writeto(tmp_path / "psf.fits", psf.astype(np.float32), fits.Header({"PIXSCALE": 0.03}))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["fit", str(tmp_path / "img.fits"), "--psf", str(tmp_path / "psf.fits"),
                                    "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "adding structure components" in res.output
    header = fits.getheader(out / "results.fits")
    assert 0.8 <= header["CHI2PIX"] <= 1.2, header["CHI2PIX"]
    assert header["FRAC3SIG"] <= 0.01
    assert header["NOISEFIT"]


def test_refit_with_structure_compiles_nothing(clumpy):
    """In the form `deconvjax fit` starts from (`with_structure_slots`), adding structure
    keeps the scene's structure: the refit runs the same compiled program."""
    from deconvjax.fit import compilation_count, with_structure_slots

    frame, obs, fitted, _ = clumpy
    slots = with_structure_slots(fitted, frame)
    np.testing.assert_allclose(np.asarray(slots.render()), np.asarray(fitted.render()), rtol=1e-5, atol=1e-7)
    first, r1 = fit(slots, obs, progress=False)
    assert r1.chi2_per_pixel > 1.3  # symmetric bodies, as the PixelMorphology fit
    before = compilation_count()
    structured, changed = add_structure(first, frame, obs)
    assert changed == [0]
    _, r2 = fit(structured, obs, progress=False)
    assert compilation_count() == before
    assert 0.8 <= r2.chi2_per_pixel <= 1.2
