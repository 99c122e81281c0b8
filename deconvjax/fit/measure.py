"""Measurements of a fitted scene: fluxes, centroids, sizes and deblended images."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table
from jaxtyping import Array, Float

from ..frame import Frame
from ..model import Scene
from ..observation import Observation, as_observations
from .moments import image_moments


def source_fluxes(scene: Scene) -> np.ndarray:
    """``(source, band)`` total model flux of each source (its stamp's sum, before any
    clipping at the frame's edge), sources in the order given to the scene."""
    per_group = [np.asarray(f) for f in _stamp_fluxes(scene)]
    flux = np.concatenate(per_group, axis=0)
    inverse = np.argsort(np.concatenate([np.asarray(o) for o in scene.order]))
    return flux[inverse]


@eqx.filter_jit
def _stamp_fluxes(scene: Scene):
    return [jnp.sum(stamps, axis=(-2, -1)) for stamps, _ in scene.stamps()]


def source_centers(scene: Scene) -> np.ndarray:
    """``(source, 2)`` fitted ``(y, x)`` centres, in the order given to the scene."""
    c = np.concatenate([np.asarray(g.center) for g in scene.groups], axis=0)
    inverse = np.argsort(np.concatenate([np.asarray(o) for o in scene.order]))
    return c[inverse]


def source_kinds(scene: Scene) -> list[str]:
    """Per source: its morphology's kind (``pixel``, ``sersic``, ...); a structured
    free-form source is ``pixel`` until it has a structure component, ``structured``
    after."""
    kinds = []
    for g, o in zip(scene.groups, scene.order):
        kinds += list(zip(o, g.morphology.source_kinds(len(o))))
    return [k for _, k in sorted(kinds)]


@jax.jit
def _share(models: Float[Array, "source band y x"], data: Float[Array, "band y x"]):
    m = jnp.maximum(models, 0.0)
    total = jnp.sum(m, axis=0)
    return jnp.where(total > 0, m / jnp.where(total > 0, total, 1.0), 0.0) * data


def deblend(scene: Scene, observation: Observation) -> Float[Array, "source band y x"]:
    """Each source's share of an observation's data: ``data * model_s / sum_t model_t``
    (the scarlet convention; model values clipped at 0), ``(source, obs band, y, x)``."""
    if not isinstance(observation, Observation):
        raise TypeError(f"observation must be an Observation, got {type(observation).__name__}")
    return _deblend(scene, observation)


@eqx.filter_jit
def _deblend(scene: Scene, observation: Observation):
    models = jax.vmap(observation.apply)(scene.render_sources())
    return _share(models, observation.data)


def catalog(scene: Scene, frame: Frame, observations=None) -> Table:
    """An astropy Table with one row per source (in the order given to the scene):

    ``id``, ``kind``, ``y``, ``x`` (fitted centre, model pixels), ``ra``, ``dec`` (degrees,
    when the frame has a WCS), ``flux_<band>`` (model flux), ``centroid_y``,
    ``centroid_x`` and ``size`` (first-moment centroid and ``sqrt(trace/2)`` second-moment
    size of the model image summed over bands, model pixels, PSF included), and with
    observations ``deblended_flux_<band>`` (the sum of the source's deblended share of the
    first observation holding that band).
    """
    if not isinstance(frame, Frame):
        raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
    n = scene.n_sources
    t = Table()
    t["id"] = np.arange(n, dtype=np.int64)
    t["kind"] = np.array(source_kinds(scene), dtype="U10")
    centers = source_centers(scene)
    t["y"], t["x"] = centers[:, 0], centers[:, 1]
    if frame.wcs is not None:
        sky = frame.to_sky(centers)
        t["ra"], t["dec"] = sky.ra.deg, sky.dec.deg
    flux = source_fluxes(scene)
    for b, name in enumerate(frame.bands):
        t[f"flux_{name}"] = flux[:, b]
    images = np.asarray(scene.render_sources()).sum(axis=1)
    m = image_moments(images)
    cy, cx, size = m.y, m.x, m.size
    t["centroid_y"], t["centroid_x"], t["size"] = cy, cx, size
    if observations is not None:
        done = set()
        for o in as_observations(observations):
            shares = None
            for j, b in enumerate(o.bands):
                if b in done:
                    continue
                if shares is None:
                    shares = np.asarray(deblend(scene, o))
                t[f"deblended_flux_{b}"] = shares[:, j].sum(axis=(-2, -1))
                done.add(b)
    for c in ("y", "x", "centroid_y", "centroid_x", "size"):
        t[c].unit = "pix"
    return t
