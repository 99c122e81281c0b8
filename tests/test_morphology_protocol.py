"""Every morphology's parametrisation, through the protocol the fit uses: the maps to
and from unconstrained values invert each other, step sizes have the morphology's tree,
projections keep the tree and unit flux; batched (a leading source axis) as the fit
calls them."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deconvjax.fit.solver import DEFAULT_STEPS
from deconvjax.model import Constraints, MeasuredShape, morphology_kinds

KINDS = sorted(morphology_kinds())


def _batched(kind, n=3, shape=(15, 15)):
    cls = morphology_kinds()[kind]
    ms = [cls.from_parameters(cls.initial_parameters(MeasuredShape(1.2 + 0.3 * i, 0.1, -0.05 * i, 0.8), shape), shape)
          for i in range(n)]
    return jax.tree.map(lambda *x: jnp.stack(x), *ms)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pixels", ["log", "projection"])
def test_maps_invert_and_trees_agree(kind, pixels):
    m = _batched(kind)
    cons = Constraints(pixels=pixels)
    back = m.to_unconstrained(cons).from_unconstrained(cons)
    for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(back)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6 * float(np.abs(a).max() + 1e-30))
    steps = m.step_sizes({k: jnp.asarray(v) for k, v in DEFAULT_STEPS.items()}, cons)
    assert jax.tree.structure(steps) == jax.tree.structure(m)
    for s in jax.tree.leaves(eqx.filter(steps, eqx.is_inexact_array)):
        assert np.all(np.asarray(s) >= 0)
    projected, scale = m.project(cons)
    assert jax.tree.structure(projected) == jax.tree.structure(m)
    assert np.all(np.isfinite(np.asarray(scale))) and np.all(np.asarray(scale) > 0)
    if m.free_form:
        np.testing.assert_allclose(np.asarray(projected.free_image()).sum(axis=(-2, -1)), 1.0, rtol=1e-5)
        assert np.asarray(m.sparsity()).shape == (3,)
    else:
        assert m.free_image() is None
    assert len(m.source_kinds(3)) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_initial_morphology_has_unit_flux_and_the_measured_width(kind):
    cls = morphology_kinds()[kind]
    measured = MeasuredShape(2.0, 0.0, 0.0, 1.0)
    m = cls.from_parameters(cls.initial_parameters(measured, (31, 31)), (31, 31))
    assert m.kind == kind and m.shape == (31, 31)
    image = np.asarray(m.image())
    np.testing.assert_allclose(image.sum(), 1.0, rtol=2e-3)
    yy, xx = np.mgrid[:31, :31] - 15
    width2 = float((image * (yy**2 + xx**2)).sum() / image.sum() / 2)
    if kind == "sersic":
        # Sersic profiles start with the measured half-light radius (1.177 sigma).
        r = np.hypot(yy, xx)
        assert abs(image[r <= 1.177 * 2.0].sum() - 0.5) < 0.06
        return
    # Profiles are before the model PSF; free-form images and points after it.
    expect = {True: 4.0 + 1.0, False: 4.0}[m.free_form] if kind != "point" else 1.0 / 12
    assert abs(width2 - expect) < 0.15 * expect + 0.1, (kind, width2, expect)
