"""Training images for diffusion priors: FITS folders, COSMOS real galaxies, GalSim sims.

Layouts accepted by `load_training_images` (and ``deconvjax train-prior --data DIR``):

* a folder holding ``real_galaxy_catalog*.fits`` (the GalSim COSMOS RealGalaxyCatalog
  layout, e.g. `deconvjax.data.cosmos_path()`): every catalogued galaxy stamp is resampled to
  ``size x size`` with `cosmos_stamps`;
* a folder of FITS files (``*.fits``, ``*.fits.gz``, ``*.fit``), each holding in its primary
  HDU (or first HDU with data) either one 2-D image ``(y, x)``, a cube ``(n, y, x)`` of
  single-band images or ``(n, band, y, x)`` multi-band images;
* a single such FITS file.

All images are returned as ``float32`` arrays ``(n, band, y, x)`` in the files' own units.
Normalisation to the prior's units (one global flux scale) happens in training.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from astropy.io import fits

__all__ = ["load_training_images", "cosmos_stamps", "cosmos_heldout_indices", "simulate_galaxies",
           "is_cosmos_dir", "cosmos_noise_variance", "resampled_white_noise_variance",
           "resample_stamp"]


def is_cosmos_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and any(
        f.name.startswith("real_galaxy_catalog") and not f.name.endswith("_fits.fits")
        for f in p.glob("real_galaxy_catalog*.fits")
    )


def _overlap_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``M[j, i]``: fraction of input pixel ``i`` that falls into output pixel ``j``."""
    edges_in = np.arange(n_in + 1) / n_in
    edges_out = np.arange(n_out + 1) / n_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    return np.clip(hi - lo, 0.0, None) * n_in


def resample_stamp(image: np.ndarray, size: int) -> np.ndarray:
    """Resample a square stamp to ``size x size`` pixels, conserving flux exactly.

    Area-weighted rebinning (each new pixel sums the overlapping fractions of the old
    pixels, separably in y and x), so downsampling box-averages instead of point-sampling
    (no aliasing) and the total flux is unchanged.
    """
    n = image.shape[0]
    if image.ndim != 2 or image.shape[1] != n:
        raise ValueError(f"image: expected a square 2-D stamp, got shape {image.shape}")
    m = _overlap_matrix(n, size)
    return (m @ np.asarray(image, np.float64) @ m.T).astype(np.float32)


def cosmos_stamps(path: str | os.PathLike, size: int = 32,
                  indices: np.ndarray | None = None) -> np.ndarray:
    """COSMOS RealGalaxyCatalog stamps resampled to ``(n, 1, size, size)`` (counts/s, F814W).

    Each stamp (16 to 190 px at 0.03") is resampled so that the whole stamp fills the new
    frame (pixel scale ``0.03 * n_orig / size`` arcsec, different per galaxy), flux conserved.
    Noise in the stamps is kept (HST noise, much reduced by the downsampling).
    """
    path = Path(path)
    cats = [f for f in sorted(path.glob("real_galaxy_catalog*.fits"))
            if not f.name.endswith("_fits.fits")]
    if not cats:
        raise ValueError(f"data: no real_galaxy_catalog*.fits in {path}")
    cat = fits.getdata(cats[0])
    out = [resample_stamp(np.asarray(img, dtype=np.float64), size)
           for _, img in _cosmos_images(path, cat, indices)]
    return np.stack(out)[:, None]


def _cosmos_images(path: Path, cat, indices: np.ndarray | None):
    """Yield ``(row, image)`` for the catalog rows, each galaxy file opened once."""
    idx = np.arange(len(cat)) if indices is None else np.asarray(indices)
    files: dict[str, fits.HDUList] = {}
    try:
        for i in idx:
            fname = str(cat["GAL_FILENAME"][i]).strip()
            if fname not in files:
                files[fname] = fits.open(path / fname, memmap=False)
            yield int(i), files[fname][int(cat["GAL_HDU"][i])].data
    finally:
        for f in files.values():
            f.close()


def resampled_white_noise_variance(n_in: int, size: int, variance: float) -> float:
    """Mean per-pixel variance left by `resample_stamp` (``n_in`` to ``size`` pixels) of
    white noise of per-pixel ``variance``: ``variance * mean_ab (sum_i M_ai^2)(sum_j M_bj^2)``
    with ``M`` the overlap matrix (exact)."""
    r = (_overlap_matrix(int(n_in), int(size)) ** 2).sum(1)
    return float(variance) * float(np.mean(np.outer(r, r)))


def _resampled_noise_variance(n_in: int, size: int, noise, n_draws: int, rng) -> float:
    """Monte Carlo version for any GalSim noise model drawn at 0.03 arcsec per pixel."""
    import galsim

    draws = []
    for _ in range(int(n_draws)):
        image = galsim.ImageD(int(n_in), int(n_in), scale=0.03)
        image.addNoise(noise.copy(rng=rng))
        draws.append(float(np.var(resample_stamp(image.array, size).astype(np.float64))))
    return float(np.mean(draws))


def cosmos_noise_variance(path: str | os.PathLike, size: int = 32,
                          indices: np.ndarray | None = None, *, n_draws: int = 16,
                          seed: int = 0) -> np.ndarray:
    """Per-pixel variance ``(n,)`` of the HST noise left in each `cosmos_stamps` stamp.

    Evaluating an estimate against a COSMOS stamp as the truth measures the stamp's own
    noise too: a perfect estimate of the noiseless galaxy still has a mean squared error of
    this variance against the stamp. The ACS noise is correlated, so area rebinning reduces
    it less than white noise (1.3-2x the white-noise figure for 40-90 px stamps resampled to
    64): each row's noise (the catalog's ``NOISE_VARIANCE``, correlated as in the folder's
    ``acs_I_unrot_sci_*_cf.fits``, via ``galsim.getCOSMOSNoise``) is drawn ``n_draws``
    times at the stamp's original size and resampled like the stamp.
    """
    import galsim

    path = Path(path)
    if int(n_draws) < 1:
        raise ValueError(f"n_draws: expected a positive integer, got {n_draws}")
    cats = [f for f in sorted(path.glob("real_galaxy_catalog*.fits"))
            if not f.name.endswith("_fits.fits")]
    cfs = sorted(path.glob("acs_I_unrot_sci_*_cf.fits"))
    if not cats or not cfs:
        raise ValueError(f"path: expected a COSMOS folder with real_galaxy_catalog*.fits and "
                         f"acs_I_unrot_sci_*_cf.fits, got {path}")
    cat = fits.getdata(cats[0])
    base = galsim.getCOSMOSNoise(file_name=str(cfs[0]))
    rng = galsim.BaseDeviate(int(seed) + 1)  # galsim treats seed 0 as "from the clock"
    out = [_resampled_noise_variance(img.shape[0], size,
                                     base.withVariance(float(cat["NOISE_VARIANCE"][i])), n_draws, rng)
           for i, img in _cosmos_images(path, cat, indices)]
    return np.asarray(out)


def cosmos_heldout_indices(n: int, last: int = 0, every: int = 0) -> np.ndarray:
    """Catalog rows of ``n`` COSMOS galaxies held out of a prior's training: the ``last``
    rows, and every ``every``-th row (``every - 1, 2 every - 1, ...``); sorted, unique.

    The GalSim COSMOS sample is not in random order (its last half is all fainter than
    F814W = 25), so ``every`` gives a held-out set with bright galaxies in it.
    """
    n, last, every = int(n), int(last), int(every)
    if last < 0 or every < 0:
        raise ValueError(f"last, every: expected non-negative integers, got {last}, {every}")
    held = set(range(max(n - last, 0), n)) if last else set()
    if every:
        held |= set(range(every - 1, n, every))
    return np.array(sorted(held), dtype=int)


def _fits_images(file: Path) -> np.ndarray:
    with fits.open(file, memmap=False) as hdul:
        data = next((h.data for h in hdul if h.data is not None and h.data.ndim >= 2), None)
    if data is None:
        raise ValueError(f"data: {file} holds no image HDU")
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        return data[None, None]
    if data.ndim == 3:
        return data[:, None]
    if data.ndim == 4:
        return data
    raise ValueError(f"data: {file} has a {data.ndim}-D array; expected (y,x), (n,y,x) or "
                     "(n,band,y,x)")


def load_training_images(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Load training images ``(n, band, y, x)`` from a folder or FITS file (module docstring).

    ``size`` resamples every image to ``size x size`` (flux conserved); without it all images
    must already share one square shape.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"data: {p} does not exist")
    if is_cosmos_dir(p):
        return cosmos_stamps(p, size or 32)
    files = [p] if p.is_file() else sorted(
        f for f in p.iterdir() if f.name.endswith((".fits", ".fits.gz", ".fit")))
    if not files:
        raise ValueError(f"data: no FITS files in {p}")
    arrays = [_fits_images(f) for f in files]
    if size is not None:
        arrays = [np.stack([np.stack([resample_stamp(b, size) if b.shape != (size, size) else b
                                      for b in img]) for img in a]) for a in arrays]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"data: images of different shapes {sorted(shapes)}; pass size=")
    imgs = np.concatenate(arrays)
    if imgs.shape[-1] != imgs.shape[-2]:
        raise ValueError(f"data: expected square images, got {imgs.shape[-2:]}")
    return imgs


def simulate_galaxies(seed: int, n: int, size: int = 32, *, flux_log10_mean: float = 0.5,
                      flux_log10_std: float = 0.45, hlr_range=(2.5, 7.0),
                      psf_sigma: float = 0.7) -> np.ndarray:
    """Parametric galaxies with GalSim: de Vaucouleurs bulge + exponential disk.

    Per galaxy: total flux log-normal (``10**N(mean, std)``, default matched to the COSMOS
    stamps' counts/s after `cosmos_stamps`), disk half-light radius uniform in ``hlr_range``
    pixels, bulge radius 0.3-0.8 of it, bulge fraction uniform in [0, 0.7], independent
    shears ``|g| < 0.6`` for bulge and disk, sub-pixel centroid offsets, and a Gaussian PSF of
    ``psf_sigma`` pixels so the images are band-limited. Returns ``(n, 1, size, size)``.
    """
    import galsim

    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, size, size), np.float32)
    # Loose accuracy settings keep the FFTs of cuspy bulges small (the stamps are 32 px).
    gsp = galsim.GSParams(folding_threshold=1e-2, maxk_threshold=3e-3)
    psf = galsim.Gaussian(sigma=psf_sigma, gsparams=gsp)
    for i in range(n):
        flux = 10 ** rng.normal(flux_log10_mean, flux_log10_std)
        hlr = rng.uniform(*hlr_range)
        bf = rng.uniform(0.0, 0.7)
        g_d = rng.uniform(0, 0.6) * np.exp(2j * rng.uniform(0, np.pi))
        g_b = rng.uniform(0, 0.3) * np.exp(2j * rng.uniform(0, np.pi))
        disk = galsim.Exponential(half_light_radius=hlr, gsparams=gsp).shear(g1=g_d.real, g2=g_d.imag)
        bulge = galsim.DeVaucouleurs(half_light_radius=hlr * rng.uniform(0.3, 0.8),
                                     trunc=4 * hlr, gsparams=gsp).shear(g1=g_b.real, g2=g_b.imag)
        gal = galsim.Add([bf * bulge, (1 - bf) * disk]).withFlux(flux)
        gal = galsim.Convolve(gal, psf).shift(*rng.uniform(-0.5, 0.5, 2))
        out[i, 0] = gal.drawImage(nx=size, ny=size, scale=1.0).array
    return out
