"""Saving and loading fitted scenes (equinox leaf serialisation plus JSON metadata) and
writing fit results as FITS."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS

from .._atomic import atomic_write
from ..checkpoint import load_checkpoint, save_checkpoint
from ..frame import Frame
from ..model import MeasuredShape, Scene, Source, morphology_class
from ..observation import as_observations
from ..psf import ArrayPSF, GaussianPSF, MoffatPSF
from .measure import catalog as make_catalog
from .measure import deblend

FORMAT = "deconvjax-scene/1"
#: The checkpoint kind of a saved scene.
SCENE_KIND = "scene"



def _psf_to_json(psf) -> dict:
    if isinstance(psf, GaussianPSF):
        return {"type": "GaussianPSF", "sigma": np.asarray(psf.sigma).tolist()}
    if isinstance(psf, MoffatPSF):
        return {"type": "MoffatPSF", "fwhm": np.asarray(psf.fwhm).tolist(), "beta": np.asarray(psf.beta).tolist()}
    if isinstance(psf, ArrayPSF):
        return {
            "type": "ArrayPSF",
            "image": np.asarray(psf.image).tolist(),
            "pixel_scale": psf.pixel_scale,
            "oversampling": psf.oversampling,
            "center": np.asarray(psf.center).reshape(-1, 2)[0].tolist(),
        }
    raise TypeError(f"cannot save a frame PSF of type {type(psf).__name__}")


def _psf_from_json(d: dict):
    kind = d.get("type")
    if kind == "GaussianPSF":
        return GaussianPSF(d["sigma"])
    if kind == "MoffatPSF":
        return MoffatPSF(d["fwhm"], d["beta"])
    if kind == "ArrayPSF":
        return ArrayPSF(np.asarray(d["image"]), pixel_scale=d["pixel_scale"], oversampling=d["oversampling"], center=tuple(d["center"]))
    raise ValueError(f"unknown frame PSF type {kind!r} in scene metadata")


def frame_to_json(frame: Frame) -> dict:
    return {
        "bands": list(frame.bands),
        "shape": list(frame.shape),
        "pixel_scale": frame.pixel_scale,
        "wcs": None if frame.wcs is None else frame.wcs.to_header_string(),
        "psf": _psf_to_json(frame.psf),
    }


def frame_from_json(d: dict) -> Frame:
    wcs = None if d.get("wcs") is None else WCS(fits.Header.fromstring(d["wcs"]))
    return Frame(d["bands"], tuple(d["shape"]), pixel_scale=d["pixel_scale"], wcs=wcs, psf=_psf_from_json(d["psf"]))


def _result_to_json(result) -> dict | None:
    if result is None:
        return None
    out = {}
    for k, v in dataclasses.asdict(result).items():
        v = np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v
        out[k] = v
    return out


def save_scene(path, scene: Scene, frame: Frame, result=None) -> tuple[Path]:
    """Write the scene to ``<path>.eqx``: one checkpoint file (`deconvjax.checkpoint`, the
    format priors use too) whose JSON header holds the frame, the group structure, the
    source order and the fit result, and whose payload is the scene's groups
    (`eqx.tree_serialise_leaves`). Atomic. Returns ``(path,)``."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if not isinstance(frame, Frame):
        raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
    path = Path(path)
    if path.suffix in (".eqx", ".json"):
        path = path.with_suffix("")
    groups = []
    for g, o in zip(scene.groups, scene.order):
        # The morphology by its kind, and the shape of each of its leaves per source, so
        # that loading rebuilds the tree whatever the morphology's options were.
        leaves = [list(np.shape(x)[1:]) for x in jax.tree.leaves(eqx.filter(g.morphology, eqx.is_array))]
        groups.append({"morphology": g.morphology.kind, "shape": list(g.morphology.shape), "order": list(o),
                       "leaf_shapes": leaves})
    meta = {"format": FORMAT, "frame": frame_to_json(frame), "groups": groups, "result": _result_to_json(result)}
    target = path.with_suffix(".eqx")
    save_checkpoint(target, SCENE_KIND, meta, scene.groups)
    return (target,)


def _template(group: dict):
    """A morphology of the saved group's kind and leaf shapes (values to be read)."""
    cls = morphology_class(group["morphology"])
    shape = tuple(group["shape"])
    template = cls.from_parameters(cls.initial_parameters(MeasuredShape(1.0, model_sigma2=1.0), shape), shape)
    if "leaf_shapes" not in group:  # scenes saved before leaf shapes were recorded
        return template
    arrays, static = eqx.partition(template, eqx.is_array)
    leaves, treedef = jax.tree.flatten(arrays)
    if len(leaves) != len(group["leaf_shapes"]):
        raise ValueError(f"a saved {group['morphology']} group has {len(group['leaf_shapes'])} leaves, expected {len(leaves)}")
    zeros = [jnp.zeros(tuple(s), x.dtype) for x, s in zip(leaves, group["leaf_shapes"])]
    return eqx.combine(jax.tree.unflatten(treedef, zeros), static)


def _skeleton(meta: dict):
    frame = frame_from_json(meta["frame"])
    skeleton = []
    for g in meta["groups"]:
        n = len(g["order"])
        one = Source(np.ones(frame.n_bands), _template(g), np.zeros(2))
        skeleton.append(jax.tree.map(lambda x: jnp.stack([x] * n), one))
    return tuple(skeleton)


def load_scene(path) -> tuple[Scene, Frame, dict]:
    """Read a scene written by `save_scene`: ``(scene, frame, metadata)``. ``path`` with or
    without its ``.eqx``. Scenes written before the one-file format (``.eqx`` leaves plus a
    ``.json``) are read too."""
    path = Path(path)
    if path.suffix in (".eqx", ".json"):
        path = path.with_suffix("")
    eqx_path, json_path = path.with_suffix(".eqx"), path.with_suffix(".json")
    if not eqx_path.exists():
        raise ValueError(f"path: {eqx_path} does not exist")
    with open(eqx_path, "rb") as f:
        is_checkpoint = f.read(1) == b"{"
    if is_checkpoint:
        groups, header = load_checkpoint(eqx_path, _skeleton, kind=SCENE_KIND)
        meta = header["hyper"]
    else:
        if not json_path.exists():
            raise ValueError(f"path: {eqx_path} is not a scene checkpoint and {json_path} does not exist")
        meta = json.loads(json_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"path: {json_path} is not a deconvjax scene (format {meta.get('format')!r})")
        groups = eqx.tree_deserialise_leaves(eqx_path, _skeleton(meta))
    frame = frame_from_json(meta["frame"])
    # Rebuild from sources in their original order: Scene regroups them identically.
    n_total = sum(len(g["order"]) for g in meta["groups"])
    sources: list = [None] * n_total
    for g, info in zip(groups, meta["groups"]):
        for row, idx in enumerate(info["order"]):
            sources[idx] = jax.tree.map(lambda x: x[row] if eqx.is_array(x) else x, g)
    return Scene(frame, sources), frame, meta


def write_results(
    path, scene: Scene, frame: Frame, observations, result=None, table: Table | None = None, *, header_cards=(),
    bunit: str | None = None, observation_wcs=None,
) -> Path:
    """One FITS file of a fit: ``MODEL`` (model cube in the model frame, with its WCS),
    ``SOURCES`` (each source alone, model frame, with its WCS), per observation ``RESIDUAL``
    (data minus model, observation pixels) and ``DEBLEND`` (each source's share of the
    data), with the observation's WCS, and ``CATALOG`` (the measurement table; its
    ``sky_centroid`` column is left out, FITS tables cannot hold a SkyCoord, and ``ra``,
    ``dec`` say the same). ``header_cards``: ``(key, value, comment)`` cards for the primary
    header (e.g. how the noise was set). ``bunit``: the data's unit, on every image HDU.
    ``observation_wcs``: one WCS (or None) per observation; by default the frame's for
    observations on the model grid, none for the others. Atomic."""
    from ..io.products import image_header

    observations = as_observations(observations)
    if observation_wcs is None:
        observation_wcs = [None] * len(observations)
    observation_wcs = list(observation_wcs)
    if len(observation_wcs) != len(observations):
        raise ValueError(f"observation_wcs: expected one per observation ({len(observations)}), got {len(observation_wcs)}")
    if table is None:
        table = make_catalog(scene, frame, observations, result=result, unit=bunit)
    prim = fits.PrimaryHDU()
    prim.header["DJFORMAT"] = ("deconvjax-fit/1", "deconvjax fit results")
    prim.header["BANDS"] = ",".join(frame.bands)
    for key, value, comment in header_cards:
        prim.header[key] = (value, comment)
    if result is not None:
        for key, name in (("NITER", "iterations"), ("CONVERGD", "converged"), ("FAILED", "failed"), ("LOSS", "loss"),
                          ("CHI2DOF", "chi2_per_dof"), ("CHI2PIX", "chi2_per_pixel"), ("NEFF", "n_eff"),
                          ("FRAC3SIG", "frac_beyond_3sigma"), ("NOISEFIT", "reached_noise")):
            value = np.asarray(getattr(result, name))
            if value.ndim == 0 and np.all(np.isfinite(value)):
                prim.header[key] = value.item()
    model = np.asarray(scene.render(), dtype=np.float32)
    hdus = [prim, fits.ImageHDU(model, header=image_header(frame.wcs, bunit), name="MODEL")]
    hdus.append(fits.ImageHDU(np.asarray(scene.render_sources(), dtype=np.float32),
                              header=image_header(frame.wcs, bunit), name="SOURCES"))
    for k, (o, wcs) in enumerate(zip(observations, observation_wcs)):
        if wcs is None and o.coords is None:
            wcs = frame.wcs  # on the model grid: the same pixels
        # numpy, not jax: eager jax arithmetic compiles a program per operation.
        res = ((np.asarray(o.data) - np.asarray(o(jnp.asarray(model)))) * (np.asarray(o.weights) > 0)).astype(np.float32)
        hdus.append(fits.ImageHDU(res, header=image_header(wcs, bunit), name="RESIDUAL", ver=k + 1))
        hdus.append(fits.ImageHDU(np.asarray(deblend(scene, o), dtype=np.float32), header=image_header(wcs, bunit),
                                  name="DEBLEND", ver=k + 1))
    plain = table.copy(copy_data=False)
    for name in [c for c in plain.colnames if not isinstance(plain[c], (np.ndarray,))]:
        del plain[name]  # mixins (SkyCoord): FITS tables hold plain columns only
    with warnings.catch_warnings():
        # Units outside the FITS standard (nanomaggy) are written as plain strings;
        # catalog.ecsv keeps them.
        warnings.simplefilter("ignore", AstropyUserWarning)
        hdus.append(fits.BinTableHDU(plain, name="CATALOG"))
    path = Path(path)
    atomic_write(path, lambda tmp: fits.HDUList(hdus).writeto(tmp, overwrite=True))
    return path
