"""Eager calls (a notebook, the README's quick start) compile once per scene structure.

Compilations are counted with `jax.monitoring`'s backend-compile events, independently of
any cache the code under test keeps."""

import jax
import numpy as np
import pytest

import deconvjax as dj
from deconvjax.wcs import make_wcs

_COMPILES = [0]


def _listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


def _compiles(fn):
    before = _COMPILES[0]
    jax.block_until_ready(fn())
    return _COMPILES[0] - before


def _scene(frame, shift):
    return dj.Scene(frame, [
        dj.Source([10.0, 20.0, 25.0], dj.SersicMorphology(1.0, 3.0, 0.2, 0.0), (30.2 + shift, 28.7)),
        dj.Source([5.0, 4.0, 3.0], dj.GaussianMorphology(1.5), (36.0, 40.5 - shift)),
        dj.Source([2.0, 2.0, 2.0], dj.PointMorphology(), (12.3, 50.1)),
    ])


@pytest.mark.parametrize("resampled", [False, True])
def test_second_eager_call_compiles_nothing(resampled):
    wcs = make_wcs((64, 64), 0.2)
    frame = dj.Frame(["g", "r", "i"], (64, 64), wcs=wcs)
    rng = np.random.default_rng(0)
    if resampled:
        obs_wcs = make_wcs((40, 40), 0.27, rotation_deg=20.0)
        obs = dj.Observation(rng.normal(size=(3, 40, 40)), frame=frame, psf=dj.MoffatPSF(0.9, 3.5), variance=1.0,
                             wcs=obs_wcs)
    else:
        obs = dj.Observation(rng.normal(size=(3, 64, 64)), frame=frame, psf=dj.MoffatPSF(0.7, 3.5), variance=1.0,
                             wcs=wcs)
    first, second = _scene(frame, 0.0), _scene(frame, 0.37)
    calls = {
        "render": lambda s: s.render(),
        "render_sources": lambda s: s.render_sources(),
        "observation": lambda s: obs(s.render()),
        "log_likelihood": lambda s: dj.log_likelihood(s, [obs]),
        "adjoint": lambda s: obs.adjoint(obs(s.render())),
    }
    for name, call in calls.items():
        _compiles(lambda: call(first))
        assert _compiles(lambda: call(second)) == 0, name
        assert _compiles(lambda: call(first)) == 0, name
    # New data of the same shapes: a new Observation, still nothing to compile.
    obs2 = dj.Observation(rng.normal(size=obs.shape), frame=frame, psf=dj.MoffatPSF(0.8, 3.5), variance=2.0,
                          wcs=obs_wcs if resampled else wcs)
    assert _compiles(lambda: dj.log_likelihood(second, [obs2])) == 0


def test_eager_render_matches_traced():
    frame = dj.Frame(["g", "r", "i"], (64, 64), pixel_scale=0.2)
    scene = _scene(frame, 0.1)
    eager = np.asarray(scene.render())
    traced = np.asarray(jax.jit(lambda s: s.render())(scene))
    batched = np.asarray(jax.vmap(lambda s: s.render())(jax.tree.map(lambda x: x[None], scene)))[0]
    np.testing.assert_allclose(eager, traced, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(eager, batched, rtol=1e-6, atol=1e-7)
