"""Noise cutouts ``(n, band, size, size)`` for learning noise distributions (SLIC): blank
sky from real images, correlated Gaussian noise from a correlation function (GalSim), and a
simulated non-Gaussian mix (cosmic rays, hot pixels, Poisson noise at low counts).

All cutouts are in data units with zero mean (each image's local sky is subtracted), the
variable a `LearnedNoiseModel` is trained on.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int

__all__ = ["blank_cutouts", "cosmos_blank_cutouts", "correlated_noise_cutouts",
           "non_gaussian_noise_cutouts", "check_noise_cutouts", "detect_segmentation"]


def _as_cube(image, name: str) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from astropy.io import fits

        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{name}: no FITS file at {path}")
        with fits.open(path) as hdul:
            data = next((h.data for h in hdul if getattr(h, "data", None) is not None
                         and np.ndim(h.data) >= 2), None)
        if data is None:
            raise ValueError(f"{name}: {path} holds no image")
        image = data
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected a (y, x) or (band, y, x) image, got shape {arr.shape}")
    return arr


def detect_segmentation(image: Float[np.ndarray, "band y x"], *, nsigma: float = 3.0,
                        npixels: int = 10, dilate: int = 3) -> Int[np.ndarray, "y x"]:
    """Sources of ``image`` (summed over bands) found by photutils `detect_sources`
    ``nsigma`` above a sigma-clipped background after a 1-pixel Gaussian smoothing, grown by
    ``dilate`` pixels so that their faint wings are left out of blank cutouts too.
    Returns a labelled ``(y, x)`` map (0: sky)."""
    from astropy.convolution import Gaussian2DKernel, convolve
    from astropy.stats import sigma_clipped_stats
    from photutils.segmentation import detect_sources
    from photutils.utils.exceptions import NoDetectionsWarning
    from scipy.ndimage import binary_dilation

    img = np.nansum(np.asarray(image, dtype=np.float64), axis=0)
    _, med, std = sigma_clipped_stats(img[np.isfinite(img)], sigma=3.0)
    # The smoothing is what makes faint extended wings detectable above the noise.
    smooth = convolve(np.where(np.isfinite(img), img, med) - med, Gaussian2DKernel(1.0))
    _, _, sstd = sigma_clipped_stats(smooth, sigma=3.0)
    with warnings.catch_warnings():
        # A blank image is a valid input here: no sources is an answer, not a problem.
        warnings.simplefilter("ignore", NoDetectionsWarning)
        seg = detect_sources(smooth, nsigma * sstd, n_pixels=npixels)
    if seg is None:
        return np.zeros(img.shape, dtype=np.int32)
    labels = np.asarray(seg.data, dtype=np.int32)
    if dilate > 0:
        grown = binary_dilation(labels > 0, iterations=int(dilate))
        labels = np.where(grown & (labels == 0), -1, labels)
        labels = np.where(labels == -1, labels.max() + 1, labels)
    return labels


def _tiles(cube, mask, seg, size, rng):
    """Blank ``size``-square tiles of one image on a grid with a random origin: no NaN, no
    masked pixel, no source pixel."""
    _, ny, nx = cube.shape
    oy, ox = rng.integers(0, size), rng.integers(0, size)
    if ny < size + oy or nx < size + ox:
        oy, ox = 0, 0
    out = []
    for y in range(oy, ny - size + 1, size):
        for x in range(ox, nx - size + 1, size):
            t = cube[:, y:y + size, x:x + size]
            if not np.all(np.isfinite(t)):
                continue
            if mask is not None and np.any(mask[y:y + size, x:x + size]):
                continue
            if np.any(seg[y:y + size, x:x + size] > 0):
                continue
            out.append(t)
    return out


def blank_cutouts(
    image, mask=None, *, size: int, n: int | None = None, segmentation=None, seed: int = 0,
) -> Float[np.ndarray, "n band size size"]:
    """Blank-sky ``size`` x ``size`` cutouts of ``image`` (a FITS path, or a ``(y, x)`` or
    ``(band, y, x)`` array), for training a noise model.

    Tiles touching a source of ``segmentation`` (a ``(y, x)`` labelled map; default
    `detect_segmentation` of the image, dilated), a ``mask`` pixel (True: bad) or a NaN are
    rejected. The median of the kept tiles (per band), the local sky, is subtracted so that
    the noise has zero mean. ``n``: how many to return (chosen at random with ``seed``;
    default all blank tiles).

    **Raises:** `ValueError` naming the argument: a bad shape, or fewer blank tiles than
    ``n`` (or none).
    """
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size: expected an integer >= 2, got {size!r}")
    cube = _as_cube(image, "image")
    if mask is not None:
        mask = np.asarray(_as_cube(mask, "mask")[0] if isinstance(mask, (str, os.PathLike))
                          else mask, dtype=bool)
        if mask.shape != cube.shape[1:]:
            raise ValueError(f"mask: expected shape {cube.shape[1:]}, got {mask.shape}")
    if segmentation is None:
        seg = detect_segmentation(cube)
    else:
        seg = np.asarray(segmentation)
        if seg.shape != cube.shape[1:]:
            raise ValueError(f"segmentation: expected shape {cube.shape[1:]}, got {seg.shape}")
    rng = np.random.default_rng(seed)
    tiles = _tiles(cube, mask, seg, size, rng)
    want = 1 if n is None else int(n)
    if len(tiles) < want:
        raise ValueError(
            f"image: only {len(tiles)} blank {size}x{size} tiles (no source, mask or NaN pixel), "
            f"{want} asked (n); use a smaller size, a larger image or fewer cutouts"
        )
    out = np.stack(tiles)
    out = out - np.median(out, axis=(0, 2, 3), keepdims=True)
    if n is not None:
        out = out[rng.permutation(len(out))[:n]]
    return out.astype(np.float32)


def cosmos_blank_cutouts(cosmos_dir, *, size: int, n_per_stamp: int = 4,
                         seed: int = 0) -> Float[np.ndarray, "n 1 size size"]:
    """Blank-sky cutouts from the COSMOS HST stamps in ``cosmos_dir`` (GalSim's
    RealGalaxyCatalog layout: `deconvjax.data.cosmos_path()`, or a folder written by
    `deconvjax data cosmos`): up to ``n_per_stamp`` tiles per stamp, far from its galaxy
    (`blank_cutouts` on each stamp), each stamp's sky subtracted. Stamps too small for a
    blank tile are skipped."""
    from astropy.io import fits

    d = Path(cosmos_dir)
    path = d / "real_galaxy_images_extension.fits"
    if not path.is_file():
        raise ValueError(f"cosmos_dir: no real_galaxy_images_extension.fits in {d}")
    rng = np.random.default_rng(seed)
    out = []
    with fits.open(path) as hdul:
        for hdu in hdul:
            if hdu.data is None or hdu.data.ndim != 2 or min(hdu.data.shape) < size:
                continue
            try:
                c = blank_cutouts(np.asarray(hdu.data, dtype=np.float64), size=size,
                                  seed=int(rng.integers(2**31)))
            except ValueError:
                continue
            out.append(c[:n_per_stamp])
    if not out:
        raise ValueError(f"size: no stamp in {d} has a blank {size}x{size} tile; use a smaller size")
    return np.concatenate(out)


def correlated_noise_cutouts(correlation, *, n: int, size: int, variance: float | None = None,
                             seed: int = 0) -> Float[np.ndarray, "n 1 size size"]:
    """``n`` cutouts of stationary correlated Gaussian noise drawn by GalSim from the
    correlation function ``correlation`` (a FITS file such as COSMOS'
    ``acs_I_unrot_sci_20_cf.fits``, or a centred ``(h, w)`` array in pixel units), rescaled
    to pixel ``variance`` when given."""
    import galsim

    if isinstance(correlation, (str, os.PathLike)):
        from astropy.io import fits

        if not Path(correlation).is_file():
            raise ValueError(f"correlation: no FITS file at {correlation}")
        cf = np.asarray(fits.getdata(correlation), dtype=np.float64)
    else:
        cf = np.asarray(correlation, dtype=np.float64)
    if cf.ndim != 2 or not np.all(np.isfinite(cf)):
        raise ValueError(f"correlation: expected a finite (h, w) correlation function, got shape {cf.shape}")
    if variance is not None and not variance > 0:
        raise ValueError(f"variance: expected a positive float, got {variance}")
    h, w = cf.shape
    if h != w or h % 2 != 1:
        raise ValueError(f"correlation: expected an odd, square correlation function, got shape {cf.shape}")
    # Symmetrised (a correlation function is even; GalSim checks it to 1e-12).
    cf = 0.5 * (cf + cf[::-1, ::-1])
    # As galsim.getCOSMOSNoise builds it (BaseCorrelatedNoise.from_file), in pixel units:
    # galsim.CorrelatedNoise(image) would instead *estimate* a correlation from a noise image.
    ii = galsim.InterpolatedImage(galsim.Image(cf, scale=1.0), scale=1.0, normalization="sb",
                                  calculate_stepk=False, calculate_maxk=False,
                                  x_interpolant=galsim.Linear())
    cn = galsim.BaseCorrelatedNoise(galsim.BaseDeviate(int(seed) + 1), ii, galsim.PixelScale(1.0))
    if variance is not None:
        cn = cn.withVariance(float(variance))
    out = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        im = galsim.ImageD(size, size, scale=1.0)
        im.addNoise(cn)
        out[i, 0] = im.array
    return out


def non_gaussian_noise_cutouts(
    *, n: int, size: int, sigma: float = 1.0, seed: int = 0, cosmic_ray_rate: float = 0.3,
    hot_pixel_rate: float = 2e-3, poisson_counts: float | None = 4.0,
) -> Float[np.ndarray, "n 1 size size"]:
    """A simulated non-Gaussian detector noise mix, ``(n, 1, size, size)`` in data units:

    - Poisson noise of a sky of ``poisson_counts`` counts per pixel (scaled so that its
      standard deviation is ``sigma``, mean subtracted; skewed at low counts), or Gaussian
      noise of std ``sigma`` when ``poisson_counts`` is None;
    - cosmic-ray tracks (``cosmic_ray_rate`` per cutout on average): short straight lines
      1 pixel wide, 2-8 pixels long, 20-100 ``sigma`` bright;
    - hot pixels (a fraction ``hot_pixel_rate`` of pixels) 10-50 ``sigma`` above.
    """
    if n < 1 or size < 2 or not sigma > 0:
        raise ValueError(f"n, size, sigma: expected n >= 1, size >= 2, sigma > 0, got {n}, {size}, {sigma}")
    rng = np.random.default_rng(seed)
    if poisson_counts is None:
        base = rng.normal(0.0, sigma, (n, size, size))
    else:
        if not poisson_counts > 0:
            raise ValueError(f"poisson_counts: expected a positive count, got {poisson_counts}")
        base = (rng.poisson(poisson_counts, (n, size, size)) - poisson_counts) * sigma / np.sqrt(poisson_counts)
    hot = rng.random((n, size, size)) < hot_pixel_rate
    base = base + hot * rng.uniform(10, 50, (n, size, size)) * sigma
    for i in range(n):
        for _ in range(rng.poisson(cosmic_ray_rate)):
            length = rng.integers(2, 9)
            angle = rng.uniform(0, np.pi)
            y0, x0 = rng.uniform(0, size, 2)
            amp = rng.uniform(20, 100) * sigma
            t = np.arange(length)
            ys = np.clip(np.round(y0 + t * np.sin(angle)).astype(int), 0, size - 1)
            xs = np.clip(np.round(x0 + t * np.cos(angle)).astype(int), 0, size - 1)
            base[i, ys, xs] += amp
    return base[:, None].astype(np.float32)


def check_noise_cutouts(cutouts, segmentation=None) -> np.ndarray:
    """Validate noise cutouts ``(n, band, size, size)``: a clear `ValueError` for a bad
    shape, NaN/inf cutouts (which ones), or cutouts holding sources according to
    ``segmentation`` (``(n, size, size)`` or ``(n, band, size, size)`` labels, 0 = sky;
    how many and which). Returns the cutouts as float32."""
    c = np.asarray(cutouts, dtype=np.float32)
    if c.ndim != 4 or c.shape[-1] != c.shape[-2] or len(c) == 0:
        raise ValueError(f"cutouts: expected a non-empty (n, band, size, size) array, got shape {c.shape}")
    bad = np.flatnonzero(~np.all(np.isfinite(c), axis=(1, 2, 3)))
    if bad.size:
        raise ValueError(f"cutouts: {bad.size} of {len(c)} cutouts contain NaN or inf "
                         f"(indices {bad[:10].tolist()}{'...' if bad.size > 10 else ''})")
    if segmentation is not None:
        seg = np.asarray(segmentation)
        if seg.ndim == 4:
            seg = seg.max(axis=1)
        if seg.shape != (c.shape[0], c.shape[2], c.shape[3]):
            raise ValueError(f"segmentation: expected shape {(c.shape[0],) + c.shape[2:]}, got {seg.shape}")
        src = np.flatnonzero(np.any(seg > 0, axis=(1, 2)))
        if src.size:
            raise ValueError(f"cutouts: {src.size} of {len(c)} cutouts contain sources according to "
                             f"segmentation (indices {src[:10].tolist()}{'...' if src.size > 10 else ''}); "
                             "a noise model must be trained on blank sky")
    return c
