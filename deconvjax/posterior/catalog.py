"""Catalogs of posterior results: every source's flux as the posterior mean over samples,
its error as the posterior standard deviation, in the data's unit (`posterior_catalog`)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
from astropy.table import QTable
from astropy.wcs import WCS

from ..fit.measure import CatalogFlag
from ..fit.moments import image_moments
from ..io.products import flux_unit

__all__ = ["posterior_catalog"]


def posterior_catalog(
    result,
    *,
    wcs: WCS | None = None,
    bands=None,
    unit: str | u.UnitBase | None = None,
) -> QTable:
    """An astropy `QTable` of a `DeblendResult` (one row per source) or a
    `PosteriorResult` (one row: the galaxy).

    **Arguments:**

    - `result`: the posterior result.
    - `wcs`: the model frame's WCS (for `DeblendResult`, the frame the scene lives in;
      for a ``sample`` command's stamp, its WCS), for ``sky_centroid``.
    - `bands`: band names (default ``0, 1, ...``).
    - `unit`: the data's flux unit (FITS ``BUNIT`` or astropy unit; dimensionless if
      None or unknown, `deconvjax.io.flux_unit`).

    **Columns:** ``id``; ``y``, ``x`` (the first-moment centroid of the source's posterior
    mean image summed over bands, model pixels, ``u.pix``; the stamp's centre where that
    image has no positive light); with a WCS ``sky_centroid``
    and ``ra``, ``dec``; per band ``flux_<band>`` (the posterior mean of the source's
    total flux), ``flux_err_<band>`` (its posterior standard deviation over the samples,
    ``ddof=1``), ``snr_<band>``; ``size`` (second-moment size of the mean image, pixels);
    ``flags`` (`CatalogFlag`: ``NEGATIVE_FLUX`` for a negative mean flux,
    ``ERROR_UNDEFINED`` with fewer than two samples, ``NEAR_EDGE`` for a deblended
    source's stamp crossing the frame's edge).
    """
    fu = flux_unit(unit)
    if hasattr(result, "sources") and hasattr(result, "corners"):
        stamps = np.asarray(result.sources, np.float64)  # (n, source, band, h, w)
        if stamps.ndim != 5:
            raise ValueError(f"result.sources: expected (sample, source, band, h, w), got shape {stamps.shape}")
        corners = np.asarray(result.corners, np.float64)
        frame_shape = np.shape(result.mean)[-2:]
    elif hasattr(result, "samples"):
        samples = np.asarray(result.samples, np.float64)
        if samples.ndim != 4:
            raise ValueError(f"result.samples: expected (sample, band, y, x), got shape {samples.shape}")
        stamps = samples[:, None]
        corners = np.zeros((1, 2))
        frame_shape = samples.shape[-2:]
    else:
        raise TypeError(f"result: expected a DeblendResult or a PosteriorResult, got {type(result).__name__}")
    n_samples, n_src, nb, h, w = stamps.shape
    names = [str(b) for b in (bands if bands is not None else range(nb))]
    if len(names) != nb:
        raise ValueError(f"bands: {len(names)} names for {nb} bands")
    flux = stamps.sum(axis=(-2, -1))  # (sample, source, band)
    mean = flux.mean(axis=0)
    err = flux.std(axis=0, ddof=1) if n_samples > 1 else np.full(mean.shape, np.nan)
    m = image_moments(stamps.mean(axis=0).sum(axis=1))  # the mean image of each source
    # A source with no positive light in its mean image has no centroid: its stamp centre.
    y = corners[:, 0] + np.where(np.isfinite(m.y), m.y, h // 2)
    x = corners[:, 1] + np.where(np.isfinite(m.x), m.x, w // 2)
    t = QTable()
    t["id"] = np.arange(n_src, dtype=np.int64)
    t["y"], t["x"] = y * u.pix, x * u.pix
    if wcs is not None:
        sky = wcs.pixel_to_world(x, y)
        t["sky_centroid"] = sky
        t["ra"], t["dec"] = sky.icrs.ra.deg * u.deg, sky.icrs.dec.deg * u.deg
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = mean / err
    for b, name in enumerate(names):
        t[f"flux_{name}"] = mean[:, b] * fu
        t[f"flux_err_{name}"] = err[:, b] * fu
        t[f"snr_{name}"] = snr[:, b]
    t["size"] = m.size * u.pix
    ny, nx = frame_shape
    edge = (corners[:, 0] < 0) | (corners[:, 1] < 0) | (corners[:, 0] + h > ny) | (corners[:, 1] + w > nx)
    flags = np.where(edge, CatalogFlag.NEAR_EDGE, 0) | np.where(np.any(mean < 0, axis=1), CatalogFlag.NEGATIVE_FLUX, 0)
    if n_samples < 2:
        flags |= CatalogFlag.ERROR_UNDEFINED
    t["flags"] = flags.astype(np.int64)
    t.meta["NSAMPLE"] = int(n_samples)
    if unit is not None:
        t.meta["BUNIT"] = str(unit)
    t.meta["FLAGBITS"] = ", ".join(f"{int(f.value)} {f.name}" for f in CatalogFlag)
    return t
