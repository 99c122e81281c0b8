"""Writing the image products of a fit or of a posterior (model, residual, per-source,
sample, mean and std cubes) as FITS files that keep the observation's WCS and flux unit,
and turning a FITS ``BUNIT`` into an astropy unit for catalogs.

Every product of the ``fit`` and ``sample`` commands is written by `write_image`, so that
they all open in DS9 / astropy on the sky, in the data's unit, whatever command made them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .._atomic import atomic_write

__all__ = ["flux_unit", "image_header", "write_image"]

# Spellings of BUNIT seen in real headers that astropy's parsers do not know; mapped to
# the unit they mean (HST drizzled images say ELECTRONS/S, older pipelines COUNTS).
_BUNIT_ALIASES = {"electrons": "electron", "counts": "ct", "count": "ct", "cts": "ct", "e-": "electron"}


def flux_unit(bunit: str | u.UnitBase | None) -> u.UnitBase:
    """The astropy unit of a FITS ``BUNIT`` value (``"nanomaggy"``, ``"ELECTRONS/S"``,
    ``"MJy/sr"``, ...): the FITS standard's parser first, then astropy's generic one,
    then a few common non-standard spellings; ``dimensionless_unscaled`` when ``bunit``
    is None, empty or not a unit at all (e.g. ``"data units"``), so that a catalog always
    has a unit it can compute with."""
    if bunit is None:
        return u.dimensionless_unscaled
    if isinstance(bunit, u.UnitBase):
        return bunit
    if not isinstance(bunit, str):
        raise TypeError(f"bunit: expected a str, an astropy unit or None, got {type(bunit).__name__}")
    text = bunit.strip()
    if not text:
        return u.dimensionless_unscaled
    candidates = [text, "/".join(_BUNIT_ALIASES.get(p, p) for p in text.lower().split("/"))]
    for cand in candidates:
        for fmt in ("fits", None):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", u.UnitsWarning)
                    unit = u.Unit(cand, format=fmt)
            except (ValueError, TypeError):
                continue
            if not isinstance(unit, u.UnrecognizedUnit):
                return unit
    return u.dimensionless_unscaled


def image_header(
    wcs: WCS | None = None, bunit: str | None = None, *, name: str | None = None, cards: Iterable = ()
) -> fits.Header:
    """A FITS header with the celestial part of ``wcs`` (none when None), ``BUNIT`` (when
    given), ``EXTNAME`` ``name`` and the ``(key, value, comment)`` ``cards``. The WCS's two
    celestial axes become the image's first two FITS axes (x, y), which is what a
    ``(..., y, x)`` numpy cube stores; extra leading axes (band, source, sample) carry no
    WCS, as DS9 and astropy expect."""
    if wcs is not None and not isinstance(wcs, WCS):
        raise TypeError(f"wcs: expected an astropy.wcs.WCS or None, got {type(wcs).__name__}")
    header = fits.Header() if wcs is None else wcs.celestial.to_header(relax=True)
    if bunit is not None:
        if not isinstance(bunit, str):
            bunit = u.Unit(bunit).to_string("fits")
        header["BUNIT"] = (bunit, "unit of the data (as the observation's)")
    if name:
        header["EXTNAME"] = name
    for key, value, comment in cards:
        header[key] = (value, comment)
    return header


def write_image(
    path,
    array,
    *,
    wcs: WCS | None = None,
    bunit: str | None = None,
    name: str | None = None,
    cards: Iterable = (),
    dtype=np.float32,
) -> Path:
    """Write ``array`` (``(y, x)``, or with leading band / source / sample axes) as the
    primary HDU of a FITS file at ``path``, atomically, with `image_header`'s WCS,
    ``BUNIT``, ``EXTNAME`` and cards. Returns the path."""
    data = np.asarray(array, dtype=dtype)
    if data.ndim < 2:
        raise ValueError(f"array: expected at least (y, x), got shape {data.shape}")
    hdu = fits.PrimaryHDU(data, header=image_header(wcs, bunit, name=name, cards=cards))

    def write(tmp):
        # "fix" quietly repairs long card values (e.g. a long NOISESRC) instead of failing.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            hdu.writeto(tmp, overwrite=True, output_verify="fix")

    return atomic_write(path, write)
