"""Isolated galaxy stamps for training priors, and a streamable on-disk format.

A stamp set is written as shards in one folder::

    index.json                 bands, pixel scale, size, survey, seed, shard list, units
    stamps_00000.npy           (n, band, size, size) float32, memory-mappable
    stamps_00000.fits          the same as a FITS cube (only with ``fits_cubes=True``)
    truth_00000.ecsv           one row per stamp (galaxy parameters and per-band fluxes)
    psf.npy                    (band, h, w) float32 PSF (absent if stamps are not convolved)

`iter_stamp_batches` streams (batch, band, size, size) arrays from such a folder without loading
it whole (numpy memory maps), in a deterministic order or shuffled with a seed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import galsim
import numpy as np
from astropy.table import Table, vstack

from .._atomic import atomic_write
from ._fastdraw import (
    draw_components,
    good_fft_size,
    kimage,
    points_fft_size,
    points_kimage,
    psf_kimage,
)
from .blends import as_rng
from .galaxies import (
    draw_galaxy_params,
    draw_real_params,
    galaxy_band_fluxes,
    galaxy_components,
    galaxy_profiles,
    knot_positions,
    real_galaxy_band_fluxes,
    real_galaxy_profiles,
)
from .surveys import Survey, get_survey

# Above this FFT size (fine space pixels, Airy wings) GalSim draws stamps directly: the shared
# path's dense knot sum (size^2 x knots) would cost more than it saves.
_MAX_SHARED_FFT = 512


@dataclasses.dataclass
class StampSet:
    """Isolated galaxies, each centred on pixel (size // 2, size // 2) of its stamp.

    Attributes:
        images: (n, band, size, size) float32, electrons (noise-free unless noise was added).
        truth: astropy Table with one row per stamp.
        bands: band names.
        pixel_scale: arcsec per pixel.
        psf_images: (band, h, w) PSF the stamps were convolved with (the preset PSF, or the
            narrow model PSF when ``convolve_psf=False``), pixel included, unit sum.
        noise_sigma: (band,) background noise sigma of the preset (electrons), added or not.
    """

    images: np.ndarray
    truth: Table
    bands: tuple[str, ...]
    pixel_scale: float
    psf_images: np.ndarray | None
    noise_sigma: np.ndarray


def simulate_stamps(
    survey: str | Survey = "lsst",
    n: int = 100,
    *,
    size: int = 64,
    seed: int | np.random.Generator = 0,
    bands=None,
    pixel_scale: float | None = None,
    convolve_psf: bool = True,
    add_noise: bool = False,
    real_fraction: float = 0.0,
    mag_range=(20.0, 24.0),
    knots: bool = True,
    cosmos_path=None,
    progress: bool = False,
    model_psf_fwhm: float = 1.0,
) -> StampSet:
    """Draw ``n`` isolated galaxies on ``size`` x ``size`` stamps.

    **Arguments:**

    - `survey`: preset giving bands, fluxes (electrons), PSF and noise.
    - `size`: stamp side in pixels (e.g. 32 or 64).
    - `pixel_scale`: arcsec per pixel (default: the preset's). With ``convolve_psf=False`` this
      gives intrinsic (pixel-integrated only) morphologies at any resolution.
    - `convolve_psf`: convolve with the preset PSF. Without it the stamps are convolved only
      with a narrow Gaussian of FWHM ``model_psf_fwhm`` pixels (a model PSF in the
      scarlet sense: it band-limits the point-like knots, keeping FFTs small), which is
      then returned as ``psf_images``.
    - `model_psf_fwhm`: FWHM in pixels of that Gaussian.
    - `add_noise`: add the preset's Gaussian background noise.
    - `real_fraction`: fraction of real COSMOS galaxies (needs the COSMOS folder).
    """
    from tqdm.auto import tqdm

    if not isinstance(size, (int, np.integer)) or size < 4:
        raise ValueError(f"size: expected an int >= 4, got {size!r}")
    if n < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    rng, _ = as_rng(seed)
    sv = get_survey(survey, bands)
    scale = sv.pixel_scale if pixel_scale is None else float(pixel_scale)
    if scale <= 0:
        raise ValueError(f"pixel_scale: expected > 0, got {pixel_scale}")
    n_real = int(rng.binomial(n, real_fraction)) if real_fraction > 0 else 0
    is_real = np.zeros(n, bool)
    is_real[rng.permutation(n)[:n_real]] = True
    gal = draw_galaxy_params(rng, n - n_real, mag_range=mag_range, knots=knots)
    real = draw_real_params(rng, n_real, cosmos_path) if n_real else {}
    if convolve_psf:
        psfs = [sv.psf(b.name) for b in sv.bands]
    else:
        if not model_psf_fwhm > 0:
            raise ValueError(f"model_psf_fwhm: expected > 0 pixels, got {model_psf_fwhm}")
        psfs = [galsim.Gaussian(fwhm=model_psf_fwhm * scale)] * len(sv.bands)
    nb = len(sv.bands)
    out = np.zeros((n, nb, size, size), np.float32)
    # PSF k-images per FFT size, shared by all stamps of this call.
    psf_k: dict[int, list[np.ndarray]] = {}
    psf_radius = 4.0 * max(b.psf_fwhm for b in sv.bands) if convolve_psf else 4.0 * (
        model_psf_fwhm * scale)
    widest = int(np.argmax([b.psf_fwhm for b in sv.bands])) if convolve_psf else 0
    # A PSF keeping > 1e-3 of its transform at the pixel Nyquist frequency (Euclid VIS) makes
    # aliasing visible; the ground and HST presets are below 3e-4.
    undersampled = any(abs(ps.kValue(np.pi / scale, 0.0)) > 1e-3 for ps in psfs)
    fluxes = np.zeros((n, nb))
    gi = ri = 0
    kind_index = np.zeros(n, int)
    for k in tqdm(range(n), desc="stamps", disable=not progress):
        if is_real[k]:
            profs = real_galaxy_profiles(sv, real, ri, cosmos_path)
            fluxes[k] = real_galaxy_band_fluxes(sv, real, ri)
            kind_index[k] = ri
            ri += 1
        else:
            comp_flux = galaxy_band_fluxes(sv, gal, gi)  # (bulge/disk/knots, band)
            bulge, disk, _ = galaxy_components(gal, gi, with_knots=False)
            pos = knot_positions(gal, gi)
            n0 = galsim.Convolve(bulge + disk, psfs[widest]).getGoodImageSize(scale)
            n_fft = good_fft_size(max(n0, 2 * size))  # room for the PSF wings to fall off
            if len(pos):
                n_fft = max(n_fft, points_fft_size(pos, size, scale, psf_radius))
            fluxes[k] = comp_flux.sum(0)
            kind_index[k] = gi
            gi += 1
            if n_fft > _MAX_SHARED_FFT or undersampled:
                # Large grids (fine space pixels, Airy wings): the shared path's dense knot
                # sum gets costly. Undersampled PSFs (Euclid VIS): the image must alias the
                # k-space power beyond Nyquist, which GalSim's drawFFT does (it wraps the
                # k-image) and the shared path does not. GalSim draws these directly.
                profs = galaxy_profiles(sv, gal, gi - 1)
            else:
                # Band-shared FFT drawing (_fastdraw): each component's k-image once, one
                # inverse FFT per band; matches GalSim drawing the same galaxy (tested).
                if n_fft not in psf_k:
                    psf_k[n_fft] = [psf_kimage(ps, n_fft, scale) for ps in psfs]
                comps, weights = [], []
                for j, obj in enumerate((bulge, disk)):
                    if np.any(comp_flux[j] > 0):
                        comps.append(kimage(obj, n_fft, scale))
                        weights.append(comp_flux[j])
                if len(pos):
                    comps.append(points_kimage(pos, n_fft, scale))
                    weights.append(comp_flux[2])
                out[k] = draw_components(comps, np.array(weights), psf_k[n_fft], size, n_fft)
                continue
        for b in range(nb):
            obj = galsim.Convolve(profs[b], psfs[b])
            # Centre on pixel (size // 2, size // 2), the convention of odd PSF images and
            # of FFT-centred kernels, rather than between pixels for even sizes.
            img = obj.drawImage(nx=size, ny=size, scale=scale, method="auto",
                                use_true_center=False)
            out[k, b] = img.array
    sigma = np.array([np.sqrt(sv.background_variance(b.name)) for b in sv.bands])
    if add_noise:
        out += (rng.standard_normal(out.shape) * sigma[None, :, None, None]).astype(np.float32)
    truth = _stamp_truth(sv, is_real, kind_index, gal, real, fluxes)
    truth.meta.update(pixel_scale=scale, size=size, convolve_psf=convolve_psf,
                      add_noise=add_noise)
    if not convolve_psf:
        truth.meta["model_psf_fwhm_pixels"] = float(model_psf_fwhm)
    psf_images = _psf_at_scale(psfs, scale)
    return StampSet(out, truth, sv.band_names, scale, psf_images, sigma.astype(np.float32))


def _psf_at_scale(psfs, scale: float, size: int = 25) -> np.ndarray:
    """(band, size, size) unit-sum PSF images, pixel included, centred on the central pixel."""
    out = np.empty((len(psfs), size, size), np.float32)
    for b, psf in enumerate(psfs):
        a = psf.drawImage(nx=size, ny=size, scale=scale, method="auto").array.astype(np.float64)
        out[b] = a / a.sum()
    return out


def _stamp_truth(sv, is_real, kind_index, gal, real, fluxes) -> Table:
    n = len(is_real)
    t = Table()
    t["kind"] = np.where(is_real, "real", "galaxy").astype("U6")
    cols = {c: np.full(n, np.nan) for c in
            ("mag_i", "z", "hlr", "hlr_bulge", "hlr_disk", "bulge_frac", "e1", "e2")}
    cosmos_index = np.full(n, -1, np.int64)
    for k in range(n):
        i = kind_index[k]
        if is_real[k]:
            cols["mag_i"][k], cols["z"][k], cols["hlr"][k] = (
                real["mag_i"][i], real["z"][i], real["hlr"][i])
            cosmos_index[k] = real["index"][i]
        else:
            bt = gal["bulge_frac"][i]
            for c in ("mag_i", "z", "hlr_bulge", "hlr_disk", "bulge_frac", "e1", "e2"):
                cols[c][k] = gal[c][i]
            cols["hlr"][k] = bt * gal["hlr_bulge"][i] + (1 - bt) * gal["hlr_disk"][i]
    for c, v in cols.items():
        t[c] = v
    t["cosmos_index"] = cosmos_index
    for b, band in enumerate(sv.bands):
        t[f"flux_{band.name}"] = fluxes[:, b]
    t.meta["survey_name"] = sv.name
    t.meta["flux_units"] = "electrons over the survey preset exposure"
    return t


# ---------------------------------------------------------------------------------------
# Shards on disk
# ---------------------------------------------------------------------------------------

def _save_npy(path: Path, array):
    def w(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, w)


def _write_shard(out: Path, survey, k: int, m: int, seed: int, kwargs: dict,
                 fits_cubes: bool = False) -> dict:
    """Simulate and write shard ``k`` (``m`` stamps); top level so worker processes can run it."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), k]))
    st = simulate_stamps(survey, m, seed=rng, **kwargs)
    _save_npy(out / f"stamps_{k:05d}.npy", st.images)
    if fits_cubes:
        from astropy.io import fits

        hdu = fits.PrimaryHDU(st.images)
        hdu.header["BUNIT"] = ("ct", "electrons over the survey preset exposure")
        hdu.header["PIXSCALE"] = (st.pixel_scale, "arcsec / pixel")
        for j, b in enumerate(st.bands):
            hdu.header[f"BAND{j + 1}"] = b
        atomic_write(out / f"stamps_{k:05d}.fits", lambda tmp: hdu.writeto(tmp, overwrite=True))
    atomic_write(out / f"truth_{k:05d}.ecsv",
                 lambda tmp: st.truth.write(tmp, format="ascii.ecsv", overwrite=True))
    if k == 0 and st.psf_images is not None:
        _save_npy(out / "psf.npy", st.psf_images)
    return dict(
        shard={"images": f"stamps_{k:05d}.npy", "truth": f"truth_{k:05d}.ecsv", "n": m},
        bands=list(st.bands), pixel_scale=st.pixel_scale, size=int(st.images.shape[-1]),
        noise_sigma=st.noise_sigma.tolist(),
    )


def write_stamp_shards(
    out_dir,
    survey: str | Survey = "lsst",
    n: int = 1000,
    *,
    seed: int = 0,
    shard_size: int = 1000,
    progress: bool = True,
    workers: int = 1,
    fits_cubes: bool = False,
    **kwargs,
) -> Path:
    """Simulate ``n`` stamps and write them as shards in ``out_dir`` (see module docstring).

    Shard ``k`` depends only on (seed, k), so the same seed gives identical files whatever
    ``workers`` is. With ``workers > 1`` shards are made in that many processes (spawned, so
    they are safe after JAX has started threads in this one). With ``fits_cubes`` each shard
    is also written as a FITS (n, band, y, x) cube ``stamps_XXXXX.fits``, the folder layout
    `deconvjax.diffusion.data.load_training_images` reads. Extra keyword arguments go to
    `simulate_stamps`.
    """
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError(f"shard_size: expected >= 1, got {shard_size}")
    if n < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers: expected an int >= 1, got {workers!r}")
    sv = get_survey(survey)  # validates the name before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = (n + shard_size - 1) // shard_size
    jobs = [(k, min(shard_size, n - k * shard_size)) for k in range(n_shards)]
    results: dict[int, dict] = {}
    bar = tqdm(total=n, desc="stamps", unit="stamp", disable=not progress)
    if workers == 1 or n_shards <= 1:
        for k, m in jobs:
            results[k] = _write_shard(out, survey, k, m, seed, kwargs, fits_cubes)
            bar.update(m)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futs = {pool.submit(_write_shard, out, survey, k, m, seed, kwargs, fits_cubes): (k, m)
                    for k, m in jobs}
            for fut in as_completed(futs):
                k, m = futs[fut]
                results[k] = fut.result()
                bar.update(m)
    bar.close()
    first = results.get(0, {})
    index = dict(
        bands=first.get("bands", list(sv.band_names)),
        pixel_scale=first.get("pixel_scale", sv.pixel_scale),
        size=first.get("size", kwargs.get("size", 64)),
        noise_sigma=first.get("noise_sigma"),
        survey=sv.name,
        seed=int(seed),
        units="electrons over the survey preset exposure",
        layout="(n, band, y, x) float32",
        options={k2: v for k2, v in kwargs.items()
                 if isinstance(v, (int, float, str, bool, type(None)))},
        n=int(n),
        shards=[results[k]["shard"] for k in range(n_shards)],
    )
    atomic_write(out / "index.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1, sort_keys=True)))
    return out


def read_stamp_index(directory) -> dict:
    p = Path(directory) / "index.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no stamp index (write one with write_stamp_shards)")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: corrupted stamp index ({e})") from e


def iter_stamp_batches(directory, batch_size: int = 64, *, shuffle: bool = False,
                       seed: int = 0, drop_last: bool = False):
    """Yield (batch, band, size, size) float32 arrays streamed from a shard folder.

    Shards are memory-mapped, so the folder may be far larger than memory. With
    ``shuffle=True`` the order of shards and of stamps within each shard is permuted with
    ``seed`` (deterministic).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    d = Path(directory)
    index = read_stamp_index(d)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(index["shards"])) if shuffle else range(len(index["shards"]))
    buf = []
    nbuf = 0
    for k in order:
        path = d / index["shards"][k]["images"]
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable stamp shard ({e})") from e
        idx = rng.permutation(arr.shape[0]) if shuffle else np.arange(arr.shape[0])
        for start in range(0, len(idx), batch_size):
            part = np.asarray(arr[np.sort(idx[start:start + batch_size])] if not shuffle
                              else arr[idx[start:start + batch_size]], dtype=np.float32)
            buf.append(part)
            nbuf += len(part)
            while nbuf >= batch_size:
                cat = np.concatenate(buf)
                yield cat[:batch_size]
                rest = cat[batch_size:]
                buf, nbuf = ([rest] if len(rest) else []), len(rest)
    if nbuf and not drop_last:
        yield np.concatenate(buf)


def read_stamp_truth(directory) -> Table:
    d = Path(directory)
    index = read_stamp_index(d)
    return vstack([Table.read(d / s["truth"], format="ascii.ecsv") for s in index["shards"]])
