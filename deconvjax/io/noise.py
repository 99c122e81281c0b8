"""Noise of images that come without a noise map: a sigma-clipped background rms per band
(sources masked, robust to sky gradients), plus the sources' own Poisson noise where the
header says how many electrons a data unit is.

The variance of band ``b`` is

    var = rms_b^2 + max(smooth(data - background), 0) / g_b

with ``g_b`` the electrons per data unit, from ``BUNIT`` and the ``EXPTIME`` / ``GAIN``
keywords (image header first, then the primary header):

=====================================  =====================  ==========================
``BUNIT``                              ``g`` (e- per unit)    why
=====================================  =====================  ==========================
electrons (``ELECTRONS``, ``e-``)      1                      N electrons: variance N
electrons/s (``ELECTRONS/S``)          ``EXPTIME``            d = N / t: var = d / t
counts, ADU, DN                        ``GAIN``               d = N / G: var = d / G
counts/s, ADU/s, DN/s                  ``GAIN * EXPTIME``     d = N / (G t)
anything else or missing               none                   background rms only
=====================================  =====================  ==========================

(``GAIN``: ``GAIN``, ``CCDGAIN``, ``ATODGAIN`` or ``EGAIN`` in e-/ADU; ``EXPTIME``:
``EXPTIME``, ``TEXPTIME`` or ``EXPOSURE`` in s.) The background's own Poisson noise is
in the measured rms already, hence ``data - background``; the data are smoothed (a
Gaussian of 1 pixel) first, so that a pixel's noise does not set its own weight. Without
the keywords only the background rms is used, and the estimate says so: the weights of
bright sources are then too high (their Poisson noise is missing).

Contiguous blocks of pixels exactly 0 (at least 25 connected: the blank, unexposed parts
of a drizzled mosaic; noise never makes them) are taken as no data: they are left out of
the statistics and their variance is infinite (weight 0).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
from jaxtyping import ArrayLike, Bool, Float
from scipy import ndimage

_GAIN_KEYS = ("GAIN", "CCDGAIN", "ATODGAIN", "EGAIN")
_EXPTIME_KEYS = ("EXPTIME", "TEXPTIME", "EXPOSURE")
# Keywords the noise estimate reads: `read_images` copies them from a primary header
# into an extension's header where the extension lacks them.
HEADER_KEYS = ("BUNIT", *_GAIN_KEYS, *_EXPTIME_KEYS)
_ELECTRONS = {"e", "e-", "electron", "electrons", "elec", "el"}
_COUNTS = {"count", "counts", "ct", "cts", "adu", "adus", "dn", "dns"}
_PER_SECOND = ("/s", "/sec", "/second", "s-1", "s**-1", "s^-1", "/s)")
MIN_BLANK = 25


@dataclasses.dataclass(frozen=True)
class NoiseEstimate:
    """How the noise of images without a noise map was estimated (`estimate_noise`).

    Attributes:
        bands: band names.
        rms: ``(band,)`` background rms, data units.
        background: ``(band,)`` median background level, data units.
        gain: ``(band,)`` electrons per data unit of the Poisson term; NaN where none.
        poisson: per band, the Poisson term used (``"BUNIT ..., EXPTIME ...: var += ..."``)
            or why there is none.
        n_blank: ``(band,)`` pixels of blank (exactly 0) blocks taken as no data.
        varies: ``(band,)`` max over min of the rms map where the noise varies across the
            image (the variance then follows the Background2D rms map); 1 where one rms
            holds for the whole image.
    """

    bands: tuple[str, ...]
    rms: np.ndarray
    background: np.ndarray
    gain: np.ndarray
    poisson: tuple[str, ...]
    n_blank: np.ndarray
    varies: np.ndarray | None = None

    @property
    def has_poisson(self) -> np.ndarray:
        return np.isfinite(self.gain)

    @property
    def method(self) -> str:
        """``NOISESRC``: the method in a few words."""
        base = "estimated: sigma-clipped background rms"
        if self.has_poisson.all():
            return base + " + source Poisson"
        if self.has_poisson.any():
            return base + " (+ source Poisson in some bands)"
        return base

    def summary(self) -> str:
        """One line: what was done per band (for a log or a warning)."""
        parts = []
        for b, r, g, why, nb in zip(self.bands, self.rms, self.gain, self.poisson, self.n_blank):
            txt = f"{b}: rms {r:.4g}"
            txt += f", Poisson with {g:.4g} e- per unit" if np.isfinite(g) else f", no Poisson term ({why})"
            if nb:
                txt += f", {int(nb)} blank pixels masked"
            parts.append(txt)
        if self.varies is not None:
            for k, v in enumerate(self.varies):
                if v > 1.0:
                    parts[k] += f", rms varies x{v:.2f} across the image (a Background2D rms map)"
        return f"no noise map given: {self.method} ({'; '.join(parts)})"

    def header_cards(self) -> list[tuple[str, object, str]]:
        """FITS cards recording the estimate: ``NOISESRC`` and, per band ``k`` (1-based),
        ``NOISEBk`` (band), ``BKGRMSk`` (rms), ``NOISEGk`` (e- per unit, -1: no Poisson
        term) and ``NBLANKk``."""
        note = "origin of the weights" if len(self.method) <= 42 else ""  # a card holds 80 characters
        cards: list[tuple[str, object, str]] = [("NOISESRC", self.method, note)]
        for k, (b, r, g, nb) in enumerate(zip(self.bands, self.rms, self.gain, self.n_blank), start=1):
            cards.append((f"NOISEB{k}", str(b), f"band {k} of the noise estimate"))
            cards.append((f"BKGRMS{k}", float(r), f"estimated background rms, band {b}"))
            cards.append((f"NOISEG{k}", float(g) if np.isfinite(g) else -1.0,
                          "e- per data unit of the Poisson term (-1: none)"))
            cards.append((f"NBLANK{k}", int(nb), "blank (exactly 0) pixels taken as no data"))
            if self.varies is not None:
                cards.append((f"NOISEV{k}", float(self.varies[k - 1]), "max/min of the rms map (1: one rms)"))
        return cards


def _number(header, keys) -> tuple[str, float] | tuple[None, None]:
    for k in keys:
        try:
            v = float(header[k])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            return k, v
    return None, None


def electrons_per_unit(header) -> tuple[float | None, str]:
    """``(g, how)``: electrons per data unit from ``BUNIT``, ``EXPTIME`` and ``GAIN`` of a
    FITS header (see the module docstring), or ``(None, why not)``."""
    header = header if header is not None else {}
    raw = str(header.get("BUNIT", "") or "").strip()
    if not raw:
        return None, "no BUNIT in the header"
    u = raw.lower().replace(" ", "").replace("(", "").replace(")", "")
    per_s = False
    for suffix in _PER_SECOND:
        s = suffix.replace("(", "").replace(")", "")
        if u.endswith(s):
            u, per_s = u[: -len(s)], True
            break
    tkey, t = _number(header, _EXPTIME_KEYS)
    gkey, g = _number(header, _GAIN_KEYS)
    if u in _ELECTRONS:
        if not per_s:
            return 1.0, f"BUNIT {raw}: var += max(data - bkg, 0)"
        if t is None:
            return None, f"BUNIT {raw} but no EXPTIME"
        return t, f"BUNIT {raw}, {tkey} {t:g}: var += max(data - bkg, 0) / {t:g}"
    if u in _COUNTS:
        if g is None:
            return None, f"BUNIT {raw} but no GAIN"
        if not per_s:
            return g, f"BUNIT {raw}, {gkey} {g:g}: var += max(data - bkg, 0) / {g:g}"
        if t is None:
            return None, f"BUNIT {raw} but no EXPTIME"
        return g * t, f"BUNIT {raw}, {gkey} {g:g}, {tkey} {t:g}: var += max(data - bkg, 0) / {g * t:g}"
    return None, f"BUNIT {raw} is not electrons or counts"


def _blank(image, valid) -> np.ndarray:
    """Connected blocks of at least `MIN_BLANK` pixels exactly 0."""
    zero = valid & (image == 0)
    if zero.sum() < MIN_BLANK:
        return np.zeros(image.shape, bool)
    lab, n = ndimage.label(zero)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    big = sizes >= MIN_BLANK
    big[0] = False
    return big[lab]


def _plane(image: np.ndarray, use: np.ndarray) -> np.ndarray:
    """The least-squares plane ``a + b y + c x`` through ``image`` on the pixels ``use``."""
    y, x = np.mgrid[: image.shape[0], : image.shape[1]]
    design = np.stack([np.ones(use.sum()), y[use], x[use]], axis=1)
    coef = np.linalg.lstsq(design, image[use], rcond=None)[0]
    return coef[0] + coef[1] * y + coef[2] * x


def _mad_std(x) -> float:
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(1.482602218505602 * np.median(np.abs(x - np.median(x)))) if x.size else float("nan")


#: The noise is taken as varying across the image (a map, not one rms) when the box rms
#: of the Background2D mesh spread by more than this factor (90th over 10th percentile of
#: the boxes): COSMOS stamps that straddle exposures of different depth reach 1.7.
RMS_VARIES = 1.3


def background_rms(image, valid=None, *, psf_sigma: float = 1.5, nsigma: float = 2.0,
                   box_size: int | None = None, with_map: bool = False):
    """The background rms of one ``(y, x)`` image (``valid``: pixels to use) and its
    background map, sources masked.

    Sources are found three times (footprints of a smoothed image above ``nsigma`` of its
    own noise, 5 connected pixels, that peak above 4 sigma, dilated), then the rms is the median over boxes of a
    `photutils.background.Background2D` (sigma-clipped MAD standard deviation per box of
    ``box_size`` pixels, default a quarter of the image and at least 16), which a sky
    gradient does not inflate; an image under two boxes a side gets one sigma-clipped
    MAD of all its source-free pixels. **Returns:** ``(rms, background (y, x))``, and
    with ``with_map`` a third item: the ``(y, x)`` rms map of the Background2D mesh where
    the boxes' rms spread by more than `RMS_VARIES` (noise that varies across the image,
    e.g. where exposures of different depth meet), else None.
    """
    from astropy.stats import sigma_clipped_stats
    from photutils.background import Background2D, MADStdBackgroundRMS, MedianBackground
    from photutils.segmentation import detect_sources

    image = np.asarray(image, dtype=np.float64)
    valid = np.isfinite(image) if valid is None else (np.asarray(valid, bool) & np.isfinite(image))
    if valid.sum() < 10:
        raise ValueError("fewer than 10 valid pixels: cannot estimate the noise")
    ny, nx = image.shape
    box = int(box_size) if box_size else max(16, min(ny, nx) // 4)
    level = np.full(image.shape, float(np.median(image[valid])))
    src = np.zeros(image.shape, bool)
    rms = _mad_std(image[valid])
    rms_map = None
    for _ in range(3):
        resid = np.where(valid, image - level, 0.0)
        sm = ndimage.gaussian_filter(resid, psf_sigma, mode="constant")
        free = valid & ~src
        sm_rms = _mad_std(sm[free])
        if sm_rms > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                segm = detect_sources(sm, nsigma * sm_rms, 5, mask=~valid)
            if segm is not None:
                # Only footprints peaking at 4 sigma: masking the noise's own upward
                # blobs would bias the rms low.
                lab = np.asarray(segm.data)
                peak = ndimage.maximum(sm, lab, index=np.arange(1, lab.max() + 1))
                real = np.concatenate([[False], np.asarray(peak) >= 4.0 * sm_rms])
                src = ndimage.binary_dilation(real[lab], iterations=3)
        free = valid & ~src
        if free.sum() < max(50, valid.sum() // 20):  # nearly all source: keep the last pass's
            free = valid
        rms = level_map = None
        if min(ny, nx) >= 2 * box:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    # A median filter over a mesh of few boxes flattens a gradient at
                    # the edges (3 sigma off on a 4x4 mesh): filter larger meshes only.
                    filter_size = 3 if min(ny, nx) // box >= 6 else 1
                    bkg = Background2D(image, box, mask=~free, coverage_mask=~valid, filter_size=filter_size,
                                       exclude_percentile=50.0, bkg_estimator=MedianBackground(),
                                       bkg_rms_estimator=MADStdBackgroundRMS())
                level_map = np.asarray(bkg.background, np.float64)
                # The spread about a smooth background, not about each box's median (a
                # sky gradient across a box inflates that): about the interpolated map,
                # or about a plane fitted to the source-free pixels, whichever is
                # tighter (the map's mesh can bend a steep gradient at the edges).
                rms = min(_mad_std((image - level_map)[free]), _mad_std((image - _plane(image, free))[free]))
                mesh = np.asarray(bkg.background_rms_mesh, np.float64)
                mesh = mesh[np.isfinite(mesh) & (mesh > 0)]
                spread = np.percentile(mesh, 90) / np.percentile(mesh, 10) if mesh.size >= 4 else 1.0
                rms_map = np.asarray(bkg.background_rms, np.float64) if spread > RMS_VARIES else None
            except ValueError:  # every box masked
                rms = None
        if rms is None or not np.isfinite(rms) or rms <= 0:
            _, med, std = sigma_clipped_stats(image[free], sigma=3.0, maxiters=10, stdfunc="mad_std")
            rms = float(std)
            level_map = np.full(image.shape, float(med))
            rms_map = None
        level = level_map
    if with_map:
        return rms, np.where(valid, level, 0.0), rms_map
    return rms, np.where(valid, level, 0.0)


def estimate_noise(
    images: Float[ArrayLike, "band y x"],
    headers=None,
    *,
    mask: Bool[ArrayLike, "band y x"] | None = None,
    bands: Sequence[str] | None = None,
) -> tuple[Float[np.ndarray, "band y x"], NoiseEstimate]:
    """Estimate the variance of ``(band, y, x)`` ``images`` (see the module docstring).

    **Arguments:** ``headers``: one FITS header per band, or one for all (``None``:
    background rms only); ``mask``: ``(band, y, x)`` bool, True for bad pixels (NaN and
    inf pixels are bad too); ``bands``: names, for the report.

    **Returns:** ``(variance, estimate)``: the ``(band, y, x)`` float64 variance (inf on
    bad and blank pixels) and a `NoiseEstimate`.

    Raises ValueError for a band whose rms is 0 or cannot be measured (a constant or
    noiseless image: give its noise).
    """
    img = np.asarray(images, dtype=np.float64)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"images must be (y, x) or (band, y, x), got shape {img.shape}")
    nb = img.shape[0]
    bad = ~np.isfinite(img)
    if mask is not None:
        bad = bad | np.broadcast_to(np.asarray(mask, bool), img.shape)
    if headers is None or not isinstance(headers, (list, tuple)):
        headers = [headers] * nb
    if len(headers) == 1 and nb > 1:
        headers = list(headers) * nb
    if len(headers) != nb:
        raise ValueError(f"headers: {len(headers)} for {nb} bands")
    bands = tuple(str(b) for b in bands) if bands is not None else tuple(str(k) for k in range(nb))
    var = np.empty(img.shape)
    rms_all, bkg_all, gain_all, how_all, blank_all, vary_all = [], [], [], [], [], []
    for b in range(nb):
        valid = ~bad[b]
        blank = _blank(img[b], valid)
        valid &= ~blank
        try:
            rms, level, rms_map = background_rms(img[b], valid, with_map=True)
        except ValueError as err:
            raise ValueError(f"band {bands[b]!r}: {err}") from None
        if not (np.isfinite(rms) and rms > 0):
            raise ValueError(
                f"band {bands[b]!r}: the background rms is {rms:g} (a constant or noiseless image); "
                "give a noise map (variance, weights or rms)"
            )
        g, how = electrons_per_unit(headers[b])
        v = np.full(img.shape[1:], rms**2) if rms_map is None else rms_map**2
        vary_all.append(1.0 if rms_map is None else float(np.max(rms_map[valid]) / np.min(rms_map[valid])))
        if g is not None:
            signal = ndimage.gaussian_filter(np.where(valid, img[b] - level, 0.0), 1.0, mode="constant")
            v = v + np.clip(signal, 0.0, None) / g
        var[b] = np.where(valid, v, np.inf)
        rms_all.append(rms)
        bkg_all.append(float(np.median(level[valid])) if valid.any() else 0.0)
        gain_all.append(np.nan if g is None else float(g))
        how_all.append(how)
        blank_all.append(int(blank.sum()))
    est = NoiseEstimate(
        bands=bands, rms=np.array(rms_all), background=np.array(bkg_all), gain=np.array(gain_all),
        poisson=tuple(how_all), n_blank=np.array(blank_all), varies=np.array(vary_all),
    )
    return var, est


def subtract_background2d(data):
    """``data`` (an `ObservationData`) with a `photutils.background.Background2D` sky map
    subtracted from each band (sources masked, as `background_rms` finds them), and the
    median of each band's map. The noise (weights) is unchanged."""
    import dataclasses

    images = np.array(data.images, dtype=np.float64)
    valid = np.isfinite(images) & (np.asarray(data.weights) > 0)
    levels = []
    for b in range(images.shape[0]):
        _, level = background_rms(images[b], valid[b])
        images[b] = np.where(valid[b], images[b] - level, images[b])
        levels.append(float(np.median(level[valid[b]])) if valid[b].any() else 0.0)
    return dataclasses.replace(data, images=images.astype(np.asarray(data.images).dtype)), levels
