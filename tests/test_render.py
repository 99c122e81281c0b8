"""Rendering accuracy: analytic profiles, GalSim, flux conservation, edges, batching."""

import galsim
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import integrated_gaussian

import deconvjax as dj


@pytest.mark.parametrize("center", [(23.0, 25.0), (23.3, 25.6), (24.5, 22.49)])
def test_gaussian_source_through_gaussian_psf_is_analytic(center):
    frame = dj.Frame(["g", "r"], (48, 48))
    sigma_src, sigma_psf = 2.0, 1.7
    scene = dj.Scene(frame, [dj.Source([10.0, 5.0], dj.GaussianMorphology(sigma_src, shape=(31, 31)), center)])
    obs = dj.Observation(np.zeros((2, 48, 48)), frame=frame, psf=dj.GaussianPSF(sigma_psf), weights=1.0)
    rendered = np.asarray(obs(scene.render()))
    truth = integrated_gaussian((48, 48), center, np.hypot(sigma_src, sigma_psf))
    for band, flux in enumerate([10.0, 5.0]):
        assert np.abs(rendered[band] - flux * truth).max() < 1e-4 * flux * truth.max()


def test_model_frame_is_seen_through_model_psf():
    # In the model frame a Gaussian source is its intrinsic profile convolved with the
    # model PSF (sigma 1 pixel by default).
    frame = dj.Frame(["g"], (32, 32))
    scene = dj.Scene(frame, [dj.Source([1.0], dj.GaussianMorphology(1.5, shape=(25, 25)), (15.2, 16.7))])
    truth = integrated_gaussian((32, 32), (15.2, 16.7), np.hypot(1.5, 1.0))
    assert np.abs(np.asarray(scene.render()[0]) - truth).max() < 1e-4 * truth.max()


def test_point_source_is_the_psf():
    frame = dj.Frame(["g"], (32, 32))
    scene = dj.Scene(frame, [dj.Source([3.0], dj.PointMorphology(shape=(21, 21)), (14.7, 16.2))])
    obs = dj.Observation(np.zeros((1, 32, 32)), frame=frame, psf=dj.GaussianPSF(2.0), weights=1.0)
    truth = 3.0 * integrated_gaussian((32, 32), (14.7, 16.2), 2.0)
    assert np.abs(np.asarray(obs(scene.render())[0]) - truth).max() < 1e-4 * truth.max()


@pytest.mark.parametrize("n,r_e,g1,g2", [(1.0, 3.0, 0.0, 0.0), (1.5, 3.0, 0.2, -0.1), (4.0, 4.0, -0.15, 0.25)])
def test_sersic_matches_galsim(n, r_e, g1, g2):
    shape, offset = (51, 51), (0.2, -0.3)
    morph = dj.SersicMorphology(n, r_e, g1, g2, shape=shape)
    ours = np.asarray(morph.image(jnp.asarray(offset)))
    profile = galsim.Sersic(n=n, half_light_radius=r_e).shear(g1=g1, g2=g2)
    # GalSim's offset is (dx, dy) from the true centre; ours is (dy, dx) from h // 2.
    ref = profile.drawImage(
        nx=shape[1], ny=shape[0], scale=1.0, offset=(offset[1], offset[0]), method="real_space"
    ).array
    assert np.unravel_index(ours.argmax(), shape) == np.unravel_index(ref.argmax(), shape)
    assert np.abs(ours - ref).max() < 2e-3 * ref.max()
    assert abs(ours.sum() - ref.sum()) < 1e-3


def test_gaussian_shear_matches_galsim():
    morph = dj.GaussianMorphology(2.5, 0.3, -0.2, shape=(41, 41))
    ours = np.asarray(morph.image(jnp.asarray([0.25, -0.4])))
    ref = galsim.Gaussian(sigma=2.5).shear(g1=0.3, g2=-0.2).drawImage(nx=41, ny=41, scale=1.0, offset=(-0.4, 0.25)).array
    assert np.abs(ours - ref).max() < 1e-4 * ref.max()


def test_flux_conserved_through_matching_rotation_resampling_and_binning():
    wcs = dj.make_wcs((96, 96), 0.1)
    frame = dj.Frame(["g", "r", "i"], (96, 96), wcs=wcs)
    sources = [
        dj.Source([10.0, 20.0, 30.0], dj.GaussianMorphology(3.0, 0.1, 0.2, shape=(41, 41)), (40.3, 50.2)),
        dj.Source([5.0, 6.0, 7.0], dj.SersicMorphology(1.0, 4.0, shape=(41, 41)), (55.6, 44.1)),
    ]
    model = dj.Scene(frame, sources).render()
    for scale, rot in [(0.25, 30.0), (0.1, 0.0), (0.2, -75.0), (0.05, 10.0)]:
        n = int(round(12.0 / scale))
        obs = dj.Observation(
            np.zeros((2, n, n)), frame=frame, psf=dj.GaussianPSF(0.35), weights=1.0,
            bands=["r", "i"], wcs=dj.make_wcs((n, n), scale, rotation_deg=rot),
        )
        ratio = np.asarray(obs(model).sum(axis=(1, 2)) / model[1:].sum(axis=(1, 2)))
        np.testing.assert_allclose(ratio, 1.0, atol=1e-5)


def test_pixel_morphology_shift():
    yy, xx = np.mgrid[:21, :21]
    def blobs(dy, dx):
        return np.exp(-((yy - 10 - dy) ** 2 + (xx - 9 - dx) ** 2) / 8.0) + 0.5 * np.exp(
            -((yy - 12 - dy) ** 2 + (xx - 12 - dx) ** 2) / 4.5
        )
    frame = dj.Frame(["g"], (40, 40))
    # Integer centre: the array is placed as is.
    scene = dj.Scene(frame, [dj.Source([2.0], dj.PixelMorphology(blobs(0, 0)), (19.0, 21.0))])
    np.testing.assert_allclose(np.asarray(scene.render()[0, 9:30, 11:32]), 2.0 * blobs(0, 0), atol=1e-5)
    # Sub-pixel centre: a band-limited image moves by exactly the offset.
    scene = dj.Scene(frame, [dj.Source([1.0], dj.PixelMorphology(blobs(0, 0)), (19.3, 20.6))])
    np.testing.assert_allclose(np.asarray(scene.render()[0, 9:30, 10:31]), blobs(0.3, 0.6), atol=2e-4)


def test_stamps_crossing_the_edge_are_clipped():
    big = dj.Frame(["g"], (80, 80))
    small = dj.Frame(["g"], (40, 40))
    def sources(offset):
        return [
            dj.Source([1.0], dj.GaussianMorphology(2.0, shape=(21, 21)), (2.3 + offset, 37.6 + offset)),
            dj.Source([2.0], dj.SersicMorphology(1.0, 2.0, shape=(21, 21)), (-3.0 + offset, -4.0 + offset)),
            dj.Source([1.5], dj.GaussianMorphology(1.0, shape=(21, 21)), (45.0 + offset, 20.0 + offset)),
        ]
    full = np.asarray(dj.Scene(big, sources(20.0)).render())[:, 20:60, 20:60]
    clipped = np.asarray(dj.Scene(small, sources(0.0)).render())
    np.testing.assert_allclose(clipped, full, atol=1e-6)


def test_mixed_scene_groups_and_render_sources():
    frame = dj.Frame(["g", "r"], (64, 64))
    sources = [
        dj.Source([1.0, 2.0], dj.GaussianMorphology(2.0, shape=(21, 21)), (20.0, 20.0)),
        dj.Source([1.0, 1.0], dj.PointMorphology(shape=(11, 11)), (40.2, 40.7)),
        dj.Source([3.0, 1.0], dj.SersicMorphology(2.0, 3.0, shape=(31, 31)), (30.0, 45.0)),
        dj.Source([1.0, 0.5], dj.PixelMorphology(np.ones((9, 9)) / 81), (50.0, 12.0)),
        dj.Source([2.0, 2.0], dj.GaussianMorphology(1.0, shape=(21, 21)), (10.0, 50.0)),
    ]
    scene = dj.Scene(frame, sources)
    assert len(scene.groups) == 4 and scene.n_sources == 5
    each = np.asarray(scene.render_sources())
    np.testing.assert_allclose(each.sum(0), np.asarray(scene.render()), atol=1e-5)
    for i, src in enumerate(sources):
        alone = np.asarray(dj.Scene(frame, [src]).render())
        np.testing.assert_allclose(each[i], alone, atol=1e-6)


def test_vmap_over_scenes_matches_loop():
    frame = dj.Frame(["g", "r"], (40, 40))
    rng = np.random.default_rng(1)
    scenes = []
    for _ in range(5):
        srcs = [
            dj.Source(rng.uniform(1, 5, 2), dj.GaussianMorphology(rng.uniform(1, 3), shape=(15, 15)), rng.uniform(5, 35, 2))
            for _ in range(3)
        ]
        scenes.append(dj.Scene(frame, srcs))
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *scenes)
    obs = dj.Observation(np.zeros((2, 40, 40)), frame=frame, psf=dj.GaussianPSF(2.0), weights=1.0)
    batched = jax.jit(jax.vmap(lambda s: obs(s.render())))(batch)
    for i, s in enumerate(scenes):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(obs(s.render())), atol=1e-5)


def test_window_sum_matches_scatter_under_every_transform():
    # Stamps are added by a loop of slice updates with its own batching rule, and
    # differentiated through a scatter-add: values, vmap, grad and jvp must all agree with
    # the plain scatter-add (also for windows at the canvas edges).
    from deconvjax.model.scene import _add_windows, _scatter_windows

    rng = np.random.default_rng(3)
    shape = (2, 30, 28)
    stamps = jnp.asarray(rng.normal(size=(3, 5, 2, 7, 7)), dtype=jnp.float32)
    starts = jnp.asarray(rng.integers(0, 21, (3, 5, 2)), dtype=jnp.int32).at[0, 0].set(jnp.array([23, 21]))
    weights = jnp.asarray(rng.normal(size=shape), dtype=jnp.float32)

    def fast(s, t):
        return _add_windows(s, t, shape)

    def slow(s, t):
        return _scatter_windows(s, t, shape)

    for f in (fast, slow):
        assert f(stamps[0], starts[0]).shape == shape
    np.testing.assert_allclose(fast(stamps[0], starts[0]), slow(stamps[0], starts[0]), atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.vmap(fast))(stamps, starts), jax.vmap(slow)(stamps, starts), atol=1e-5)
    np.testing.assert_allclose(jax.vmap(fast, in_axes=(0, None))(stamps, starts[1]),
                               jax.vmap(slow, in_axes=(0, None))(stamps, starts[1]), atol=1e-5)

    def loss(f):
        return lambda s, t: jnp.sum(weights * f(s, t) ** 2)

    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss(fast))))(stamps, starts),
                               jax.vmap(jax.grad(loss(slow)))(stamps, starts), rtol=1e-4, atol=1e-4)
    tangent = jnp.ones_like(stamps[0])
    np.testing.assert_allclose(jax.jvp(lambda s: fast(s, starts[0]), (stamps[0],), (tangent,))[1],
                               jax.jvp(lambda s: slow(s, starts[0]), (stamps[0],), (tangent,))[1], atol=1e-5)
