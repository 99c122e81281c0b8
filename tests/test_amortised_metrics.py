"""Amortised metrics against hand-computed values on small arrays."""

import numpy as np
import pytest
from scipy.signal import fftconvolve

from deconvjax.amortised.convolution import convolve
from deconvjax.amortised.metrics import ellipticity, ellipticity_error, flux_error, psnr, ssim


def test_psnr_by_hand():
    truth = np.zeros((1, 4, 4))
    truth[0, 0, 0] = 2.0  # range 2
    est = truth + 0.1  # MSE 0.01
    assert psnr(est, truth)[0] == pytest.approx(10 * np.log10(4 / 0.01))


def test_ssim_identity_and_flux_error():
    rng = np.random.default_rng(0)
    truth = rng.random((2, 1, 16, 16))
    assert np.allclose(ssim(truth, truth), 1.0)
    assert ssim(truth + rng.normal(0, 0.3, truth.shape), truth).max() < 0.9
    assert flux_error(1.1 * truth, truth) == pytest.approx([0.1, 0.1])


def test_ellipticity_of_an_elongated_gaussian():
    y, x = np.mgrid[:41, :41] - 20.0
    sx, sy = 4.0, 2.0  # Qxx = 16, Qyy = 4: e1 = 12 / 20
    img = np.exp(-0.5 * (x**2 / sx**2 + y**2 / sy**2))[None]
    assert ellipticity(img)[0] == pytest.approx([0.6, 0.0], abs=1e-3)
    assert ellipticity_error(img, img.transpose(0, 2, 1))[0] == pytest.approx(1.2, abs=2e-3)


def test_shapes_checked():
    with pytest.raises(ValueError, match="estimate"):
        psnr(np.zeros((1, 4, 4)), np.zeros((1, 5, 5)))


def test_periodic_convolution_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.random((16, 16))
    p = rng.random((5, 5))
    ref = fftconvolve(np.pad(x, 8, mode="wrap"), p, mode="same")[8:-8, 8:-8]
    assert np.allclose(convolve(x, p), ref, atol=1e-5)
    with pytest.raises(ValueError, match="psf"):
        convolve(x, np.ones((17, 17)))


def test_pairs_are_the_forward_model():
    from deconvjax.amortised.pairs import Pairs, make_pairs, moffat_psf

    p = make_pairs(0, 3, 24, psf_size=11, noise_sigma=0.0)
    assert p.truth.shape == p.observed.shape == (3, 1, 24, 24)
    assert np.allclose(p.psf.sum(axis=(-2, -1)), 1.0, atol=1e-5)
    # Noiseless pairs: flux is conserved by the unit-sum PSF and the PSF's peak is centred.
    assert np.allclose(p.observed.sum(axis=(-2, -1)), p.truth.sum(axis=(-2, -1)), rtol=1e-4)
    psf = moffat_psf(3.0, 11)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (5, 5)
    with pytest.raises(ValueError, match="observed"):
        Pairs(p.truth, p.observed[:, :, :20], p.psf, p.noise_sigma)
    with pytest.raises(ValueError, match="psf_size"):
        make_pairs(0, 2, 8, psf_size=11)
