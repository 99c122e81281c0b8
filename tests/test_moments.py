"""`deconvjax.fit.moments.image_moments` against the analytic moments of Gaussians: plain
moments (the catalog's centroids and sizes) and adaptive windowed ones (the initial
shapes of detected sources, each on its Voronoi cell)."""

import numpy as np
import pytest

from deconvjax.fit.moments import image_moments


def _gaussian(shape, centre, cov, flux=1.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.stack([yy - centre[0], xx - centre[1]], axis=-1)
    inv = np.linalg.inv(cov)
    g = np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, inv, d))
    return flux * g / g.sum()


COVS = [np.array([[4.0, 0.0], [0.0, 4.0]]), np.array([[6.0, 1.5], [1.5, 3.0]]),
        np.array([[2.5, -0.8], [-0.8, 5.0]])]


def test_plain_moments_of_gaussians():
    imgs = np.stack([_gaussian((64, 64), (30.3, 33.6), c, flux=5.0) for c in COVS] + [np.zeros((64, 64))])
    m = image_moments(imgs)
    assert m.ok.tolist() == [True, True, True, False]
    np.testing.assert_allclose(m.y[:3], 30.3, atol=1e-6)
    np.testing.assert_allclose(m.x[:3], 33.6, atol=1e-6)
    for k, c in enumerate(COVS):
        # Sampling a Gaussian on pixels adds nothing to its second moment (well sampled).
        np.testing.assert_allclose(m.q[k], [c[0, 0], c[0, 1], c[1, 1]], atol=1e-4)
        assert m.size[k] == pytest.approx(np.sqrt(np.trace(c) / 2), abs=1e-5)
    assert np.isnan(m.size[3]) and np.isnan(m.y[3])


def test_windowed_moments_of_gaussians_undo_the_window():
    centres = [(15.0, 16.0), (44.0, 20.0), (30.0, 47.0)]
    img = sum(_gaussian((64, 64), p, c, flux=100.0) for p, c in zip(centres, COVS))
    m = image_moments(img, np.ones_like(img), np.array(centres), window_sigma=3.0)
    assert m.ok.all()
    np.testing.assert_array_equal(np.stack([m.y, m.x], 1), centres)
    for k, c in enumerate(COVS):
        np.testing.assert_allclose(m.q[k], [c[0, 0], c[0, 1], c[1, 1]], rtol=0.02, atol=0.02)


def test_windowed_moments_leave_out_masked_pixels_and_fail_cleanly():
    img = _gaussian((32, 32), (16, 16), COVS[0], flux=10.0)
    w = np.ones_like(img)
    w[:, :] = 0
    m = image_moments(img, w, np.array([[16.0, 16.0]]), window_sigma=3.0)
    assert not m.ok[0] and np.isnan(m.qyy[0])
    empty = image_moments(img, w, np.zeros((0, 2)), window_sigma=3.0)
    assert empty.q.shape == (0, 3)
    with pytest.raises(ValueError, match="window_sigma"):
        image_moments(img[None], w, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="positions"):
        image_moments(img, window_sigma=3.0)
