"""What a survey does to each bucket of cutouts: the task strategies.

A task takes a `Bucket` (cutouts of one stamp shape, band set and padded source count,
whose observations stack) and returns its catalog rows as a `pyarrow.Table`. `FitTask`
runs the MAP fit (`deconvjax.fit.fit_batch`) on fixed-size batches, so that a worker
compiles one program per bucket shape for the whole survey.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import numpy as np

#: Source counts are padded up to the next of these (with the source mask `fit_batch`
#: has), so that a survey of 1 to 30 sources per cutout compiles a handful of programs.
SOURCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass(eq=False)
class Cutout:
    """One cutout of a shard: its id, its row in the manifest, its data
    (`deconvjax.io.ObservationData`) and its source centres ``(source, 2)`` (y, x)."""

    cutout_id: str
    index: int
    data: object
    positions: np.ndarray


@dataclasses.dataclass(eq=False)
class Bucket:
    """Cutouts whose observations stack: the same shape, bands and PSF-matching kernel
    box, and source counts padded to ``n_max``."""

    frame: object
    n_max: int
    cutouts: list[Cutout]
    observations: list


def padded_count(n: int, buckets: Sequence[int] = SOURCE_BUCKETS) -> int:
    """The bucket size of a cutout with ``n`` sources: the least of ``buckets`` >= n."""
    for b in buckets:
        if n <= b:
            return int(b)
    raise ValueError(f"a cutout has {n} sources, more than the largest source bucket {max(buckets)}")


def padded_batch(n: int, batch: int, min_batch: int) -> int:
    """The call size of a batch of ``n <= batch`` cutouts: the least of ``batch``,
    ``ceil(batch / 2)``, ``ceil(batch / 4)``, ... that is >= ``n``, stopping at the first
    below ``min_batch`` (so at most ``log2(batch / min_batch) + 1`` sizes)."""
    if not 1 <= n <= batch:
        raise ValueError(f"n must be in 1..batch={batch}, got {n}")
    size = batch
    while size > min_batch:
        half = -(-size // 2)
        if half < n or half < min_batch:
            break
        size = half
    return size


@functools.cache
def code_version() -> str:
    """deconvjax's version, plus the git commit when the package runs from a checkout."""
    from .. import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        if sha.returncode == 0 and sha.stdout.strip():
            return f"{__version__}+g{sha.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def make_buckets(cutouts: Sequence[Cutout], model_psf_sigma: float, buckets=SOURCE_BUCKETS) -> list[Bucket]:
    """Group cutouts into stackable buckets, in the order of their first cutout. Every
    cutout's frame has the survey's one model PSF (a Gaussian of ``model_psf_sigma``
    arcsec), so a cutout's fit does not depend on which others share its batch."""
    import jax

    from ..frame import Frame
    from ..psf import GaussianPSF

    groups: dict = {}
    for c in cutouts:
        d = c.data
        ps = 1.0 if d.pixel_scale is None else float(d.pixel_scale)
        frame = Frame(d.bands, d.shape, pixel_scale=ps, psf=GaussianPSF(model_psf_sigma))
        obs = d.to_observation(frame)
        # Cutouts stack when their observations' arrays have one structure and shapes
        # (the PSF-matching kernel's box follows the PSF's size).
        arrays = eqx.filter(obs, eqx.is_array)
        key = (tuple(d.bands), tuple(d.shape), ps, padded_count(len(c.positions), buckets),
               str(jax.tree.structure(arrays)), tuple(np.shape(x) for x in jax.tree.leaves(arrays)))
        if key not in groups:
            groups[key] = Bucket(frame, key[3], [], [])
        groups[key].cutouts.append(c)
        groups[key].observations.append(obs)
    return list(groups.values())


class AbstractSurveyTask(eqx.Module):
    """A survey task: what a worker does to each bucket of a shard."""

    @abc.abstractmethod
    def run_bucket(self, bucket: Bucket, seed: int):
        """The catalog rows of ``bucket`` (a `pyarrow.Table`, one row per source)."""

    @abc.abstractmethod
    def config(self) -> dict:
        """The task's settings, recorded with the run (a rerun must use the same)."""

    @abc.abstractmethod
    def buckets(self, cutouts: Sequence[Cutout]) -> list[Bucket]:
        """``cutouts`` grouped into the buckets `run_bucket` takes."""

    @abc.abstractmethod
    def write_products(self, table, out: Path, index: int):
        """Called once per shard with its rows (manifest order), before the shard's
        Parquet file is written: write the shard's other files (atomically) and return
        ``(table, files)``, the rows to write and those files' paths relative to
        ``out`` (the shard counts as done only while they exist unchanged)."""


def _measure_one(scene, observations):
    """Per source: flux per band, the flux of its unit-spectrum model (its morphology's
    sum), and per band the normal matrix ``A^T W A`` of the sources' spectra summed over
    observations (its inverse gives the spectra's errors with morphologies held)."""
    import jax.numpy as jnp

    from ..fit.init import normal_equations

    g = scene.groups[0]
    stamps = scene.stamps()[0][0]  # (source, band, h, w)
    flux = jnp.sum(stamps, axis=(-2, -1))
    ones = eqx.tree_at(lambda s: s.spectrum, g, jnp.ones_like(g.spectrum))
    unit = jnp.sum(eqx.tree_at(lambda s: s.groups, scene, (ones,)).stamps()[0][0][:, 0], axis=(-2, -1))
    mats = [normal_equations(scene, o) for o in observations]
    nb = flux.shape[-1]
    m = jnp.zeros((nb, flux.shape[0], flux.shape[0]), flux.dtype)
    for o, (mo, _) in zip(observations, mats):
        m = m.at[jnp.asarray(o.band_index)].add(mo)
    return flux, unit, m


def _measure_impl(scenes, observations):
    return eqx.filter_vmap(_measure_one)(scenes, observations)


_measure_b = None  # built on first use (importing deconvjax.fit.batch loads JAX)


def measure_batch(scenes, observations):
    """`_measure_one` over a batch of fitted scenes, in one program compiled as
    `fit_batch`'s are (`deconvjax.fit.batch.LightJit`)."""
    global _measure_b
    if _measure_b is None:
        from ..fit.batch import LightJit

        _measure_b = LightJit(_measure_impl)
    return _measure_b(scenes, observations)


def flux_errors(flux, unit, mats, mask):
    """``(cutout, source, band)`` 1-sigma flux errors with morphologies fixed: the
    spectra's errors from the inverse normal matrices (padding sources decoupled) times
    each source's morphology sum."""
    n_cut, n_src, nb = flux.shape
    mats = np.array(mats, np.float64)
    pad = ~mask
    idx = np.arange(n_src)
    mats[:, :, idx, idx] += pad[:, None, :].astype(float)  # padding: unit diagonal, no coupling
    mats[np.broadcast_to(pad[:, None, :, None] | pad[:, None, None, :], mats.shape) & ~np.eye(n_src, dtype=bool)] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = np.linalg.pinv(mats)
        var = np.diagonal(cov, axis1=-2, axis2=-1)  # (cutout, band, source)
        err = np.sqrt(np.maximum(var, 0.0)).transpose(0, 2, 1) * np.abs(np.asarray(unit, np.float64))[..., None]
    return np.where(mask[..., None], err, np.nan)


def _sky(data, y, x):
    wcs = data.wcs
    if wcs is None or not wcs.has_celestial:
        return np.full(len(y), np.nan), np.full(len(y), np.nan)
    ra, dec = wcs.celestial.pixel_to_world_values(x, y)
    return np.asarray(ra, float), np.asarray(dec, float)


def bucket_rows(bucket: Bucket, fitted_centers, flux, flux_err, result, mask, seed: int, bands, n_real: int):
    """The catalog rows of the first ``n_real`` cutouts of a fitted batch (the rest pad
    it), one per source present, as a `pyarrow.Table`."""
    import pyarrow as pa

    cols: dict = {k: [] for k in ("cutout_id", "source", "y", "x", "ra", "dec")}
    per_band = {f"flux_{b}": [] for b in bands} | {f"flux_err_{b}": [] for b in bands}
    cut = {k: [] for k in ("chi2_per_dof", "chi2_per_pixel", "iterations", "converged", "failed")}
    units = []
    for i in range(n_real):
        c = bucket.cutouts[i]
        n = int(mask[i].sum())
        yx = np.asarray(fitted_centers[i][:n], np.float64)
        ra, dec = _sky(c.data, yx[:, 0], yx[:, 1])
        cols["cutout_id"] += [c.cutout_id] * n
        cols["source"] += list(range(n))
        cols["y"] += list(yx[:, 0])
        cols["x"] += list(yx[:, 1])
        cols["ra"] += list(ra)
        cols["dec"] += list(dec)
        for j, b in enumerate(bands):
            per_band[f"flux_{b}"] += list(np.asarray(flux[i, :n, j], np.float64))
            per_band[f"flux_err_{b}"] += list(np.asarray(flux_err[i, :n, j], np.float64))
        for k in cut:
            cut[k] += [np.asarray(getattr(result, k))[i].item()] * n
        units += [c.data.bunit or ""] * n
    n_rows = len(cols["cutout_id"])
    unit = units[0] if units else ""
    fields = [
        pa.field("cutout_id", pa.string()),
        pa.field("source", pa.int32()),
        pa.field("y", pa.float64(), metadata={"unit": "pixel", "doc": "fitted centre, row, 0-based"}),
        pa.field("x", pa.float64(), metadata={"unit": "pixel", "doc": "fitted centre, column, 0-based"}),
        pa.field("ra", pa.float64(), metadata={"unit": "deg"}),
        pa.field("dec", pa.float64(), metadata={"unit": "deg"}),
    ]
    arrays = [pa.array(cols["cutout_id"], pa.string()), pa.array(cols["source"], pa.int32())]
    arrays += [pa.array(cols[k], pa.float64()) for k in ("y", "x", "ra", "dec")]
    for b in bands:
        for name in (f"flux_{b}", f"flux_err_{b}"):
            fields.append(pa.field(name, pa.float64(), metadata={"unit": unit}))
            arrays.append(pa.array(per_band[name], pa.float64()))
    fields.append(pa.field("flux_unit", pa.string()))
    arrays.append(pa.array(units, pa.string()))
    for k, t in (("chi2_per_dof", pa.float64()), ("chi2_per_pixel", pa.float64()), ("iterations", pa.int32()),
                 ("converged", pa.bool_()), ("failed", pa.bool_())):
        fields.append(pa.field(k, t))
        arrays.append(pa.array(cut[k], t))
    fields += [pa.field("code_version", pa.string()), pa.field("seed", pa.int64())]
    arrays += [pa.array([code_version()] * n_rows, pa.string()), pa.array([int(seed)] * n_rows, pa.int64())]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class FitTask(AbstractSurveyTask):
    """MAP fit of every cutout (`deconvjax.fit.fit_batch`), from the manifest's centres.

    **Arguments:**

    - `max_iter`, `rtol`: the fit's step limit and relative-change test (`AdamSolver`).
    - `stamp_size`: odd side of every source's free-form stamp.
    - `monotonic`, `symmetric`: scarlet's constraints on free-form sources.
    - `batch`: cutouts per `fit_batch` call; a bucket's last batch is padded to it (by
      repeating a cutout, which is not fitted (`fit_batch`'s ``fit_mask``) and whose
      rows are dropped) so that every call has one shape.
    - `slots`, `threads`: `fit_batch`'s ``slots`` and ``workers`` (host threads; ``None``:
      one per core this process may use).
    - `min_batch`: a bucket's last, partial batch is padded to the least of ``batch``,
      ``ceil(batch / 2)``, ``ceil(batch / 4)``, ... (not below ``min_batch``) that holds
      it, not to ``batch``: each size is a set of programs to compile, and each padding
      cutout costs its initialisation and outputs (not its fit). ``None``: ``ceil(batch /
      4)`` but at least 8: at most three sizes per bucket shape. ``min_batch >= batch``: always pad to
      ``batch`` (one size).
    - `shard`: spread each batch's cutouts over all of the process's devices
      (`fit_batch`'s ``shard``: a `NamedSharding` on a one-axis mesh); ``batch`` is then
      rounded up to a multiple of the device count.
    - `model_psf_sigma`: the survey's one model PSF (Gaussian sigma, arcsec); `None` is
      chosen by `deconvjax.survey.run_survey` from the first cutouts.
    - `bands`: the band names of the catalog's flux columns (`None`: the first cutout's).
    """

    max_iter: int = 200
    rtol: float = 1e-4
    stamp_size: int = 21
    monotonic: bool = True
    symmetric: bool = True
    batch: int = 64
    slots: int | None = 8
    threads: int | None = None
    min_batch: int | None = None
    shard: bool = False
    model_psf_sigma: float | None = None
    bands: tuple[str, ...] | None = None

    def __check_init__(self):
        if int(self.batch) < 1:
            raise ValueError(f"batch must be a positive int, got {self.batch}")
        if self.min_batch is not None and int(self.min_batch) < 1:
            raise ValueError(f"min_batch must be a positive int, got {self.min_batch}")
        if int(self.stamp_size) < 3 or int(self.stamp_size) % 2 == 0:
            raise ValueError(f"stamp_size must be an odd int >= 3, got {self.stamp_size}")

    def config(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["bands"] = None if self.bands is None else list(self.bands)
        # Execution settings that do not change the rows (beyond float rounding).
        for k in ("threads", "slots", "min_batch"):
            out.pop(k)
        return {"task": "fit", **out}

    def write_products(self, table, out: Path, index: int):
        return table, []  # the rows are the whole output

    def buckets(self, cutouts: Sequence[Cutout]) -> list[Bucket]:
        if self.model_psf_sigma is None:
            raise ValueError("model_psf_sigma: set it (run_survey chooses it from the first cutouts)")
        return make_buckets(cutouts, float(self.model_psf_sigma))

    def run_bucket(self, bucket: Bucket, seed: int):
        import jax
        import pyarrow as pa

        from ..fit import AdamSolver, Constraints, fit_batch, init_batch, stack

        batch = int(self.batch)
        if self.shard:
            nd = len(jax.devices())
            batch = -(-batch // nd) * nd
        bands = tuple(self.bands) if self.bands is not None else tuple(bucket.frame.bands)
        min_batch = max(8, -(-batch // 4)) if self.min_batch is None else int(self.min_batch)
        tables = []
        for start in range(0, len(bucket.cutouts), batch):
            idx = list(range(start, min(start + batch, len(bucket.cutouts))))
            n_real = len(idx)
            size = batch if self.shard else padded_batch(n_real, batch, min_batch)
            idx += [idx[-1]] * (size - n_real)  # pad: one of a few shapes every call
            sub = Bucket(bucket.frame, bucket.n_max, [bucket.cutouts[i] for i in idx],
                         [bucket.observations[i] for i in idx])
            scenes, mask = init_batch(bucket.frame, sub.observations, [c.positions for c in sub.cutouts],
                                      n_max=bucket.n_max, stamp_size=int(self.stamp_size))
            obs = stack(sub.observations)
            fitted, result = fit_batch(
                scenes, obs, AdamSolver(rtol=float(self.rtol)), source_mask=mask, max_iter=int(self.max_iter),
                progress=False, chunk=int(self.max_iter) or 1,
                constraints=Constraints(monotonic=self.monotonic, symmetric=self.symmetric),
                shard=bool(self.shard), slots=self.slots, workers=self.threads,
                fit_mask=np.arange(size) < n_real,  # the padding is never fitted, only shaped
            )
            flux, unit, mats = measure_batch(fitted, (obs,))
            flux = np.asarray(flux, np.float64)
            err = flux_errors(flux, np.asarray(unit), np.asarray(mats), mask)
            band_idx = [list(bucket.frame.bands).index(b) for b in bands]
            tables.append(bucket_rows(sub, np.asarray(fitted.groups[0].center), flux[..., band_idx],
                                      err[..., band_idx], result, mask, seed, bands, n_real))
        return pa.concat_tables(tables)


def default_threads(n_workers: int) -> int:
    """Host threads per worker so that ``n_workers`` workers on this node share its
    cores without fighting over them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(n_workers)))
