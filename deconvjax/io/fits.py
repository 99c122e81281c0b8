"""FITS input and output of observations, simulated fields and truth tables: the one
reading path from disk into `deconvjax.io.ObservationData`.

The deconvjax observation file (``DJFORMAT = 'deconvjax-observation'`` in the primary header):

- primary HDU: no data; ``NBAND``, ``BAND1`` ... ``BANDn`` (band names in band-axis order),
  ``PIXSCALE`` (arcsec/pixel), ``BUNIT``, ``NOISESRC`` (where the noise came from, when
  known), optional ``SURVEY`` and ``SEED``;
- for each band ``k`` (``EXTVER = k + 1``, ``BAND`` keyword = its name):
  ``SCI`` float32 image with the celestial WCS in its header, ``VAR`` float32 variance (or
  ``WHT`` inverse variance), ``MASK`` uint8 (1 = bad pixel), ``PSF`` float32 (odd-sized,
  centred, unit sum, ``PIXSCALE`` of its sampling);
- optional ``TRUTH`` binary table (the truth catalog) and ``SOURCES`` image
  (source, band, y, x) float32 (noise-free image of each source alone): a simulated field.

Every image HDU carries ``DJHASH``, a SHA-256 prefix of its data, checked on reading so that
flipped bits in a data unit are reported as corruption (FITS CHECKSUM cards would also do, but
astropy stamps them with the current date, which would break byte-identical files).
Writes are atomic (temp file then ``os.replace``) and deterministic (no dates), so the same
simulation seed gives byte-identical files.

`read_images` is the reader: it reads deconvjax files whole, and the common real layouts: one
FITS image per band (a list of files), or one (band, y, x) cube, each with optional PSF and
variance / weight / RMS images or cubes (or one number for every pixel, or, on request, the
noise extension of the image file). Without a noise map it estimates the noise from the
images (`deconvjax.io.noise`) and says so; a bad or missing noise map is a `NoiseMapError`.
`read_arrays` (a deconvjax file), `read_observation` and `read_field` are built on the same
code; every command (``fit``, ``sample``) reads through it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from .._atomic import atomic_write
from .data import ObservationData, SimulatedField
from .noise import HEADER_KEYS, estimate_noise

__all__ = [
    "NoiseMapError", "is_observation_file", "read_arrays", "read_field", "read_images",
    "read_observation", "read_truth", "write_field", "write_observation", "write_truth",
]

FORMAT = "deconvjax-observation"
VERSION = 1


class NoiseMapError(ValueError):
    """A noise map (variance, weight or rms) that cannot be used, or none where one is
    needed; ``option`` names which (``"variance"``, ``"weight"`` or ``"rms"``)."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def _atomic_write_hdul(path, hdul: fits.HDUList):
    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fits.verify.VerifyWarning)
            hdul.writeto(tmp, overwrite=True, output_verify="silentfix")

    atomic_write(path, write)


def _cube(arr, name: str, dtype=np.float32) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected (y, x) or (band, y, x), got shape {a.shape}")
    return a.astype(dtype, copy=False)


def _wcs_header(wcs: WCS | None) -> fits.Header:
    if wcs is None:
        return fits.Header()
    if not isinstance(wcs, WCS):
        raise TypeError(f"wcs: expected an astropy.wcs.WCS, got {type(wcs).__name__}")
    return wcs.celestial.to_header(relax=True)


@contextlib.contextmanager
def _open(path, skip: tuple[str, ...] = ()):
    """Open a FITS file fully (no lazy reads), turning failures into ValueError naming it.
    The data of HDUs named in ``skip`` is not read (their headers are)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            warnings.filterwarnings("error", message=".*[Tt]runcated.*")
            hdul = fits.open(p, memmap=False, lazy_load_hdus=False)
            for h in hdul:
                if h.name not in skip:
                    _ = h.data  # force reading every array now, where errors are caught
    except (OSError, ValueError, TypeError, IndexError, KeyError, Warning) as e:
        raise ValueError(f"{p}: not a readable FITS file (corrupted or truncated?): {e}") from e
    try:
        yield hdul
    finally:
        hdul.close()


def _hdu_index(hdul) -> dict:
    """``{(EXTNAME, EXTVER): hdu}`` of a file, the first HDU of each pair (astropy's
    ``hdul[name, ver]`` scans the headers on every lookup)."""
    index = {}
    for h in hdul:
        index.setdefault((h.name.upper(), int(h.ver)), h)
    return index


def _find(hdul, path, name: str, ver: int | None = None, required: bool = True, index: dict | None = None):
    key = (name, ver) if ver is not None else name
    try:
        if index is not None and ver is not None:
            return index[(name.upper(), int(ver))]
        return hdul[key]
    except KeyError:
        if required:
            what = f"HDU {name!r}" + (f" (EXTVER {ver})" if ver is not None else "")
            raise ValueError(f"{path}: missing {what}") from None
        return None


def _digest(a: np.ndarray) -> str:
    # Hash the big-endian bytes as stored in the file, whatever the in-memory byte order.
    a = np.asarray(a)
    big = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder(">"))
    return hashlib.sha256(big.tobytes()).hexdigest()[:16]


def _image_hdu(data, header=None, name=None, ver=None) -> fits.ImageHDU:
    h = fits.ImageHDU(data, header=header, name=name, ver=ver)
    h.header["DJHASH"] = (_digest(h.data), "sha256 prefix of the data (big-endian)")
    return h


def _check_digest(hdu, path):
    want = hdu.header.get("DJHASH")
    if want is not None and hdu.data is not None and _digest(hdu.data) != want:
        ver = "" if hdu.name == "SOURCES" else f" (EXTVER {hdu.ver})"
        raise ValueError(f"{path}: HDU {hdu.name!r}{ver} is corrupted (data hash mismatch)")


def _table_to_hdu(table: Table, name: str) -> fits.BinTableHDU:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = fits.table_to_hdu(table)
    h.name = name
    return h


def _hdu_to_table(hdu) -> Table:
    t = Table.read(hdu)
    for k in ("EXTNAME", "EXTVER"):
        t.meta.pop(k, None)
    return t


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------

def write_observation(
    path,
    images,
    *,
    psf_images,
    bands: Sequence[str],
    variance=None,
    weights=None,
    mask=None,
    wcs: WCS | None = None,
    pixel_scale: float | None = None,
    truth: Table | None = None,
    source_images=None,
    meta: dict | None = None,
    bunit: str = "ct",
) -> Path:
    """Write one observation given as arrays in the deconvjax layout (see module docstring);
    `write_field` writes an `ObservationData` or a `SimulatedField`.

    **Arguments:**

    - `images`: (band, y, x) data; stored as float32.
    - `psf_images`: (band, h, w) PSFs at the image pixel scale.
    - `bands`: band names, one per image plane.
    - `variance` | `weights`: the noise, exactly one (same shape as images), stored as given.
    - `mask`: (band, y, x) bool, True for bad pixels (default none).
    - `wcs`: celestial WCS written into each SCI/VAR/MASK header.
    - `truth`: optional truth Table; source_images: optional (source, band, y, x).
    - `meta`: extra primary-header keywords (short str/int/float values).
    """
    bands = tuple(str(b) for b in bands)
    img = _cube(images, "images")
    nb = img.shape[0]
    if len(bands) != nb:
        raise ValueError(f"bands: {len(bands)} names {bands} for {nb} image planes")
    if (variance is None) == (weights is None):
        raise ValueError("variance, weights: give exactly one of them")
    noise_name = "VAR" if variance is not None else "WHT"
    arg = "variance" if variance is not None else "weights"
    noise = _cube(variance if variance is not None else weights, arg)
    if noise.shape != img.shape:
        raise ValueError(f"{arg}: expected shape {img.shape}, got {noise.shape}")
    m = None if mask is None else _cube(mask, "mask", np.uint8)
    if m is not None and m.shape != img.shape:
        raise ValueError(f"mask: expected shape {img.shape}, got {m.shape}")
    psf = _cube(psf_images, "psf_images")
    if psf.shape[0] != nb:
        raise ValueError(f"psf_images: expected {nb} planes, got shape {psf.shape}")
    data = ObservationData(img, **{arg: noise}, mask=m, psf_images=psf, bands=bands, wcs=wcs,
                           pixel_scale=pixel_scale, bunit=bunit, meta=dict(meta or {}))
    return _write(path, data, noise_name, noise, truth, source_images)


def write_field(path, field: ObservationData | SimulatedField) -> Path:
    """Write an `ObservationData`, or a `SimulatedField` with its truth table, source images,
    survey and seed (`read_field` reads it back). The noise is stored as variance."""
    if isinstance(field, SimulatedField):
        data = field.data
        meta = {**data.meta, "SURVEY": field.survey, "SEED": int(field.seed)}
        truth, sources = field.truth, field.source_images
    elif isinstance(field, ObservationData):
        data, meta, truth, sources = field, dict(field.meta), None, None
    else:
        raise TypeError(f"field: expected an ObservationData or SimulatedField, got {type(field).__name__}")
    if data.psf_images is None:
        raise ValueError(f"{path}: the observation has no PSF; a deconvjax file needs one")
    data = dataclasses.replace(data, meta=meta)
    return _write(path, data, "VAR", _cube(data.variance, "variance"), truth, sources)


def _write(path, data: ObservationData, noise_name: str, noise: np.ndarray, truth, source_images) -> Path:
    """Write ``data`` with ``noise`` (its ``VAR`` or ``WHT`` planes) and the truth parts."""
    img = _cube(data.images, "images")
    bands, nb = data.bands, img.shape[0]
    if len(set(bands)) != nb:
        raise ValueError(f"bands: names must be unique, got {bands}")
    m = np.asarray(data.mask, np.uint8)
    psf = _cube(data.psf_images, "psf_images")
    wcs, pixel_scale = data.wcs, data.pixel_scale
    if pixel_scale is None and wcs is not None:
        pixel_scale = float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600)
    if data.psf_pixel_scale is not None and pixel_scale is not None and not np.isclose(
            data.psf_pixel_scale, pixel_scale):
        raise ValueError(f"psf_pixel_scale: a deconvjax file holds PSFs at the image pixel scale "
                         f"({pixel_scale}), got {data.psf_pixel_scale}")

    prim = fits.PrimaryHDU()
    h = prim.header
    h["DJFORMAT"] = (FORMAT, "deconvjax observation file")
    h["DJVERS"] = VERSION
    h["NBAND"] = nb
    for k, b in enumerate(bands):
        h[f"BAND{k + 1}"] = b
    if pixel_scale is not None:
        h["PIXSCALE"] = (float(pixel_scale), "arcsec / pixel")
    if data.bunit is not None:
        h["BUNIT"] = data.bunit
    h["NOISE"] = (noise_name, "VAR: variance planes; WHT: inverse-variance planes")
    for key, value, comment in data.noise_cards():
        h[key] = (value, comment)
    for k, v in data.meta.items():
        h[k[:8].upper()] = v

    wh = _wcs_header(wcs)
    hdus = [prim]
    for k, b in enumerate(bands):
        for name, arr in (("SCI", img[k]), (noise_name, noise[k]), ("MASK", m[k])):
            hh = _image_hdu(arr, header=wh.copy(), name=name, ver=k + 1)
            hh.header["BAND"] = b
            if name == "SCI" and data.bunit is not None:
                hh.header["BUNIT"] = data.bunit
            hdus.append(hh)
        ph = _image_hdu(psf[k], name="PSF", ver=k + 1)
        ph.header["BAND"] = b
        if pixel_scale is not None:
            ph.header["PIXSCALE"] = (float(pixel_scale), "arcsec / pixel of the PSF sampling")
        hdus.append(ph)
    if truth is not None:
        if not isinstance(truth, Table):
            raise TypeError(f"truth: expected an astropy Table, got {type(truth).__name__}")
        hdus.append(_table_to_hdu(truth, "TRUTH"))
    if source_images is not None:
        src = np.asarray(source_images, np.float32)
        if src.ndim != 4 or src.shape[1:] != img.shape:
            raise ValueError(
                f"source_images: expected (source, {', '.join(map(str, img.shape))}), "
                f"got {src.shape}"
            )
        sh = _image_hdu(src, header=wh.copy(), name="SOURCES")
        hdus.append(sh)
    path = Path(path)
    _atomic_write_hdul(path, fits.HDUList(hdus))
    return path


def write_truth(path, table: Table) -> Path:
    """Write a truth table as ECSV (``.ecsv``) or FITS (``.fits``/``.fit``), atomically."""
    if not isinstance(table, Table):
        raise TypeError(f"table: expected an astropy Table, got {type(table).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ecsv":
        atomic_write(path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
    elif suffix in (".fits", ".fit", ".fts"):
        _atomic_write_hdul(path, fits.HDUList([fits.PrimaryHDU(), _table_to_hdu(table, "TRUTH")]))
    else:
        raise ValueError(f"path: expected a .ecsv or .fits file name, got {path.name!r}")
    return path


def read_truth(path) -> Table:
    """Read a truth table written by `write_truth` (or any ECSV / FITS table)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".ecsv":
        try:
            return Table.read(path, format="ascii.ecsv")
        except Exception as e:  # astropy raises many kinds here
            raise ValueError(f"{path}: not a readable ECSV table: {e}") from e
    with _open(path) as hdul:
        h = _find(hdul, path, "TRUTH", required=False)
        if h is None:
            h = next((x for x in hdul if isinstance(x, fits.BinTableHDU)), None)
            if h is None:
                raise ValueError(f"{path}: missing HDU 'TRUTH' (and no other table HDU)")
        return _hdu_to_table(h)


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------

def _wcs_from(header, path, what) -> WCS | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header)
    except Exception as e:
        raise ValueError(f"{path}: invalid WCS in {what}: {e}") from e
    if not w.has_celestial:
        return None
    return w.celestial


def _noise_to_weights(noise, kind):
    noise = noise.astype(np.float64)
    if kind == "WHT":
        w = np.where(np.isfinite(noise) & (noise > 0), noise, 0.0)
    else:
        var = noise**2 if kind == "RMS" else noise
        with np.errstate(divide="ignore"):
            w = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0)
    return w


def _variance_from(noise, kind):
    if kind == "VAR":
        return noise
    if kind == "RMS":
        return noise**2
    with np.errstate(divide="ignore"):
        return np.where(noise > 0, 1.0 / noise, np.inf).astype(noise.dtype)


def is_observation_file(path) -> bool:
    """Whether ``path`` is a deconvjax observation file (``DJFORMAT`` in its primary
    header); False for other FITS files and for files that are not readable FITS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fits.getheader(path, 0).get("DJFORMAT") == FORMAT
    except Exception:  # noqa: BLE001 - anything unreadable is not one
        return False


def _read_file(path, with_truth: bool = True) -> tuple[ObservationData, Table | None, np.ndarray | None]:
    """A deconvjax observation file: its observation, truth table and source images (None
    where absent, or not parsed nor checked when ``with_truth`` is False)."""
    path = Path(path)
    # Without the truth, its table and per-source images are not read (in a survey run
    # they would be most of the reading time).
    with _open(path, skip=() if with_truth else ("TRUTH", "SOURCES")) as hdul:
        h0 = hdul[0].header
        if h0.get("DJFORMAT") != FORMAT:
            raise ValueError(
                f"{path}: not a deconvjax observation file (primary header DJFORMAT is "
                f"{h0.get('DJFORMAT')!r}); use read_images for plain FITS images or cubes"
            )
        try:
            nb = int(h0["NBAND"])
            bands = tuple(str(h0[f"BAND{k + 1}"]) for k in range(nb))
        except KeyError as e:
            raise ValueError(f"{path}: primary header lacks {e}") from None
        noise_kind = h0.get("NOISE", "VAR")
        index = _hdu_index(hdul)
        sci, noise, mask, psf = [], [], [], []
        wcs = None
        for k, b in enumerate(bands):
            hs = _find(hdul, path, "SCI", k + 1, index=index)
            hn = _find(hdul, path, noise_kind, k + 1, index=index)
            hm = _find(hdul, path, "MASK", k + 1, index=index)
            hp = _find(hdul, path, "PSF", k + 1, index=index)
            for hh in (hs, hn, hm, hp):
                if hh.data is None:
                    raise ValueError(f"{path}: HDU {hh.name!r} (EXTVER {k + 1}) holds no data")
                if hh.header.get("BAND", b) != b:
                    raise ValueError(
                        f"{path}: HDU {hh.name!r} (EXTVER {k + 1}) is band "
                        f"{hh.header.get('BAND')!r}, expected {b!r}"
                    )
            shape0 = sci[0].shape if sci else hs.data.shape
            if hs.data.ndim != 2 or hs.data.shape != shape0:
                raise ValueError(
                    f"{path}: SCI of band {b!r} has shape {hs.data.shape}, expected {shape0}"
                )
            for hh in (hn, hm):
                if hh.data.shape != hs.data.shape:
                    raise ValueError(
                        f"{path}: {hh.name} of band {b!r} has shape {hh.data.shape} but SCI has "
                        f"{hs.data.shape}"
                    )
            if psf and hp.data.shape != psf[0].shape:
                raise ValueError(
                    f"{path}: PSF of band {b!r} has shape {hp.data.shape}, expected {psf[0].shape}"
                )
            for hh in (hs, hn, hm, hp):  # after the shape checks, which say more
                _check_digest(hh, path)
            sci.append(hs.data)
            noise.append(hn.data)
            mask.append(hm.data)
            psf.append(hp.data)
            if k == 0:
                wcs = _wcs_from(hs.header, path, "SCI (EXTVER 1)")
        images = np.stack(sci).astype(np.float32, copy=False)
        noise = np.stack(noise)
        m = np.stack(mask).astype(bool)
        weights = np.where(m, 0.0, _noise_to_weights(noise, noise_kind))
        variance = _variance_from(noise, noise_kind)
        truth = _hdu_to_table(hdul["TRUTH"]) if with_truth and "TRUTH" in hdul else None
        src = None
        if with_truth and "SOURCES" in hdul:
            _check_digest(hdul["SOURCES"], path)
            src = hdul["SOURCES"].data
            src = None if src is None else src.astype(np.float32)  # native byte order
            if src is None or src.ndim != 4 or src.shape[1:] != images.shape:
                raise ValueError(
                    f"{path}: SOURCES has shape {None if src is None else src.shape}, expected "
                    f"(source, {', '.join(map(str, images.shape))})"
                )
        meta = {k: h0[k] for k in h0 if k in ("SURVEY", "SEED")}
        ps = h0.get("PIXSCALE")
        bunit = h0.get("BUNIT")
        data = ObservationData(
            images=images,
            weights=weights,
            variance=variance,
            mask=m,
            psf_images=np.stack(psf),
            bands=bands,
            wcs=wcs,
            pixel_scale=None if ps is None else float(ps),
            bunit=None if bunit is None else str(bunit),
            meta=meta,
            path=str(path),
            psf_center="pixel",
            noise_source=str(h0.get("NOISESRC", f"given: deconvjax observation file ({noise_kind})")),
        )
        return data, truth, src



# ---------------------------------------------------------------------------------------
# A fast path for reading deconvjax files whole (survey runs read millions of them)
# ---------------------------------------------------------------------------------------

_BLOCK = 2880
_BITPIX = {8: np.dtype("u1"), 16: np.dtype(">i2"), 32: np.dtype(">i4"), 64: np.dtype(">i8"),
           -32: np.dtype(">f4"), -64: np.dtype(">f8")}


class _NotPlain(Exception):
    """The file is not a plain, intact deconvjax file: read it with astropy, whose checks
    name the problem."""


def _card_value(raw: bytes):
    """The value of a card's ``= `` field: a string, bool, int or float."""
    v = raw.decode("ascii").strip()
    if v.startswith("'"):
        # A FITS string: '' is a quote; trailing blanks are not significant.
        out, i = [], 1
        while True:
            j = v.find("'", i)
            if j < 0:
                raise _NotPlain
            out.append(v[i:j])
            if v[j + 1:j + 2] == "'":
                out.append("'")
                i = j + 2
                continue
            return "".join(out).rstrip()
    v = v.split("/", 1)[0].strip()
    if v in ("T", "F"):
        return v == "T"
    try:
        return int(v)
    except ValueError:
        try:
            return float(v.replace("D", "E"))
        except ValueError:
            raise _NotPlain from None


def _scan_hdus(buf: bytes) -> list[tuple[dict, bytes, int, int]]:
    """Every HDU of a FITS file: ``(raw cards {keyword: value field}, header bytes, data
    offset, data bytes)``, found by walking the 2880-byte blocks of the headers. Values
    are parsed on use (`_card_value`)."""
    hdus, pos, n = [], 0, len(buf)
    if n % _BLOCK:
        raise _NotPlain  # truncated or padded: astropy says which
    while pos < n:
        cards, start, end = {}, pos, False
        while not end:
            if pos + _BLOCK > n:
                raise _NotPlain
            block = buf[pos:pos + _BLOCK]
            pos += _BLOCK
            for i in range(0, _BLOCK, 80):
                key = block[i:i + 8].rstrip()
                if key == b"END":
                    end = True
                    break
                if block[i + 8:i + 10] == b"= ":
                    cards.setdefault(key.decode("ascii", "replace"), block[i + 10:i + 80])
        header = buf[start:pos]
        naxis = int(_card_value(cards["NAXIS"])) if "NAXIS" in cards else 0
        size = 0
        if naxis:
            size = abs(int(_card_value(cards["BITPIX"]))) // 8
            for k in range(1, naxis + 1):
                size *= int(_card_value(cards[f"NAXIS{k}"]))
            size = (size + int(_card_value(cards.get("PCOUNT", b"0")))) * int(_card_value(cards.get("GCOUNT",
                                                                                                    b"1")))
        if pos + size > n:
            raise _NotPlain
        hdus.append((cards, header, pos, size))
        pos += -(-size // _BLOCK) * _BLOCK
    return hdus


def _plain_image(buf: bytes, hdu) -> np.ndarray:
    """The data of an image HDU without scaling, checked against its ``DJHASH``."""
    cards, _, offset, size = hdu
    if any(k in cards for k in ("BZERO", "BSCALE", "BLANK", "ZIMAGE")):
        raise _NotPlain
    dtype = _BITPIX.get(int(_card_value(cards["BITPIX"])))
    naxis = int(_card_value(cards["NAXIS"]))
    if dtype is None or naxis == 0:
        raise _NotPlain
    shape = tuple(int(_card_value(cards[f"NAXIS{k}"])) for k in range(naxis, 0, -1))
    raw = buf[offset:offset + size]
    want = cards.get("DJHASH")
    # The file's bytes are the big-endian bytes `_digest` hashes.
    if want is not None and hashlib.sha256(raw).hexdigest()[:16] != _card_value(want):
        raise _NotPlain
    return np.frombuffer(raw, dtype).reshape(shape)


def _without_card(header: bytes, key: bytes) -> bytes:
    """``header`` with the card of ``key`` (8 bytes, blank-padded) blanked."""
    for i in range(0, len(header), 80):
        if header[i:i + 8] == key:
            return header[:i] + b" " * 80 + header[i + 80:]
    return header


@functools.lru_cache(maxsize=64)
def _wcs_of_header(header: bytes, path: str):
    return _wcs_from(fits.Header.fromstring(header.decode("ascii")), path, "SCI (EXTVER 1)")


def _cached_wcs(header: bytes):
    """The celestial WCS of a SCI header, built once per distinct header (building one
    takes longer than reading a small cutout; cutouts of one survey tile share theirs)
    and copied for each caller (a WCS is mutable)."""
    w = _wcs_of_header(header, "")
    return None if w is None else w.deepcopy()


def _read_arrays_fast(path) -> ObservationData:
    """`read_arrays` without astropy's HDU objects: the file read in one call, its
    headers walked, only the HDUs the observation needs decoded (astropy parses every
    header and builds every HDU: most of the time of reading a small cutout). Raises
    `_NotPlain` for anything but an intact deconvjax file of plain arrays, which
    `read_arrays` then reads with astropy."""
    with open(path, "rb") as f:
        buf = f.read()
    try:
        hdus = _scan_hdus(buf)
        h0 = {k: _card_value(v) for k, v in hdus[0][0].items()}
        if h0.get("DJFORMAT") != FORMAT or any(isinstance(v, str) and v.endswith("&") for v in h0.values()):
            raise _NotPlain  # not ours, or long strings (CONTINUE cards): astropy reads them
        nb = int(h0["NBAND"])
        bands = tuple(str(h0[f"BAND{k + 1}"]) for k in range(nb))
        noise_kind = h0.get("NOISE", "VAR")
        index = {}
        for h in hdus[1:]:
            name = _card_value(h[0]["EXTNAME"]).upper() if "EXTNAME" in h[0] else ""
            ver = int(_card_value(h[0]["EXTVER"])) if "EXTVER" in h[0] else 1
            index.setdefault((name, ver), h)
        planes: dict = {"SCI": [], noise_kind: [], "MASK": [], "PSF": []}
        for k, b in enumerate(bands):
            for name in planes:
                h = index[(name, k + 1)]
                if "BAND" in h[0] and _card_value(h[0]["BAND"]) != b:
                    raise _NotPlain
                planes[name].append(_plain_image(buf, h))
        sci = planes["SCI"]
        if sci[0].ndim != 2 or any(a.shape != sci[0].shape for name in ("SCI", noise_kind, "MASK")
                                   for a in planes[name]):
            raise _NotPlain
        if any(a.shape != planes["PSF"][0].shape for a in planes["PSF"]):
            raise _NotPlain
        wcs = _cached_wcs(_without_card(index[("SCI", 1)][1], b"DJHASH  "))
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):
        raise _NotPlain from None
    noise = np.stack(planes[noise_kind])
    m = np.stack(planes["MASK"]).astype(bool)
    ps, bunit = h0.get("PIXSCALE"), h0.get("BUNIT")
    return ObservationData(
        images=np.stack(sci).astype(np.float32),
        weights=np.where(m, 0.0, _noise_to_weights(noise, noise_kind)),
        variance=_variance_from(noise, noise_kind),
        mask=m,
        psf_images=np.stack(planes["PSF"]),
        bands=bands,
        wcs=wcs,
        pixel_scale=None if ps is None else float(ps),
        bunit=None if bunit is None else str(bunit),
        meta={k: h0[k] for k in h0 if k in ("SURVEY", "SEED")},
        path=str(Path(path)),
        psf_center="pixel",
        noise_source=str(h0.get("NOISESRC", f"given: deconvjax observation file ({noise_kind})")),
    )


def read_arrays(path) -> ObservationData:
    """Read a file written by `write_observation` / `write_field` into an `ObservationData`
    (a simulated field's truth parts are left out: `read_field` reads them).

    Raises ValueError naming the file and the problem for a missing HDU, a corrupted file or
    arrays of mismatched shapes.
    """
    # An intact file of plain arrays is read without astropy's HDU machinery; anything
    # else (and every error, to be named) goes through astropy. The truth table and source
    # images are not parsed either way (a third of the time of reading a simulated field,
    # which matters to survey runs reading millions of them).
    if Path(path).is_file():
        try:
            return _read_arrays_fast(path)
        except _NotPlain:
            pass
    return _read_file(path, with_truth=False)[0]


def read_observation(path, frame=None, **kwargs):
    """Read a deconvjax observation file into a `deconvjax.Observation`."""
    return read_arrays(path).to_observation(frame, **kwargs)


def read_field(path) -> SimulatedField:
    """Read a file written by `write_field` from a `SimulatedField` back into one."""
    data, truth, src = _read_file(path)
    if truth is None or src is None:
        raise ValueError(f"{path}: missing HDU 'TRUTH' or 'SOURCES'; not a simulated field")
    meta = dict(data.meta)
    survey, seed = str(meta.pop("SURVEY", "")), int(meta.pop("SEED", -1))
    return SimulatedField(dataclasses.replace(data, meta=meta), truth, src, survey=survey, seed=seed)


# ---------------------------------------------------------------------------------------
# Common real layouts
# ---------------------------------------------------------------------------------------

def _is_single(spec) -> bool:
    """Whether ``spec`` is one path or one ``(path, hdu)`` pair (not a list of them)."""
    return isinstance(spec, (str, os.PathLike)) or (
        isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], (int, str))
        and isinstance(spec[0], (str, os.PathLike)) and not isinstance(spec[1], os.PathLike)
        and not str(spec[1]).lower().endswith((".fits", ".fit", ".fz", ".gz"))
    )


#: Extension names of noise maps in an image file, and the noise they hold (the
#: ``noise_extensions`` option of `read_images`).
NOISE_EXTENSIONS = {"VARIANCE": "variance", "VAR": "variance", "WEIGHT": "weight", "WHT": "weight",
                    "IVAR": "weight", "RMS": "rms", "SIGMA": "rms", "ERR": "rms"}


def _noise_extension(path) -> tuple[str, int] | None:
    """``(kind, index)`` of the first HDU of ``path`` named as a noise map
    (`NOISE_EXTENSIONS`) holding a 2-D or 3-D array, or None."""
    with _open(path) as hdul:
        for i, h in enumerate(hdul):
            kind = NOISE_EXTENSIONS.get(str(h.name).upper())
            if kind and h.is_image and h.data is not None and h.data.ndim in (2, 3):
                return kind, i
    return None


def _read_plane_or_cube(spec, name: str, hdu, skip=()) -> tuple[np.ndarray, list, str]:
    """Read a path (cube or image) or a list of paths (one image each) into (band, y, x).

    Each path may also be a ``(path, hdu)`` pair, to pick an extension per file (e.g. the
    ``SCI`` and ``WHT`` extensions of one HST drizzled file). Without an HDU the first one
    holding an image is read, skipping HDUs whose names are in ``skip``.
    """
    paths = [spec] if _is_single(spec) else list(spec)
    if not paths:
        raise ValueError(f"{name}: expected a path or a non-empty list of paths")
    planes = []
    headers = []
    names = []
    for entry in paths:
        this_hdu = hdu
        if isinstance(entry, tuple):
            if len(entry) != 2:
                raise ValueError(f"{name}: expected a path or (path, hdu), got {entry!r}")
            entry, this_hdu = entry
        p = Path(entry)
        names.append(p)
        hdu_ = this_hdu
        with _open(p) as hdul:
            if hdu_ is None:
                h = next((x for x in hdul if x.data is not None and x.is_image
                          and x.data.ndim >= 2 and str(x.name).upper() not in skip), None)
                if h is None:
                    raise ValueError(f"{p}: missing image HDU (no HDU holds a 2-D or 3-D array)")
            else:
                try:
                    h = hdul[hdu_]
                except (KeyError, IndexError):
                    raise ValueError(f"{p}: missing HDU {hdu_!r}") from None
                if h.data is None:
                    raise ValueError(f"{p}: HDU {hdu_!r} holds no data")
            a = np.asarray(h.data)
            if a.ndim not in (2, 3):
                raise ValueError(f"{p}: {name} must be (y, x) or (band, y, x), got shape {a.shape}")
            if len(paths) > 1 and a.ndim != 2:
                raise ValueError(f"{p}: one file per band must hold a (y, x) image, got {a.shape}")
            planes.append(a if a.ndim == 3 else a[None])
            hdr = h.header.copy()
            # Filter names, units and exposure often live in the primary header of
            # multi-extension files.
            for key in ("FILTER", "BAND", "FILTER1", "FILTER2", *HEADER_KEYS):
                if key not in hdr and key in hdul[0].header:
                    hdr[key] = hdul[0].header[key]
            headers.append(hdr)
    shapes = {pl.shape[1:] for pl in planes}
    if len(shapes) != 1:
        detail = ", ".join(f"{p.name}: {pl.shape[1:]}" for p, pl in
                           zip(names, planes, strict=True))
        raise ValueError(f"{name}: files have mismatched shapes ({detail})")
    return np.concatenate(planes).astype(np.float64), headers, str(names[0])


_NOISE_KIND = {"variance": "VAR", "weight": "WHT", "rms": "RMS"}


def _checked_noise(noise, name: str, npath: str, bad_data) -> None:
    """The checks `deconvjax.Observation` makes of a noise map, naming the file: no
    negative values, no NaN on a pixel that has data, some pixel with information."""
    where = ~bad_data
    nan = np.isnan(noise) & where
    if nan.any():
        raise NoiseMapError(
            f"{npath}: {name} map contains NaN at {int(nan.sum())} pixels that have data "
            "(mark pixels without data with 0 weight or infinite variance, or mask them)", name,
        )
    neg = (noise < 0) & where
    if neg.any():
        raise NoiseMapError(
            f"{npath}: {name} map has {int(neg.sum())} negative pixels (min {float(np.nanmin(noise[neg])):.4g}); "
            f"a {name} map must be non-negative" + (" (0 marks a masked pixel)" if name == "weight" else ""), name,
        )
    if name == "weight" and np.isinf(noise[where]).any():
        raise NoiseMapError(f"{npath}: weight map contains inf (zero variance)", name)


def _psf_cropped_to(psf: np.ndarray, image_shape, path, same_sampling: bool) -> np.ndarray:
    """PSF planes ``(band, h, w)`` larger than the images cut to the largest odd box that
    fits them, centred on each PSF's peak, with a warning giving the share of the PSF's
    light left out (it is then part of the photometric calibration). PSFs sampled
    differently from the images (``same_sampling`` False) are left alone."""
    h, w = psf.shape[-2:]
    ny, nx = image_shape
    if not same_sampling or (h <= ny and w <= nx):
        return psf
    bh, bw = min(h, ny - 1 + ny % 2), min(w, nx - 1 + nx % 2)
    out = np.zeros((psf.shape[0], bh, bw), psf.dtype)
    lost = []
    for b, plane in enumerate(psf):
        cy, cx = np.unravel_index(np.argmax(plane), plane.shape)
        y0 = int(np.clip(cy - bh // 2, 0, h - bh))
        x0 = int(np.clip(cx - bw // 2, 0, w - bw))
        out[b] = plane[y0 : y0 + bh, x0 : x0 + bw]
        total = float(plane.sum())
        lost.append(1.0 - float(out[b].sum()) / total if total > 0 else 0.0)
    warnings.warn(
        f"{path}: psf of {h}x{w} pixels is larger than the images ({ny}x{nx}); cropped to {bh}x{bw} around "
        f"its peak, leaving out {100 * max(lost):.2g}% of its light",
        UserWarning,
        stacklevel=3,
    )
    return out


def read_images(
    images,
    *,
    psf=None,
    variance=None,
    weight=None,
    rms=None,
    mask=None,
    bands: Sequence[str] | None = None,
    hdu: int | str | None = None,
    psf_pixel_scale: float | None = None,
    estimate_noise_if_missing: bool = True,
    noise_extensions: bool = False,
    crop_psf: bool = True,
) -> ObservationData:
    """Read FITS images into `ObservationData`: a deconvjax observation file whole, or the
    common real layouts.

    **Arguments:**

    - `images`: a deconvjax observation file (`write_observation`, `write_field`: read
      with its own PSF, noise and mask, `read_arrays`; the other arguments but
      ``bands`` must then be left out), one (band, y, x) cube file, a single-band image
      file, or a list of image files (one per band). Any path may be a ``(path, hdu)``
      pair to pick its extension. The WCS comes from the first image header
      (celestial axes), ``BUNIT`` from it or the primary header.
    - `psf`: the same layouts; a single (h, w) PSF is used for all bands. PSF images larger
      than the images are cropped around their peak with a warning (``crop_psf``
      False: left as they are, for a caller that prepares PSFs itself).
    - `variance` | `weight` | `rms`: the noise (at most one), same layouts, or a number (the
      same at every pixel). Negative values, NaN on pixels with data, or no pixel
      with information raise `NoiseMapError` (a ValueError); 0 weight or infinite
      variance masks a pixel.
    - `mask`: same layouts, nonzero marks bad pixels.
    - `bands`: band names (default: FILTER/BAND keywords, else "0", "1", ...).
    - `hdu`: HDU index or name to read in every file (default: the first with an image).
    - `psf_pixel_scale`: arcsec/pixel of the PSF sampling when different from the images'.
    - `estimate_noise_if_missing`: without a noise map, estimate it from the images
      (`deconvjax.io.noise.estimate_noise`: background rms, plus the sources' Poisson
      noise where BUNIT / EXPTIME / GAIN allow) and warn saying so; False: raise.
      The result's ``noise_source`` and ``noise_estimate`` record what was done.
    - `noise_extensions`: without a noise map given, first look in the (single) image file
      for an extension named as one (`NOISE_EXTENSIONS`: ``VARIANCE``, ``WEIGHT``,
      ``RMS``, ``ERR``, ...); such extensions are never read as the image.

    **Returns:**

    The `ObservationData`: images (band, y, x) float32, NaN or inf pixels set to 0 and
    masked; weights and variance (band, y, x); psf_images (band, h, w) or None.
    """
    if _is_single(images) and not isinstance(images, tuple) and is_observation_file(images):
        extra = [n for n, v in (("psf", psf), ("variance", variance), ("weight", weight), ("rms", rms),
                                ("mask", mask), ("hdu", hdu), ("psf_pixel_scale", psf_pixel_scale))
                 if v is not None]
        if extra:
            raise ValueError(f"{images}: a deconvjax observation file holds its own PSF, noise and "
                             f"mask; leave out {', '.join(extra)}")
        data = read_arrays(images)
        return data if bands is None else dataclasses.replace(data, bands=tuple(bands))
    skip = tuple(NOISE_EXTENSIONS) if noise_extensions else ()
    img, headers, first = _read_plane_or_cube(images, "images", hdu, skip)
    header = headers[0]
    nb = img.shape[0]
    given = [(n, v) for n, v in (("variance", variance), ("weight", weight), ("rms", rms))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"variance, weight, rms: give at most one, got {[n for n, _ in given]}")
    if not given and noise_extensions and _is_single(images):
        found = _noise_extension(images[0] if isinstance(images, tuple) else images)
        if found is not None:
            given = [(found[0], (images[0] if isinstance(images, tuple) else images, found[1]))]
    if mask is not None:
        m, _, mpath = _read_plane_or_cube(mask, "mask", hdu)
        if m.shape[0] == 1 and nb > 1:
            m = np.broadcast_to(m, img.shape)
        if m.shape != img.shape:
            raise ValueError(f"{mpath}: mask has shape {m.shape} but images have {img.shape}")
        m = m != 0
    else:
        m = np.zeros(img.shape, bool)
    bad = ~np.isfinite(img)
    m = m | bad
    if bands is None:
        def band_of(h, k):
            for key in ("FILTER", "BAND", "FILTER1", "FILTER2"):
                v = str(h.get(key, "")).strip()
                if v and not v.upper().startswith("CLEAR"):
                    return v
            return str(k)

        if len(headers) == nb:  # one file per band (or a single-band image)
            bands = tuple(band_of(h, k) for k, h in enumerate(headers))
        else:
            bands = tuple(str(k) for k in range(nb))
    bands = tuple(bands)
    if len(bands) != nb:
        raise ValueError(f"bands: {len(bands)} names {bands} for {nb} image planes in {first}")
    estimate = None
    if given:
        name, spec = given[0]
        if isinstance(spec, int | float | np.number) and not isinstance(spec, bool):
            noise, npath = np.full(img.shape, float(spec)), f"{name}={spec}"
        else:
            try:
                noise, _, npath = _read_plane_or_cube(spec, name, hdu)
            except ValueError as err:
                raise NoiseMapError(str(err), name) from None
        if noise.shape[0] == 1 and nb > 1:
            noise = np.broadcast_to(noise, img.shape)
        if noise.shape != img.shape:
            raise NoiseMapError(f"{npath}: {name} has shape {noise.shape} but images have {img.shape}", name)
        _checked_noise(noise, name, npath, m)
        kind = _NOISE_KIND[name]
        weights = _noise_to_weights(noise, kind)
        var = _variance_from(noise, kind)
        empty = [b for k, b in enumerate(bands) if not np.any(np.where(m[k], 0.0, weights[k]) > 0)]
        if empty:
            raise NoiseMapError(
                f"{npath}: the {name} map leaves no pixel with information in band(s) {empty} "
                "(all weights 0 or variances infinite)", name,
            )
        source = f"given: {name} map"
    elif estimate_noise_if_missing:
        var, estimate = estimate_noise(np.where(m, np.nan, img), headers, mask=m, bands=bands)
        with np.errstate(divide="ignore"):
            weights = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0)
        source = estimate.method
        warnings.warn(f"{first}: {estimate.summary()}", UserWarning, stacklevel=2)
    else:
        where = (" and the file has no " + " / ".join(sorted(set(NOISE_EXTENSIONS) - {"VAR", "WHT"}))
                 + " extension") if noise_extensions else ""
        raise NoiseMapError(f"{first}: no noise map (variance, weight or rms) given{where}", "variance")
    weights = np.where(m, 0.0, weights)
    img = np.where(bad, 0.0, img)
    psf_arr = None
    if psf is not None:
        psf_arr, _, ppath = _read_plane_or_cube(psf, "psf", hdu)
        if psf_arr.shape[0] == 1 and nb > 1:
            psf_arr = np.repeat(psf_arr, nb, axis=0)
        if psf_arr.shape[0] != nb:
            raise ValueError(f"{ppath}: psf has {psf_arr.shape[0]} planes but images have {nb}")
        if not np.all(np.isfinite(psf_arr)):
            raise ValueError(f"{ppath}: psf contains NaN or inf")
        if crop_psf:
            psf_arr = _psf_cropped_to(psf_arr, img.shape[1:], ppath, psf_pixel_scale is None)
    wcs = _wcs_from(header, first, "the image header")
    ps = None
    if wcs is not None:
        ps = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600)
    else:
        for key in ("PIXSCALE", "PIXSCAL1", "SECPIX", "PIXSIZE"):
            value = header.get(key)
            if isinstance(value, int | float) and np.isfinite(value) and value > 0:
                ps = float(value)
                break
    return ObservationData(
        images=img.astype(np.float32),
        weights=weights,
        variance=var,
        mask=m,
        psf_images=psf_arr,
        bands=bands,
        wcs=wcs,
        pixel_scale=ps,
        psf_pixel_scale=psf_pixel_scale,
        bunit=None if header.get("BUNIT") is None else str(header["BUNIT"]).strip(),
        path=first,
        noise_source=source,
        noise_estimate=estimate,
    )
