"""Forward operators: adjoints, gradients, geometry, compilation behaviour, bad input."""

from pathlib import Path

import astropy
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import deconvjax as dj
from deconvjax.wcs import warp_grid

SIP_HEADER = Path(astropy.__file__).parent / "wcs" / "tests" / "data" / "sip.fits"


def _frames_and_observations():
    """A same-grid, a rotated coarser, a finer shifted and a SIP-distorted observation."""
    frame = dj.Frame(["g", "r", "i"], (48, 48), wcs=dj.make_wcs((48, 48), 0.1))
    ops = {
        "same grid": dj.Observation(np.zeros((3, 48, 48)), frame=frame, psf=dj.GaussianPSF(0.2), weights=1.0,
                                    wcs=dj.make_wcs((48, 48), 0.1)),
        "rotated coarser": dj.Observation(np.zeros((2, 20, 20)), frame=frame, psf=dj.MoffatPSF(0.5, 3.0),
                                          weights=1.0, bands=["r", "i"],
                                          wcs=dj.make_wcs((20, 20), 0.25, rotation_deg=33.0)),
        "finer lanczos": dj.Observation(np.zeros((1, 50, 60)), frame=frame, psf=dj.GaussianPSF(0.15),
                                        weights=1.0, bands=["g"], interpolation="lanczos3",
                                        wcs=dj.make_wcs((50, 60), 0.08, center=(150.10002, 2.20001))),
    }
    return frame, ops


def test_adjoint_identity():
    frame, ops = _frames_and_observations()
    for name, obs in ops.items():
        kx, ky = jax.random.split(jax.random.key(hash(name) % 1000))
        x = jax.random.normal(kx, (3, *frame.shape))
        y = jax.random.normal(ky, obs.shape)
        lhs = jnp.vdot(obs(x), y)
        rhs = jnp.vdot(x, obs.adjoint(y, 3))
        assert abs(lhs - rhs) <= 1e-5 * (jnp.linalg.norm(obs(x)) * jnp.linalg.norm(y)), name


def test_operators_are_linear():
    frame, ops = _frames_and_observations()
    k1, k2 = jax.random.split(jax.random.key(3))
    a, b = jax.random.normal(k1, (3, *frame.shape)), jax.random.normal(k2, (3, *frame.shape))
    for name, obs in ops.items():
        np.testing.assert_allclose(obs(2.0 * a - b), 2.0 * obs(a) - obs(b), atol=1e-4, err_msg=name)


def test_likelihood_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        frame = dj.Frame(["g", "r"], (40, 40), wcs=dj.make_wcs((40, 40), 0.1))
        obs = [
            dj.Observation(np.ones((2, 40, 40)) * 0.01, frame=frame, psf=dj.GaussianPSF(0.25), rms=0.05,
                           wcs=dj.make_wcs((40, 40), 0.1)),
            dj.Observation(np.ones((1, 18, 18)) * 0.05, frame=frame, psf=dj.MoffatPSF(0.6), rms=0.1,
                           bands=["r"], wcs=dj.make_wcs((18, 18), 0.2, rotation_deg=20.0)),
        ]
        sources = [
            dj.Source([1.0, 2.0], dj.GaussianMorphology(2.0, 0.1, -0.05, shape=(21, 21)), (18.3, 21.6)),
            dj.Source([0.5, 1.0], dj.SersicMorphology(1.3, 2.5, 0.05, 0.1, shape=(21, 21)), (23.1, 15.4)),
            dj.Source([0.3, 0.2], dj.PointMorphology(shape=(11, 11)), (10.2, 30.7)),
        ]
        scene = dj.Scene(frame, sources)
        params, static = jax.tree.map(jnp.asarray, scene), None
        loss = jax.jit(lambda s: dj.log_likelihood(s, obs))
        grad = jax.grad(loss)(params)
        leaves, treedef = jax.tree.flatten(params)
        gleaves = jax.tree.leaves(grad)
        rng = np.random.default_rng(0)
        checked = 0
        for li, (leaf, gleaf) in enumerate(zip(leaves, gleaves)):
            if leaf.dtype != jnp.float64 or li == 0 and False:
                continue
            flat = np.asarray(leaf).ravel()
            for j in rng.choice(flat.size, size=min(2, flat.size), replace=False):
                h = 1e-5 * max(1.0, abs(flat[j]))
                def at(v):
                    f = flat.copy()
                    f[j] = v
                    new = list(leaves)
                    new[li] = jnp.asarray(f.reshape(leaf.shape))
                    return float(loss(jax.tree.unflatten(treedef, new)))
                fd = (at(flat[j] + h) - at(flat[j] - h)) / (2 * h)
                an = float(np.asarray(gleaf).ravel()[j])
                assert abs(fd - an) <= 1e-4 * max(1.0, abs(fd)), (li, j, fd, an)
                checked += 1
        assert checked >= 10
        del static


def test_sip_warp_grid_matches_astropy():
    header = fits.getheader(SIP_HEADER)
    obs_wcs = WCS(header)
    assert obs_wcs.sip is not None
    shape = (64, 80)
    ra, dec = obs_wcs.wcs.crval
    # A model frame on the sky around the SIP image's reference point.
    scale = float(np.sqrt(abs(np.linalg.det(obs_wcs.pixel_scale_matrix))) * 3600)
    ref = obs_wcs.pixel_to_world(obs_wcs.wcs.crpix[0] - 1, obs_wcs.wcs.crpix[1] - 1)
    model_wcs = dj.make_wcs((100, 100), scale * 0.7, center=(ref.ra.deg, ref.dec.deg), rotation_deg=12.0)
    coords, _ = warp_grid(model_wcs, obs_wcs, shape, subsample=1)
    coords32 = np.asarray(jnp.asarray(coords, dtype=jnp.float32))
    # Independently: astropy's high-level API, pixel -> world -> pixel.
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky = obs_wcs.pixel_to_world(xx, yy)
    mx, my = model_wcs.world_to_pixel(sky)
    assert np.abs(coords32[..., 0] - my).max() < 1e-3
    assert np.abs(coords32[..., 1] - mx).max() < 1e-3
    # And the distortion matters: ignoring SIP moves pixels by far more than that.
    plain = obs_wcs.deepcopy()
    plain.sip = None
    px, py = model_wcs.world_to_pixel(plain.pixel_to_world(xx, yy))
    assert np.abs(px - mx).max() > 0.05
    del ra, dec


def _scene(frame, n, seed=0):
    rng = np.random.default_rng(seed)
    return dj.Scene(frame, [
        dj.Source(rng.uniform(1, 5, frame.n_bands), dj.GaussianMorphology(rng.uniform(1, 3), shape=(15, 15)),
                  rng.uniform(0, 64, 2))
        for _ in range(n)
    ])


def test_trace_size_does_not_grow_with_sources():
    frame = dj.Frame(["g", "r", "i"], (64, 64))
    obs = dj.Observation(np.zeros((3, 64, 64)), frame=frame, psf=dj.GaussianPSF(2.0), weights=1.0)
    def count(scene):
        jaxpr = jax.make_jaxpr(jax.grad(lambda s: dj.log_likelihood(s, obs)))(scene)
        return len(jaxpr.eqns)
    assert count(_scene(frame, 4)) == count(_scene(frame, 256))


def test_new_data_of_same_shapes_does_not_recompile():
    frame = dj.Frame(["g", "r", "i"], (64, 64))
    from deconvjax._jit import CountingJit

    f = CountingJit(lambda s, o: jax.value_and_grad(lambda s: dj.log_likelihood(s, o))(s))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        obs = dj.Observation(rng.normal(size=(3, 64, 64)), frame=frame, psf=dj.GaussianPSF(2.0 + 0.2 * seed),
                             weights=rng.uniform(0.5, 1.0, (3, 64, 64)))
        jax.block_until_ready(f(_scene(frame, 10, seed), obs))
    assert f.traces == 1


def test_multi_resolution_multi_epoch_in_one_jitted_call():
    # HST-like 0.03" model frame; an HST view, two dithered ground epochs at 0.2".
    frame = dj.Frame(["i"], (120, 120), wcs=dj.make_wcs((120, 120), 0.03), psf=dj.GaussianPSF(0.03))
    hst = dj.Observation(np.zeros((1, 120, 120)), frame=frame, psf=dj.GaussianPSF(0.05), rms=0.01,
                         wcs=dj.make_wcs((120, 120), 0.03))
    epochs = [
        dj.Observation(np.zeros((1, 18, 18)), frame=frame, psf=dj.MoffatPSF(0.7 + 0.1 * k, 3.5), rms=0.1,
                       wcs=dj.make_wcs((18, 18), 0.2, center=(150.1 + 1e-5 * k, 2.2), rotation_deg=10.0 * k))
        for k in range(2)
    ]
    scene = dj.Scene(frame, [dj.Source([100.0], dj.SersicMorphology(1.0, 8.0, 0.2, 0.0, shape=(61, 61)),
                                       (59.5, 60.2))])
    rendered = jax.jit(dj.render_observations)(scene, (hst, *epochs))
    model_flux = float(scene.render().sum())
    assert abs(float(rendered[0].sum()) / model_flux - 1) < 1e-5
    for r in rendered[1:]:
        # Seeing spreads a few tenths of a percent of the light past a 3.6" frame.
        assert abs(float(r.sum()) / model_flux - 1) < 1e-2
    assert epochs[0].subsample == 7
    # The ground view is much blurrier: its peak pixel holds far less of the flux.
    assert float(rendered[1].max()) / model_flux < 0.2


def test_bad_input_errors():
    frame = dj.Frame(["g", "r"], (32, 32))
    good = dict(frame=frame, psf=dj.GaussianPSF(2.0))
    with pytest.raises(ValueError, match="bands"):
        dj.Observation(np.zeros((3, 32, 32)), weights=1.0, **good)
    with pytest.raises(ValueError, match="weights has shape"):
        dj.Observation(np.zeros((2, 32, 32)), weights=np.ones((2, 30, 32)), **good)
    with pytest.raises(ValueError, match="non-negative"):
        dj.Observation(np.zeros((2, 32, 32)), weights=-np.ones((2, 32, 32)), **good)
    with pytest.raises(ValueError, match="exactly one of weights"):
        dj.Observation(np.zeros((2, 32, 32)), **good)
    with pytest.raises(ValueError, match="NaN or inf"):
        dj.ArrayPSF(np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="larger than the model frame"):
        dj.Observation(np.zeros((2, 32, 32)), weights=1.0, frame=frame, psf=np.ones((41, 41)))
    with pytest.raises(ValueError, match="not in the frame's bands"):
        dj.Observation(np.zeros((1, 32, 32)), weights=1.0, bands=["z"], **good)
    with pytest.raises(ValueError, match="spectrum has 3 bands"):
        dj.Scene(frame, [dj.Source([1.0, 2.0, 3.0], dj.PointMorphology(), (3.0, 3.0))])
    with pytest.raises(ValueError, match="sigma must be finite and positive"):
        dj.GaussianPSF(-1.0)
    # NaN in data: masked with a warning, never propagated.
    data = np.zeros((2, 32, 32))
    data[0, 3, 4] = np.nan
    with pytest.warns(UserWarning, match="masked"):
        obs = dj.Observation(data, weights=1.0, **good)
    assert float(obs.weights[0, 3, 4]) == 0.0
    assert np.isfinite(float(obs.log_likelihood(jnp.zeros((2, 32, 32)))))
    with pytest.raises(ValueError, match="psf: .* narrower than the frame's model PSF"):
        dj.Observation(np.zeros((2, 32, 32)), weights=1.0, frame=frame, psf=dj.GaussianPSF(0.5))
    dj.Observation(np.zeros((2, 32, 32)), weights=1.0, frame=frame, psf=dj.GaussianPSF(0.5), allow_psf_gain=True)


def test_even_and_unnormalised_array_psfs():
    # An even-sized, unnormalised PSF whose centre lies between pixels (GalSim's
    # true-centre convention) gives the same kernel as the analytic one.
    import galsim
    img = 7.0 * galsim.Gaussian(sigma=1.8).drawImage(nx=24, ny=24, scale=1.0).array
    kern = dj.ArrayPSF(img, pixel_scale=1.0).kernel((25, 25), 1.0, 1)[0]
    ref = dj.GaussianPSF(1.8).kernel((25, 25), 1.0, 1)[0]
    assert abs(kern.sum() - 1) < 1e-6
    assert np.abs(kern - ref).max() < 2e-3 * ref.max()
    # A 4x supersampled PSF, binned down to the frame's pixels.
    fine = galsim.Gaussian(sigma=1.8).drawImage(nx=96, ny=96, scale=0.25, method="no_pixel").array
    kern = dj.ArrayPSF(fine, pixel_scale=1.0, oversampling=4).kernel((25, 25), 1.0, 1)[0]
    assert np.abs(kern - ref).max() < 2e-3 * ref.max()
