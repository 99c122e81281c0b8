"""The starlet morphology: added touching only `deconvjax.model`, it initialises, fits,
batches, saves and catalogs through the generic morphology protocol."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import ast
import inspect

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import deconvjax as dj
from deconvjax.fit import fit, fit_batch, init_batch, init_scene, load_scene, save_scene, source_fluxes, stack
from deconvjax.fit.measure import source_kinds
from deconvjax.model import StarletMorphology, morphology_class, morphology_kinds
from deconvjax.model.starlet import default_scales, starlet_reconstruction, starlet_transform


def _scipy_starlet(image, scales):
    """The a trous transform written independently: scipy's 1-d convolutions with the
    B3 kernel dilated by 2^j, mirrored edges ('reflect' is numpy's 'symmetric')."""
    h = np.array([1, 4, 6, 4, 1]) / 16.0
    c = image.astype(np.float64)
    out = []
    for j in range(scales):
        step = 2**j
        k = np.zeros(4 * step + 1)
        k[::step] = h
        smooth = ndimage.convolve1d(ndimage.convolve1d(c, k, axis=0, mode="reflect"), k, axis=1, mode="reflect")
        out.append(c - smooth)
        c = smooth
    out.append(c)
    return np.stack(out)


def test_transform_matches_an_independent_a_trous_and_reconstructs_exactly():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(23, 23))
    coeffs = starlet_transform(image, 3)
    np.testing.assert_allclose(coeffs, _scipy_starlet(image, 3), atol=1e-12)
    np.testing.assert_allclose(starlet_reconstruction(coeffs), image, atol=1e-12)
    # The jax path is the numpy one.
    np.testing.assert_allclose(np.asarray(starlet_transform(jnp.asarray(image), 3)), coeffs, atol=1e-5)
    # A flat image has no wavelet signal.
    flat = starlet_transform(np.full((15, 15), 2.0), default_scales((15, 15)))
    np.testing.assert_allclose(flat[:-1], 0.0, atol=1e-12)
    np.testing.assert_allclose(flat[-1], 2.0)


def test_known_by_kind_and_bad_input_named():
    assert morphology_kinds()["starlet"] is StarletMorphology
    assert morphology_class("StarletMorphology") is StarletMorphology
    with pytest.raises(ValueError, match="coefficients"):
        StarletMorphology(np.zeros((15, 15)))
    with pytest.raises(ValueError, match="unknown morphology kind"):
        morphology_class("wavelet")


def _field(seed=0, shape=(41, 41), centres=((20.3, 19.6),), sigma=2.2, flux=400.0, noise=0.5):
    """Gaussian galaxies drawn analytically (GalSim-free), through a Gaussian PSF."""
    frame = dj.Frame(("r",), shape, psf=dj.GaussianPSF(0.7))
    truth = dj.Scene(frame, [dj.Source([flux], dj.GaussianMorphology(sigma, 0.1, -0.05, shape=(31, 31)), c)
                             for c in centres])
    psf = dj.GaussianPSF(1.5)
    clean = dj.Observation(np.zeros((1, *shape)), frame=frame, psf=psf, rms=noise).predict(truth.render())
    rng = np.random.default_rng(seed)
    data = np.asarray(clean) + rng.normal(0, noise, (1, *shape))
    return frame, dj.Observation(data, frame=frame, psf=psf, rms=noise), flux


def test_fit_reaches_the_noise_as_a_positive_pixel_array():
    """Without a prior on its coefficients a starlet morphology is a positive pixel array
    (scarlet2 says as much): the same chi2 and flux as a pixel morphology under
    positivity alone. Both keep positive noise in the wings that monotonicity would
    remove: their flux is high (+21% here, where the monotonic pixel fit is within 3%)."""
    frame, obs, flux = _field()
    start = init_scene(frame, obs, [(20.3, 19.6)], kind="starlet")
    assert isinstance(start.groups[0].morphology, StarletMorphology)
    fitted, result = fit(start, obs, max_iter=300, progress=False)
    assert not result.failed and result.converged
    assert 0.8 < result.chi2_per_pixel < 1.2
    image = np.asarray(fitted.groups[0].morphology.total())
    assert image.min() >= -1e-6  # projected onto positive images
    np.testing.assert_allclose(image.sum(), 1.0, rtol=1e-4)  # unit sum, flux in the spectrum
    assert source_kinds(fitted) == ["starlet"]
    positive = dj.fit.Constraints(symmetric=False, monotonic=False)
    pixel, presult = fit(init_scene(frame, obs, [(20.3, 19.6)], kind="pixel"), obs, max_iter=300,
                         constraints=positive, progress=False)
    assert abs(result.chi2_per_pixel - presult.chi2_per_pixel) < 0.02
    assert abs(float(source_fluxes(fitted)[0, 0]) / float(source_fluxes(pixel)[0, 0]) - 1) < 0.03
    monotonic, _ = fit(init_scene(frame, obs, [(20.3, 19.6)], kind="pixel"), obs, max_iter=300, progress=False)
    assert abs(float(source_fluxes(monotonic)[0, 0]) / flux - 1) < 0.03


def test_sparsity_acts_in_the_starlet_basis():
    frame, obs, _ = _field(seed=1)
    start = init_scene(frame, obs, [(20.3, 19.6)], kind="starlet")
    l1 = []
    for weight in (0.0, 0.05):
        fitted, _ = fit(start, obs, max_iter=200, constraints=dj.fit.Constraints(sparsity=weight), progress=False)
        l1.append(float(fitted.groups[0].morphology.sparsity()[0]))
    assert l1[1] < 0.9 * l1[0]


def test_batched_fit_and_saved_scene(tmp_path):
    centres = [[(20.3, 19.6)], [(18.0, 22.0), (26.0, 12.0)]]
    fields = [_field(seed=s, centres=c) for s, c in enumerate(centres)]
    frame = fields[0][0]
    obs = [f[1] for f in fields]
    scenes, mask = init_batch(frame, obs, [np.asarray(c) for c in centres], kind="starlet", stamp_size=21)
    fitted, result = fit_batch(scenes, stack(obs), source_mask=mask, max_iter=150, progress=False, workers=1)
    assert not result.failed.any()
    assert np.all(result.chi2_per_pixel < 1.3)
    one = init_scene(frame, obs[0], centres[0], kind="starlet", stamp_size=21)
    single, _ = fit(one, obs[0], max_iter=150, progress=False)
    path = save_scene(tmp_path / "starlet", single, frame)[0]
    loaded, _, _ = load_scene(path)
    np.testing.assert_array_equal(np.asarray(loaded.groups[0].morphology.coefficients),
                                  np.asarray(single.groups[0].morphology.coefficients))


def test_fit_imports_no_morphology_class():
    """Self-describing morphologies: the fitting modules import no concrete morphology
    class (so they cannot branch on one); the starlet came in through deconvjax.model
    alone. (`structure` builds the body-plus-structure form, a model of its own.)"""
    import importlib

    names = {cls.__name__ for cls in morphology_kinds().values()}
    for module in ("batch", "constraints", "init", "io", "measure", "optimise", "quality", "solver"):
        tree = ast.parse(inspect.getsource(importlib.import_module(f"deconvjax.fit.{module}")))
        imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for a in node.names}
        assert not imported & names, (module, imported & names)
