"""`SampleTask`: posterior samples of every cutout of a survey under the diffusion prior.

Every cutout is sampled through its own forward model (its PSF image, noise and mask) by
EM's E-step (`deconvjax.em.estep`, which builds the posterior exactly as
`deconvjax.posterior.deblend` does: one prior stamp per source at the manifest's centres,
a per-source spectrum for a one-band prior of multi-band data).

Keys: cutout ``i`` of the manifest (its row, whatever the shard) is sampled with
``fold_in(key(seed), i)`` (`estep`'s per-cutout ``keys``), so with a deterministic
sampler a cutout's samples do not depend on the shard size, the bucketing or the number
of workers (up to float rounding). A bucket is sampled in chunks of ``chunk`` cutouts,
one compiled sampler per bucket shape, chunk size and worker.

Output per shard: one row per cutout and band (posterior-mean flux and its posterior
standard deviation, chi2 per pixel of the posterior mean, ...) and one ``.npz`` file,
``OUT/images/shard-NNNNNN.npz``, holding the posterior mean and standard deviation
images at the model frame's resolution, referenced from the rows (`read_images_of`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import numpy as np

from .task import AbstractSurveyTask, Bucket, Cutout, code_version, padded_count

IMAGES_DIR = "images"
#: The temporary image columns `SampleTask.run_bucket` returns and `write_products` removes.
_MEAN, _STD = "posterior_mean_image", "posterior_std_image"


def images_file(index: int) -> str:
    """The images file of shard ``index``, relative to the survey's output folder."""
    return f"{IMAGES_DIR}/shard-{index:06d}.npz"


@functools.cache
def _load_prior(path: str | None):
    # One load per worker process and checkpoint (a survey samples every shard with it).
    from ..diffusion import load_prior

    return load_prior(path)


@functools.cache
def _prior_digest(path: str | None) -> str:
    """SHA-256 prefix of the prior's checkpoint: a rerun with another prior is refused."""
    if path is None:
        from importlib import resources

        from ..diffusion.prior import SHIPPED_PRIOR

        path = str(resources.files("deconvjax") / "data" / "prior" / SHIPPED_PRIOR)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _place_all(embed, x):
    """``(sample, n_max, pband, s, s)`` prior variables -> ``(sample, band, h, w)`` images."""
    import jax

    return jax.vmap(embed)(x)


_place_all_jit = eqx.filter_jit(_place_all)


class SampleTask(AbstractSurveyTask):
    """Posterior samples of every cutout with a diffusion prior (`deconvjax.em.estep`),
    each through its own forward model, from the manifest's source centres.

    **Arguments:**

    - `prior`: a prior checkpoint (`deconvjax.diffusion.save_prior`); ``None``: the
      galaxy prior shipped with deconvjax (32x32, one band).
    - `sampler`: any sampler of `deconvjax.diffusion.samplers` (``None``:
      `DPMSolver2M()`; a deterministic sampler makes a cutout's samples depend on its
      key only). Imported on use: `deconvjax fit-survey` does not load the diffusion
      package.
    - `n_samples`: posterior samples per cutout.
    - `model_psf_sigma`: the model frame's Gaussian PSF in pixels (the resolution of the
      prior's images and of the output images).
    - `n_spectrum_iters`: refinements of the per-source spectra (one-band prior,
      multi-band cutouts; each one more sampler solve).
    - `chunk`: cutouts sampled together in one batched solve (the network evaluated on
      ``chunk x n_samples`` images at once; larger on a GPU).
    """

    prior: str | None = None
    sampler: object = None
    n_samples: int = 16
    model_psf_sigma: float = 0.5
    n_spectrum_iters: int = 1
    chunk: int = 8

    def __check_init__(self):
        from ..diffusion.samplers import AbstractSampler

        if self.sampler is not None and not isinstance(self.sampler, AbstractSampler):
            raise ValueError(f"sampler: expected an AbstractSampler, got {type(self.sampler).__name__}")
        if int(self.n_samples) < 1:
            raise ValueError(f"n_samples: expected a positive int, got {self.n_samples}")
        if not float(self.model_psf_sigma) > 0:
            raise ValueError(f"model_psf_sigma: expected a positive number of pixels, got {self.model_psf_sigma}")
        if int(self.chunk) < 1:
            raise ValueError(f"chunk: expected a positive int, got {self.chunk}")
        if int(self.n_spectrum_iters) < 0:
            raise ValueError(f"n_spectrum_iters: expected an int >= 0, got {self.n_spectrum_iters}")
        if self.prior is not None and not Path(self.prior).is_file():
            raise ValueError(f"prior: {self.prior} is not a prior checkpoint file")

    def sampler_or_default(self):
        """`sampler`, or the default `DPMSolver2M()` when it is ``None``."""
        from ..diffusion.samplers import DPMSolver2M

        return DPMSolver2M() if self.sampler is None else self.sampler

    def config(self) -> dict:
        return {"task": "sample", "prior": None if self.prior is None else str(Path(self.prior).resolve()),
                "prior_sha256": _prior_digest(None if self.prior is None else str(self.prior)),
                "sampler": repr(self.sampler_or_default()), "n_samples": int(self.n_samples),
                "model_psf_sigma": float(self.model_psf_sigma), "n_spectrum_iters": int(self.n_spectrum_iters)}

    def buckets(self, cutouts: Sequence[Cutout]) -> list[Bucket]:
        # Cutouts whose posteriors have one structure and shapes (image and PSF shapes,
        # bands, padded source count): one compiled sampler per bucket.
        groups: dict = {}
        for c in cutouts:
            d = c.data
            if d.psf_images is None:
                raise ValueError(f"cutout {c.cutout_id!r}: no PSF images; sampling needs each cutout's PSF")
            key = (tuple(d.bands), tuple(d.shape), tuple(np.shape(d.psf_images)), padded_count(len(c.positions)))
            if key not in groups:
                groups[key] = Bucket(None, key[3], [], [])
            groups[key].cutouts.append(c)
        return list(groups.values())

    def run_bucket(self, bucket: Bucket, seed: int):
        import jax
        import jax.numpy as jnp
        import jax.random as jr
        import pyarrow as pa

        from ..em import Cutouts, estep
        from ..posterior.deblend import SourcePlacement

        prior = _load_prior(None if self.prior is None else str(self.prior))
        sampler = self.sampler_or_default()
        run_key = jr.key(int(seed))
        rows: dict = {k: [] for k in ("cutout_id", "band", "flux_mean", "flux_std", "flux_unit", "flux_factor",
                                      "chi2_per_pixel",
                                      "ny", "nx", _MEAN, _STD)}
        n = int(self.n_samples)
        cuts = Cutouts.from_observations([c.data for c in bucket.cutouts],
                                         centers=[c.positions for c in bucket.cutouts]).with_slots(bucket.n_max)
        # The prior knows galaxies at its training brightness only (a galaxy in electrons
        # sampled as it comes gets a prior-bright blob and a wrong flux): each cutout is
        # brought to that brightness by a measured factor, undone on output (as
        # `deconvjax sample` does for one galaxy).
        factors = flux_factors(cuts, prior)
        cuts = dataclasses.replace(cuts, data=cuts.data / factors[:, None, None, None],
                                   weights=cuts.weights * factors[:, None, None, None] ** 2)
        # Each cutout's key from its manifest row, not its place in the shard or bucket:
        # the same samples however the survey is cut and spread.
        keys = jnp.stack([jr.fold_in(run_key, c.index) for c in bucket.cutouts])
        res = estep(run_key, prior, cuts, sampler=sampler, n_samples=n, chunk=int(self.chunk), keys=keys,
                    n_spectrum_iters=int(self.n_spectrum_iters), model_psf_sigma=float(self.model_psf_sigma),
                    progress=False)
        nb, h, w = cuts.shape
        for k, c in enumerate(bucket.cutouts):
            embed = SourcePlacement(res.spectra[k], res.corners[k], (h, w), float(prior.flux_scale))
            images = factors[k] * np.asarray(jax.device_get(_place_all_jit(embed, res.samples[k])),
                                             np.float64)  # (s, band, h, w), data units
            flux = images.sum(axis=(-2, -1))  # (sample, band)
            mean_img, flux_mean = images.mean(0), flux.mean(0)
            # Sample standard deviations (n - 1): undefined (NaN) for one sample.
            with np.errstate(invalid="ignore", divide="ignore"):
                std_img = np.sqrt(((images - mean_img) ** 2).sum(0) / (n - 1)) if n > 1 else np.full_like(mean_img,
                                                                                                          np.nan)
                flux_std = flux.std(0, ddof=1) if n > 1 else np.full(nb, np.nan)
            chi2 = float(np.asarray(res.chi2_mean)[k])
            for b, band in enumerate(cuts.bands or tuple(str(j) for j in range(nb))):
                rows["cutout_id"].append(c.cutout_id)
                rows["band"].append(str(band))
                rows["flux_mean"].append(float(flux_mean[b]))
                rows["flux_std"].append(float(flux_std[b]))
                rows["flux_unit"].append(c.data.bunit or "")
                rows["flux_factor"].append(float(factors[k]))
                rows["chi2_per_pixel"].append(chi2)
                rows["ny"].append(h)
                rows["nx"].append(w)
                rows[_MEAN].append(mean_img[b].astype(np.float32).ravel())
                rows[_STD].append(std_img[b].astype(np.float32).ravel())
        m = len(rows["cutout_id"])
        unit = rows["flux_unit"][0] if m else ""
        fields = [
            pa.field("cutout_id", pa.string()), pa.field("band", pa.string()),
            pa.field("flux_mean", pa.float64(), metadata={"unit": unit, "doc": "posterior mean of the band's flux"}),
            pa.field("flux_std", pa.float64(), metadata={"unit": unit, "doc": "posterior std of the band's flux"}),
            pa.field("flux_unit", pa.string()),
            pa.field("flux_factor", pa.float64(), metadata={"doc": "data units per unit of the prior's flux "
                                                                   "(the cutout was sampled divided by it)"}),
            pa.field("chi2_per_pixel", pa.float64(), metadata={"doc": "chi2 of the posterior mean / valid pixels"}),
            pa.field("ny", pa.int32()), pa.field("nx", pa.int32()),
            pa.field(_MEAN, pa.list_(pa.float32())), pa.field(_STD, pa.list_(pa.float32())),
            pa.field("n_samples", pa.int32()), pa.field("sampler", pa.string()),
            pa.field("code_version", pa.string()), pa.field("seed", pa.int64()),
        ]
        arrays = [pa.array(rows[f.name], f.type) for f in fields[:11]]
        arrays += [pa.array([n] * m, pa.int32()), pa.array([repr(sampler)] * m, pa.string()),
                   pa.array([code_version()] * m, pa.string()), pa.array([int(seed)] * m, pa.int64())]
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    def write_products(self, table, out: Path, index: int):
        import pyarrow as pa

        from .._atomic import atomic_write

        ny = table.column("ny").to_numpy()
        nx = table.column("nx").to_numpy()
        mean = table.column(_MEAN).to_pylist()
        std = table.column(_STD).to_pylist()
        arrays, keys = {}, []
        for shape in sorted(set(zip(ny.tolist(), nx.tolist()))):
            sel = np.flatnonzero((ny == shape[0]) & (nx == shape[1]))
            name = f"{shape[0]}x{shape[1]}"
            arrays[f"mean_{name}"] = np.stack([np.asarray(mean[i], np.float32).reshape(shape) for i in sel])
            arrays[f"std_{name}"] = np.stack([np.asarray(std[i], np.float32).reshape(shape) for i in sel])
            keys.append((sel, name))
        key_col = np.empty(table.num_rows, object)
        idx_col = np.zeros(table.num_rows, np.int32)
        for sel, name in keys:
            key_col[sel] = name
            idx_col[sel] = np.arange(len(sel))
        rel = images_file(index)

        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, **arrays)

        atomic_write(Path(out) / rel, write)
        table = table.drop_columns([_MEAN, _STD])
        table = table.append_column("image_file", pa.array([rel] * table.num_rows, pa.string()))
        table = table.append_column("image_key", pa.array(key_col.tolist(), pa.string()))
        table = table.append_column("image_index", pa.array(idx_col, pa.int32()))
        return table, [rel]


def flux_factors(cutouts, prior) -> np.ndarray:
    """``(N,)`` data units per unit of the prior's flux, one per cutout: the cutout's mean
    flux per band and per source (the sum of its valid pixels) over the prior's typical
    training galaxy flux (`deconvjax.posterior.adapt.reference_for`), so that dividing
    the cutout (and its noise) by it puts its galaxies at the prior's brightness. At
    least 1e-6 of the typical flux (blank or negative cutouts)."""
    from ..posterior.adapt import reference_for

    typical = float(reference_for(prior).flux[0]) * float(prior.flux_scale)
    total = np.where(cutouts.mask, 0.0, cutouts.data).sum(axis=(-2, -1)).mean(axis=-1)  # (N,)
    per_source = total / np.maximum(cutouts.source_mask.sum(axis=1), 1)
    return np.maximum(per_source / typical, 1e-6)


def read_images_of(out, rows) -> tuple[np.ndarray, np.ndarray]:
    """The posterior mean and standard deviation images ``(row, h, w)`` of ``rows`` (a
    table or dict of columns of a `SampleTask` catalog with ``image_file``,
    ``image_key``, ``image_index``; all of one image shape)."""
    cols = rows if isinstance(rows, dict) else {k: list(rows[k]) for k in ("image_file", "image_key", "image_index")}
    files: dict = {}
    mean, std = [], []
    for f, k, i in zip(cols["image_file"], cols["image_key"], cols["image_index"]):
        if f not in files:
            with np.load(Path(out) / f) as z:
                files[f] = {name: z[name] for name in z.files}
        mean.append(files[f][f"mean_{k}"][int(i)])
        std.append(files[f][f"std_{k}"][int(i)])
    if len({m.shape for m in mean}) > 1:
        raise ValueError("rows: images of several shapes; select rows of one shape (columns ny, nx)")
    return np.stack(mean), np.stack(std)

