"""FITS input and output of observations, simulated fields and truth tables.

The deconvjax observation file (``DJFORMAT = 'deconvjax-observation'`` in the primary header):

- primary HDU: no data; ``NBAND``, ``BAND1`` ... ``BANDn`` (band names in band-axis order),
  ``PIXSCALE`` (arcsec/pixel), ``BUNIT``, optional ``SURVEY`` and ``SEED``;
- for each band ``k`` (``EXTVER = k + 1``, ``BAND`` keyword = its name):
  ``SCI`` float32 image with the celestial WCS in its header, ``VAR`` float32 variance (or
  ``WHT`` inverse variance), ``MASK`` uint8 (1 = bad pixel), ``PSF`` float32 (odd-sized,
  centred, unit sum, ``PIXSCALE`` of its sampling);
- optional ``TRUTH`` binary table (the truth catalog) and ``SOURCES`` image
  (source, band, y, x) float32 (noise-free image of each source alone).

Every image HDU carries ``DJHASH``, a SHA-256 prefix of its data, checked on reading so that
flipped bits in a data unit are reported as corruption (FITS CHECKSUM cards would also do, but
astropy stamps them with the current date, which would break byte-identical files).
Writes are atomic (temp file then ``os.replace``) and deterministic (no dates), so the same
simulation seed gives byte-identical files.

`read_images` accepts the common real layouts: one FITS image per band (a list of files), or
one (band, y, x) cube, each with optional PSF and variance / weight / RMS images or cubes.
Without a noise map it estimates the noise from the images (`deconvjax.io.noise`) and says
so; a bad noise map (negative, NaN, wrong shape, all masked) is a `NoiseMapError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from .noise import HEADER_KEYS, NoiseEstimate, estimate_noise

FORMAT = "deconvjax-observation"
VERSION = 1


class NoiseMapError(ValueError):
    """A noise map (variance, weight or rms) that cannot be used; ``option`` names which
    (``"variance"``, ``"weight"`` or ``"rms"``)."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


# ---------------------------------------------------------------------------------------
# Container
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class ObservationData:
    """Arrays of an observation as read from disk (numpy, host side).

    Attributes:
        images: (band, y, x) float32 data.
        weights: (band, y, x) inverse variances, 0 where masked or unknown.
        variance: (band, y, x) variance, inf where the weight is 0.
        mask: (band, y, x) bool, True for bad pixels.
        psf_images: (band, h, w) PSF images or None.
        bands: band names.
        wcs: celestial astropy WCS or None.
        pixel_scale: arcsec per pixel (from PIXSCALE or the WCS) or None.
        psf_pixel_scale: arcsec per pixel of the PSF images (None: same as the images).
        truth: truth Table or None; source_images: (source, band, y, x) or None.
        meta: other header values (survey, seed, ...); path: where it was read from.
        psf_center: how `ArrayPSF` finds the PSF centre: "pixel" for deconvjax files (odd,
            centred PSFs), "centroid" for foreign PSF images.
        noise_source: where the noise came from (``"given: variance map"``, ...,
            or the estimate's method); noise_estimate: the `NoiseEstimate` where the noise
            was estimated from the images, else None.
    """

    images: np.ndarray
    weights: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    psf_images: np.ndarray | None
    bands: tuple[str, ...]
    wcs: WCS | None = None
    pixel_scale: float | None = None
    psf_pixel_scale: float | None = None
    truth: Table | None = None
    source_images: np.ndarray | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    path: str = ""
    psf_center: str = "centroid"
    noise_source: str = ""
    noise_estimate: NoiseEstimate | None = None

    def noise_cards(self) -> list[tuple[str, object, str]]:
        """FITS cards saying where the noise came from: ``NOISESRC`` and, for an
        estimate, its values per band (`NoiseEstimate.header_cards`)."""
        if self.noise_estimate is not None:
            return self.noise_estimate.header_cards()
        if self.noise_source:
            return [("NOISESRC", self.noise_source, "origin of the weights")]
        return []

    def frame(self, psf=None):
        """A `deconvjax.Frame` on this observation's grid, with model PSF ``psf`` (default:
        the widest Gaussian that every band's PSF can be matched to,
        `deconvjax.psf.model_psf_for`; an undersampled space PSF gets a narrow one)."""
        from deconvjax.frame import Frame
        from deconvjax.psf import ArrayPSF
        from deconvjax.psf.matching import model_psf_for

        ps = 1.0 if self.pixel_scale is None else self.pixel_scale
        if psf is None and self.psf_images is not None:
            psf_scale = self.psf_pixel_scale or ps
            psf = model_psf_for(ArrayPSF(self.psf_images, pixel_scale=psf_scale, center=self.psf_center), ps)
        return Frame(self.bands, tuple(self.images.shape[1:]), pixel_scale=ps, wcs=self.wcs,
                     psf=psf)

    def to_observation(self, frame=None, **kwargs):
        """A `deconvjax.Observation` (frame defaults to `frame()`); kwargs go to Observation."""
        from deconvjax.observation import Observation
        from deconvjax.psf import ArrayPSF

        if self.psf_images is None:
            raise ValueError(f"{self.path or 'observation'}: no PSF; an Observation needs one")
        if frame is None:
            frame = self.frame()
        ps = self.psf_pixel_scale or self.pixel_scale
        psf = ArrayPSF(self.psf_images, pixel_scale=ps, center=self.psf_center)
        return Observation(self.images, frame=frame, psf=psf, weights=self.weights,
                           bands=self.bands, wcs=self.wcs, pixel_scale=self.pixel_scale,
                           **kwargs)


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
def _open(path):
    """Open a FITS file fully (no lazy reads), turning failures into ValueError naming it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            warnings.filterwarnings("error", message=".*[Tt]runcated.*")
            hdul = fits.open(p, memmap=False, lazy_load_hdus=False)
            for h in hdul:
                _ = h.data  # force reading every array now, where errors are caught
    except (OSError, ValueError, TypeError, IndexError, KeyError, Warning) as e:
        raise ValueError(f"{p}: not a readable FITS file (corrupted or truncated?): {e}") from e
    try:
        yield hdul
    finally:
        hdul.close()


def _find(hdul, path, name: str, ver: int | None = None, required: bool = True):
    key = (name, ver) if ver is not None else name
    try:
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
    """Write one observation in the deconvjax layout (see module docstring).

    Args:
        images: (band, y, x) data; stored as float32.
        psf_images: (band, h, w) PSFs at the image pixel scale.
        bands: band names, one per image plane.
        variance | weights: the noise, exactly one (same shape as images).
        mask: (band, y, x) bool, True for bad pixels (default none).
        wcs: celestial WCS written into each SCI/VAR/MASK header.
        truth: optional truth Table; source_images: optional (source, band, y, x).
        meta: extra primary-header keywords (short str/int/float values).
    """
    bands = tuple(str(b) for b in bands)
    img = _cube(images, "images")
    nb = img.shape[0]
    if len(bands) != nb:
        raise ValueError(f"bands: {len(bands)} names {bands} for {nb} image planes")
    if len(set(bands)) != nb:
        raise ValueError(f"bands: names must be unique, got {bands}")
    if (variance is None) == (weights is None):
        raise ValueError("variance, weights: give exactly one of them")
    noise_name = "VAR" if variance is not None else "WHT"
    arg = "variance" if variance is not None else "weights"
    noise = _cube(variance if variance is not None else weights, arg)
    if noise.shape != img.shape:
        raise ValueError(f"{arg}: expected shape {img.shape}, got {noise.shape}")
    m = np.zeros(img.shape, np.uint8) if mask is None else _cube(mask, "mask", np.uint8)
    if m.shape != img.shape:
        raise ValueError(f"mask: expected shape {img.shape}, got {m.shape}")
    psf = _cube(psf_images, "psf_images")
    if psf.shape[0] != nb:
        raise ValueError(f"psf_images: expected {nb} planes, got shape {psf.shape}")
    if pixel_scale is None and wcs is not None:
        pixel_scale = float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600)

    prim = fits.PrimaryHDU()
    h = prim.header
    h["DJFORMAT"] = (FORMAT, "deconvjax observation file")
    h["DJVERS"] = VERSION
    h["NBAND"] = nb
    for k, b in enumerate(bands):
        h[f"BAND{k + 1}"] = b
    if pixel_scale is not None:
        h["PIXSCALE"] = (float(pixel_scale), "arcsec / pixel")
    h["BUNIT"] = bunit
    h["NOISE"] = (noise_name, "VAR: variance planes; WHT: inverse-variance planes")
    for k, v in (meta or {}).items():
        h[k[:8].upper()] = v

    wh = _wcs_header(wcs)
    hdus = [prim]
    for k, b in enumerate(bands):
        for name, arr in (("SCI", img[k]), (noise_name, noise[k]), ("MASK", m[k])):
            hh = _image_hdu(arr, header=wh.copy(), name=name, ver=k + 1)
            hh.header["BAND"] = b
            if name == "SCI":
                hh.header["BUNIT"] = bunit
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


def write_field(path, field) -> Path:
    """Write a `deconvjax.sims.SimulatedField` (with its truth and source images)."""
    return write_observation(
        path,
        field.images,
        psf_images=field.psf_images,
        bands=field.bands,
        variance=field.variance,
        mask=field.mask,
        wcs=field.wcs,
        pixel_scale=field.pixel_scale,
        truth=field.truth,
        source_images=field.source_images,
        meta={"SURVEY": field.survey, "SEED": int(field.seed)},
    )


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


def read_arrays(path) -> ObservationData:
    """Read a file written by `write_observation` / `write_field` into numpy arrays.

    Raises ValueError naming the file and the problem for a missing HDU, a corrupted file or
    arrays of mismatched shapes.
    """
    path = Path(path)
    with _open(path) as hdul:
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
        sci, noise, mask, psf = [], [], [], []
        wcs = None
        for k, b in enumerate(bands):
            hs = _find(hdul, path, "SCI", k + 1)
            hn = _find(hdul, path, noise_kind, k + 1)
            hm = _find(hdul, path, "MASK", k + 1)
            hp = _find(hdul, path, "PSF", k + 1)
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
        truth = _hdu_to_table(hdul["TRUTH"]) if "TRUTH" in hdul else None
        src = None
        if "SOURCES" in hdul:
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
        return ObservationData(
            images=images,
            weights=weights,
            variance=variance,
            mask=m,
            psf_images=np.stack(psf),
            bands=bands,
            wcs=wcs,
            pixel_scale=None if ps is None else float(ps),
            truth=truth,
            source_images=src,
            meta=meta,
            path=str(path),
            psf_center="pixel",
            noise_source=f"given: deconvjax observation file ({noise_kind})",
        )


def read_observation(path, frame=None, **kwargs):
    """Read a deconvjax observation file into a `deconvjax.Observation`."""
    return read_arrays(path).to_observation(frame, **kwargs)


def read_field(path):
    """Read a file written by `write_field` back into a `deconvjax.sims.SimulatedField`."""
    from deconvjax.sims.blends import SimulatedField

    d = read_arrays(path)
    if d.truth is None or d.source_images is None:
        raise ValueError(f"{path}: missing HDU 'TRUTH' or 'SOURCES'; not a simulated field")
    return SimulatedField(
        images=d.images,
        variance=d.variance,
        psf_images=d.psf_images,
        wcs=d.wcs,
        truth=d.truth,
        source_images=d.source_images,
        bands=d.bands,
        pixel_scale=d.pixel_scale,
        survey=str(d.meta.get("SURVEY", "")),
        seed=int(d.meta.get("SEED", -1)),
        mask=d.mask,
    )


# ---------------------------------------------------------------------------------------
# Common real layouts
# ---------------------------------------------------------------------------------------

def _read_plane_or_cube(spec, name: str, hdu) -> tuple[np.ndarray, list, str]:
    """Read a path (cube or image) or a list of paths (one image each) into (band, y, x).

    Each path may also be a ``(path, hdu)`` pair, to pick an extension per file (e.g. the
    ``SCI`` and ``WHT`` extensions of one HST drizzled file).
    """
    single = isinstance(spec, (str, os.PathLike)) or (
        isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], (int, str))
        and isinstance(spec[0], (str, os.PathLike)) and not isinstance(spec[1], os.PathLike)
        and not str(spec[1]).lower().endswith((".fits", ".fit", ".fz", ".gz"))
    )
    paths = [spec] if single else list(spec)
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
                          and x.data.ndim >= 2), None)
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
) -> ObservationData:
    """Read common real layouts into `ObservationData`.

    Args:
        images: one (band, y, x) cube file, a single-band image file, or a list of image files
            (one per band). Any path may be a ``(path, hdu)`` pair to pick its extension.
            The WCS comes from the first image header (celestial axes).
        psf: the same layouts; a single (h, w) PSF is used for all bands.
        variance | weight | rms: the noise (at most one), same layouts. Negative values,
            NaN on pixels with data, or no pixel with information raise `NoiseMapError`
            (a ValueError); 0 weight or infinite variance masks a pixel.
        mask: same layouts, nonzero marks bad pixels.
        bands: band names (default: FILTER/BAND keywords, else "0", "1", ...).
        hdu: HDU index or name to read in every file (default: the first with an image).
        psf_pixel_scale: arcsec/pixel of the PSF sampling when different from the images'.
        estimate_noise_if_missing: without a noise map, estimate it from the images
            (`deconvjax.io.noise.estimate_noise`: background rms, plus the sources' Poisson
            noise where BUNIT / EXPTIME / GAIN allow) and warn saying so; False: raise.
            The result's ``noise_source`` and ``noise_estimate`` record what was done.
    """
    img, headers, first = _read_plane_or_cube(images, "images", hdu)
    header = headers[0]
    nb = img.shape[0]
    given = [(n, v) for n, v in (("variance", variance), ("weight", weight), ("rms", rms))
             if v is not None]
    if len(given) > 1:
        raise ValueError(f"variance, weight, rms: give at most one, got {[n for n, _ in given]}")
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
        raise ValueError(f"{first}: no noise map (variance, weight or rms) given")
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
        path=first,
        noise_source=source,
        noise_estimate=estimate,
    )
