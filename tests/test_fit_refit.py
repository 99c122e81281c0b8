"""Interactive refits: a scene with spare slots (`deconvjax.fit.PaddedScene`) takes a new
source and loses a spurious one without the fit compiling again, and the refit equals a
fresh fit of the same sources."""

import jax
import numpy as np
import pytest

from deconvjax.fit import (
    PaddedScene,
    add_source,
    compilation_count,
    fit,
    init_scene,
    pad_scene,
    remove_source,
)
from deconvjax.model import Scene
from deconvjax.sims import simulate_field


@pytest.fixture(scope="module")
def field():
    f = simulate_field("lsst", seed=3, shape=(48, 48), n_sources=3, bands=("r", "i"), star_fraction=0.0,
                       mag_range=(20.5, 22.0), min_separation=0.8, max_separation=2.0)
    frame = f.frame()
    obs = f.to_observation(frame)
    pos = np.stack([np.asarray(f.truth["y"]), np.asarray(f.truth["x"])], axis=1)
    return frame, obs, pos


def _active_leaves(p: PaddedScene):
    g = p.scene.groups[0]
    idx = p.active_indices
    return [np.asarray(x)[idx] for x in jax.tree.leaves(g)]


def test_add_remove_refit_compiles_nothing_and_equals_fresh_fit(field):
    frame, obs, pos = field
    spurious = np.array([[6.0, 6.0]])  # an empty corner
    # The first two true sources plus a spurious one; the third true source is missed.
    start = pad_scene(frame, init_scene(frame, obs, np.concatenate([pos[:2], spurious]), kind="sersic",
                                        stamp_size=21), n_slots=5)
    assert start.n_slots == 5 and start.active.tolist() == [True, True, True, False, False]
    first, _ = fit(start, obs, max_iter=60, progress=False)
    assert isinstance(first, PaddedScene)
    compiled = compilation_count()

    missed = init_scene(frame, obs, pos[2:3], kind="sersic", stamp_size=21).sources()[0]
    edited = add_source(remove_source(start, 2), source=missed)
    assert edited.active.tolist() == [True, True, True, False, False]  # the freed slot is reused
    refit, res = fit(edited, obs, max_iter=60, progress=False)
    # Warm refit from the fitted scene, with a source added from the residual.
    warm = add_source(remove_source(first, 2), obs, pos[2])
    fit(warm, obs, max_iter=60, progress=False)
    assert compilation_count() == compiled, "adding or removing a source recompiled the fit"

    # A fresh fit of the same three sources from the same starting values, in a scene built
    # from scratch, gives the same scene.
    fresh_scene = Scene(frame, start.scene.sources()[:2] + [missed])
    fresh, fres = fit(pad_scene(frame, fresh_scene, n_slots=5), obs, max_iter=60, progress=False)
    assert fres.iterations == res.iterations
    for a, b in zip(_active_leaves(refit), _active_leaves(fresh)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(refit.render()), np.asarray(fresh.render()), rtol=1e-5, atol=1e-3)
    # Inactive slots render nothing: the padded model is the active sources' model.
    np.testing.assert_allclose(np.asarray(refit.render()), np.asarray(refit.active_scene().render()),
                               rtol=1e-5, atol=1e-3)


def test_slot_errors(field):
    frame, obs, pos = field
    p = pad_scene(frame, init_scene(frame, obs, pos[:2], kind="sersic", stamp_size=21), n_slots=2)
    with pytest.raises(ValueError, match="no free slot"):
        add_source(p, obs, pos[2])
    p = remove_source(p, 1)
    with pytest.raises(ValueError, match="index"):
        remove_source(p, 1)
    with pytest.raises(ValueError, match="n_slots"):
        pad_scene(frame, p.scene, n_slots=1)
    with pytest.raises(ValueError, match="source_mask"):
        fit(p, obs, source_mask=np.ones(2, bool), progress=False)
    other = init_scene(frame, obs, pos[:1], kind="gaussian", stamp_size=21).sources()[0]
    with pytest.raises(ValueError, match="source must be"):
        add_source(p, source=other)
