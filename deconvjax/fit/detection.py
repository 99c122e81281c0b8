"""Source detection and segmentation (photutils): background subtraction, a threshold in
units of the measured noise, segmentation and deblending of the footprints, the shoulders
of close blends as peaks of curvature, and a stamp size per source from its segment.

The steps, on the detection image (`detection_image`: the inverse-variance-weighted band
sum in units of its noise):

1. **Background.** Sources are masked (a first segmentation at ``footprint_nsigma``,
   dilated) and a `photutils.background.Background2D` (median per box, boxes of a quarter
   of the image, at least 16 pixels) is subtracted, so that sky gradients and offsets do
   not become detections. Images smaller than two boxes a side get a constant (the
   sigma-clipped median of the unmasked pixels).
2. **Threshold.** The background-subtracted image is smoothed by a Gaussian of
   ``psf_sigma`` pixels (a matched filter, zero beyond the edges: the background) and
   divided by the noise of the smoothed image, measured (MAD) on the source-free pixels:
   thresholds are in sigma above the estimated background whatever the correlation of
   the noise (drizzled images).
3. **Footprints and components.** `photutils.segmentation.detect_sources` at
   ``footprint_nsigma`` (``npixels`` connected pixels) gives the footprints; those whose
   peak is below ``nsigma`` are dropped. `photutils.segmentation.deblend_sources`
   (multi-threshold plus watershed) splits each into components holding at least
   ``contrast`` of its flux, so noise on a bright halo (however underestimated its
   Poisson noise) stays part of it. Multi-thresholding asks for flux only, so it also
   splits galaxies along the noise on their knots and arms: a component must moreover rise
   ``nsigma`` above its saddle (the brightest pixel of its border with another), else it
   is merged (the lowest first; the brightest of a footprint stays).
4. **Shoulders.** Two galaxies a few pixels apart often make a single maximum (the
   fainter one is a shoulder on the brighter one's slope). A shoulder is still a maximum
   of the curvature (``-LoG``, same ``psf_sigma``, in units of its own noise): those above
   ``deblend_nsigma``, where the smoothed image is above ``nsigma``, at least
   ``min_distance + 1`` pixels from any other peak and whose bump holds at least
   ``contrast`` of the footprint's flux, are added (per band too, so a source of unusual
   colour on a neighbour's slope is not lost).
5. **Segments and stamps.** The footprints are divided among all the sources by a
   watershed of the smoothed image (`Detection.segmentation`). A source's extent is the
   largest distance from it to its segment (for all but the brightest of a footprint,
   only to the pixels above its saddle: not the skirt of a neighbour's halo); its stamp
   covers that extent less the reach of the PSF itself (a point source of the same peak
   reaches ``sqrt(2 t^2 ln(peak / footprint_nsigma))``), so a big halo gets a big stamp
   and a bright star a small one. An extended footprint's brightest source (beyond
   `EXTENDED_PSF_WIDTHS`) reaches `EXTENDED_GROWTH` times further: its wings continue
   below the threshold. A much fainter source of a footprint (a satellite on a halo, a
   knot on a disc) gets at most `Detection.max_sizes`: moments measured on its host's light
   would otherwise give it a stamp full of that light.

Figures (detections on simulated blends, the simulated halo, the real COSMOS stamps):
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from jaxtyping import ArrayLike, Float
from scipy import ndimage

# Odd sizes with small prime factors: stamp FFTs of prime sizes (31, 61) run ~3x slower.
STAMP_SIZES = (15, 21, 27, 35, 45, 63, 81, 105, 135, 165, 189, 225, 243, 275, 297, 343, 375, 405, 441, 495, 525)


#: A footprint's brightest source reaching beyond this many PSF widths is extended ...
EXTENDED_PSF_WIDTHS = 8.0
#: ... and its stamp reaches this many times its footprint's extent.
EXTENDED_GROWTH = 1.5
#: A source of a footprint whose peak is below this fraction of the footprint's peak is a
#: satellite (two galaxies of similar brightness in one footprint are not) ...
SATELLITE_CONTRAST = 0.25
#: ... and its stamp reaches this many
#: times its extent above its saddle ...
SATELLITE_REACH = 2.0
#: ... or this many widths of the PSF-filtered source, whichever is larger.
SATELLITE_PSF_WIDTHS = 4.0


@dataclasses.dataclass(frozen=True)
class Detection:
    """The result of `find_sources`.

    Attributes:
        positions: ``(n, 2)`` float64 ``(y, x)`` pixel positions, most significant first.
        significance: ``(n,)`` the smoothed detection image at each peak, in sigma.
        segmentation: ``(y, x)`` int32 map: 0 background, ``k + 1`` the pixels of source
            ``k`` (sources outside every footprint, given by position, have none).
        stamp_sizes: ``(n,)`` odd stamp sizes covering each source's segment, less the
            PSF's reach (from `STAMP_SIZES`; 0 where that leaves nothing, or for a source
            without a segment: the moments size it).
        radii: ``(n,)`` each source's extent (pixels): the largest distance from it to a
            pixel of its segment (for all but a footprint's brightest, above its saddle).
        kind: ``(n,)`` ``"peak"`` (a maximum of a deblended footprint), ``"shoulder"``
            (a curvature peak) or ``"given"`` (a position passed in).
        background: ``(y, x)`` the background subtracted from the detection image
            (its units: sigma of the unsmoothed detection image).
        noise: the measured noise of the smoothed detection image, relative to the
            nominal one (1 for white noise whose weights are right).
        max_sizes: ``(n,)`` the largest stamp a source should get (0: no limit): for a
            satellite (a source whose peak is under `SATELLITE_CONTRAST` of its
            footprint's: on a halo, a knot on a disc), a few times its extent above its
            saddle or a few PSF widths, whichever is larger, so that moments measured on
            its host's light do not give it a stamp full of that light.
    """

    positions: np.ndarray
    significance: np.ndarray
    segmentation: np.ndarray
    stamp_sizes: np.ndarray
    radii: np.ndarray
    kind: tuple[str, ...]
    background: np.ndarray
    noise: float
    max_sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.positions)


def detection_image(
    data: Float[ArrayLike, "band y x"], weights: Float[ArrayLike, "band y x"]
) -> Float[np.ndarray, "y x"]:
    """The inverse-variance-weighted band sum divided by its noise, ``sum_b w d /
    sqrt(sum_b w)``: unit noise per pixel for independent noise. ``(y, x)`` float64."""
    data = np.asarray(data, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if data.ndim == 2:
        data, weights = data[None], weights[None]
    if data.shape != weights.shape or data.ndim != 3:
        raise ValueError(f"data and weights must both be (band, y, x), got {data.shape} and {weights.shape}")
    wsum = weights.sum(0)
    num = (weights * data).sum(0)
    return np.where(wsum > 0, num / np.sqrt(np.where(wsum > 0, wsum, 1.0)), 0.0)


def stamp_size_for(radius: float, sizes=STAMP_SIZES) -> int:
    """The smallest of ``sizes`` holding a disc of ``radius`` pixels around its centre
    pixel (the largest if none does)."""
    need = 2 * int(np.ceil(radius)) + 1
    for s in sizes:
        if s >= need:
            return int(s)
    return int(sizes[-1])


def psf_width(psf) -> float:
    """The Gaussian sigma (pixels) of a PSF image ``(..., h, w)`` (bands averaged) with
    the same full width at half maximum: ``FWHM / 2.355``, the FWHM from the area above
    half the peak (``pi FWHM^2 / 4``). Unlike second moments, it ignores the wings
    (an HST PSF's second moments make it three times wider)."""
    k = np.asarray(psf, dtype=np.float64)
    k = k.reshape(-1, *k.shape[-2:])
    widths = []
    for im in k:
        peak = im.max()
        if not peak > 0:
            continue
        area = float(np.sum(im >= 0.5 * peak))
        widths.append(2.0 * np.sqrt(area / np.pi) / 2.3548)
    return float(np.mean(widths)) if widths else 1.0


def _check(psf_sigma, nsigma, min_distance, deblend_nsigma, contrast, footprint_nsigma, npixels):
    if not psf_sigma > 0:
        raise ValueError(f"psf_sigma must be positive, got {psf_sigma}")
    if not nsigma > 0:
        raise ValueError(f"nsigma must be positive, got {nsigma}")
    if int(min_distance) < 1:
        raise ValueError(f"min_distance must be >= 1, got {min_distance}")
    if deblend_nsigma is not None and not deblend_nsigma > 0:
        raise ValueError(f"deblend_nsigma must be positive or None, got {deblend_nsigma}")
    if not 0 <= contrast < 1:
        raise ValueError(f"contrast must be in [0, 1), got {contrast}")
    if not footprint_nsigma > 0:
        raise ValueError(f"footprint_nsigma must be positive, got {footprint_nsigma}")
    if int(npixels) < 1:
        raise ValueError(f"npixels must be >= 1, got {npixels}")


def _mad_std(x) -> float:
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return float("nan")
    return float(1.482602218505602 * np.median(np.abs(x - np.median(x))))


def _segment(image, threshold, npixels, mask):
    """Footprints: connected (8) groups of at least ``npixels`` pixels above ``threshold``
    (an int label map, 0 for none)."""
    from photutils.segmentation import detect_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no sources found" is a warning; we return zeros
        segm = detect_sources(image, threshold, int(npixels), mask=mask)
    return np.zeros(image.shape, np.int32) if segm is None else np.asarray(segm.data, np.int32)


def _background(det, coverage, footprint_nsigma, psf_sigma, npixels, box_size):
    """Background of the detection image and the source mask used for it."""
    from photutils.background import Background2D, MedianBackground, StdBackgroundRMS

    ny, nx = det.shape
    norm = 2.0 * np.sqrt(np.pi) * psf_sigma  # the smoothed image's noise is 1 / norm
    valid = coverage.copy()
    src = np.zeros(det.shape, bool)
    level = np.zeros(det.shape)
    for _ in range(2):
        resid = np.where(valid, det - level, 0.0)
        sm = ndimage.gaussian_filter(resid, psf_sigma, mode="constant") * norm
        free = valid & ~src
        rms = _mad_std(sm[free]) if free.sum() > 100 else 1.0
        if not rms > 0:
            rms = 1.0
        seg = _segment(sm / rms, footprint_nsigma, npixels, ~valid)
        src = ndimage.binary_dilation(seg > 0, iterations=max(2, int(np.ceil(2 * psf_sigma))))
        free = valid & ~src
        box = box_size or max(16, min(ny, nx) // 4)
        level = None
        if min(ny, nx) >= 2 * box:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    bkg = Background2D(
                        det, box, mask=~free, coverage_mask=~valid, filter_size=3, exclude_percentile=50.0,
                        bkg_estimator=MedianBackground(), bkg_rms_estimator=StdBackgroundRMS(),
                    )
                level = np.where(valid, np.asarray(bkg.background, np.float64), 0.0)
            except ValueError:  # every box masked: fall back to a constant
                level = None
        if level is None:
            pix = det[free] if free.sum() > 50 else det[valid]
            level = np.full(det.shape, _clipped_median(pix))
    return level, src


def _clipped_median(x) -> float:
    from astropy.stats import sigma_clipped_stats

    if x.size == 0:
        return 0.0
    _, med, _ = sigma_clipped_stats(x, sigma=3.0, maxiters=5)
    return float(med) if np.isfinite(med) else 0.0


def _vertex(img, y, x, axis, n) -> float:
    """Sub-pixel offset of a peak along ``axis``: the vertex of the parabola through it
    and its two neighbours (0 at the image edge or where it does not curve down)."""
    i = (y, x)[axis]
    if i == 0 or i == n - 1:
        return 0.0
    lo = img[y - 1, x] if axis == 0 else img[y, x - 1]
    hi = img[y + 1, x] if axis == 0 else img[y, x + 1]
    c = img[y, x]
    den = lo - 2 * c + hi
    return float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5)) if den < 0 else 0.0


def _refine(img, ys, xs) -> np.ndarray:
    ny, nx = img.shape
    out = np.empty((len(ys), 2))
    for k, (y, x) in enumerate(zip(ys, xs)):
        out[k] = (y + _vertex(img, y, x, 0, ny), x + _vertex(img, y, x, 1, nx))
    return out


def _impulse_norm(filt, sigma: float) -> float:
    """L2 norm of a linear filter's kernel: the noise of the filtered unit white noise."""
    size = 2 * int(np.ceil(5 * sigma)) + 1
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return float(np.sqrt(np.sum(filt(delta, sigma) ** 2)))


def find_sources(
    data: Float[ArrayLike, "band y x"],
    weights: Float[ArrayLike, "band y x"],
    *,
    psf_sigma: float = 1.0,
    nsigma: float = 5.0,
    min_distance: int = 2,
    max_sources: int | None = None,
    deblend_nsigma: float | None = 5.0,
    contrast: float = 0.005,
    footprint_nsigma: float = 2.0,
    npixels: int = 5,
    background: bool = True,
    box_size: int | None = None,
    source_sigma: float | None = None,
    positions=None,
) -> Detection:
    """Detect and segment the sources of ``(band, y, x)`` (or ``(y, x)``) ``data`` with
    inverse-variance ``weights`` (0: masked); see the module docstring for the steps.

    **Arguments:**

    - `psf_sigma`: width (pixels) of the Gaussian matched filter and of the curvature.
    - `nsigma`: a source's peak in the smoothed image must be this many sigma above the
      background.
    - `min_distance`: peaks closer than ``min_distance + 1`` pixels are one source.
    - `max_sources`: keep at most this many (the most significant).
    - `deblend_nsigma`: curvature threshold of the shoulders; ``None``: no shoulders.
    - `contrast`: the least fraction of its footprint's flux a component must hold
      (higher: fewer splits).
    - `footprint_nsigma`, `npixels`: the footprints' threshold (sigma of the smoothed
      image; at most ``nsigma``) and least number of connected pixels.
    - `background`: subtract a `Background2D` (``box_size`` pixels a box) first.
    - `source_sigma`: the width (Gaussian sigma, pixels) of the smallest sources (the
      PSF's: `psf_width`), to tell a shoulder's flux from its curvature and the PSF's share
      of a footprint's size; default ``psf_sigma``.
    - `positions`: ``(n, 2)`` known ``(y, x)`` positions: nothing is detected, the
      footprints are divided among these and their stamp sizes measured.
    """
    _check(psf_sigma, nsigma, min_distance, deblend_nsigma, contrast, footprint_nsigma, npixels)
    footprint_nsigma = min(float(footprint_nsigma), float(nsigma))
    data = np.asarray(data, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if data.ndim == 2:
        data, weights = data[None], weights[None]
    det = detection_image(data, weights)
    coverage = weights.sum(0) > 0
    if not coverage.any():
        raise ValueError("every pixel is masked (all weights are 0): nothing to detect")
    norm = 2.0 * np.sqrt(np.pi) * psf_sigma
    if background:
        level, srcmask = _background(det, coverage, footprint_nsigma, psf_sigma, npixels, box_size)
    else:
        level, srcmask = np.zeros(det.shape), np.zeros(det.shape, bool)
    det = np.where(coverage, det - level, 0.0)
    sm = ndimage.gaussian_filter(det, psf_sigma, mode="constant") * norm
    free = coverage & ~srcmask
    noise = _mad_std(sm[free]) if free.sum() >= 500 else 1.0
    if not np.isfinite(noise) or noise <= 0:
        noise = 1.0
    sm = np.where(coverage, sm / noise, 0.0)
    foot = _segment(sm, footprint_nsigma, npixels, ~coverage)
    # Keep the footprints whose peak reaches nsigma.
    n_foot = int(foot.max())
    if n_foot:
        peak = ndimage.maximum(sm, foot, index=np.arange(1, n_foot + 1))
        keep = np.concatenate([[False], np.asarray(peak) >= nsigma])
        foot = np.where(keep[foot], foot, 0)
    dmin = int(min_distance) + 1

    if positions is not None:
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        sig = _at(sm, pos)
        kinds = ["given"] * len(pos)
    else:
        pos, sig, kinds = _peaks(sm, foot, nsigma, contrast, npixels)
        pos, sig, kinds = _prune(sm, foot, pos, sig, kinds, nsigma)
        if deblend_nsigma is not None and len(pos):
            images = [det]
            if data.shape[0] > 1:
                images += [np.where(coverage, detection_image(data[b], weights[b]) - level, 0.0) for b in range(data.shape[0])]
            src_sigma = psf_sigma if source_sigma is None else float(source_sigma)
            pos, sig, kinds = _shoulders(images, sm, foot, pos, sig, kinds, psf_sigma, src_sigma, noise, nsigma,
                                         deblend_nsigma, contrast, dmin)
        order = np.argsort(-sig, kind="stable")
        pos, sig, kinds = pos[order], sig[order], [kinds[i] for i in order]
        if max_sources is not None:
            n = int(max_sources)
            pos, sig, kinds = pos[:n], sig[:n], kinds[:n]
    seg = _split(sm, foot, pos)
    radii, dominant = _radii(seg, foot, sm, pos)
    # The footprint is the light seen through the PSF: a point source of the same peak
    # already reaches sqrt(2 t^2 ln(peak / threshold)) (t the width of the PSF through
    # the filter); the model stamp needs the rest.
    t2 = (psf_sigma if source_sigma is None else float(source_sigma)) ** 2 + psf_sigma**2
    blur = np.sqrt(2.0 * t2 * np.log(np.maximum(sig, footprint_nsigma) / footprint_nsigma))
    # The brightest source of a footprint whose light reaches far (a halo, a big disc):
    # its wings continue below the footprint's threshold, where a stamp edge would leave a
    # square in the residual and give the wings to the sky; its stamp reaches further.
    extended = dominant & (radii > EXTENDED_PSF_WIDTHS * np.sqrt(t2))
    radii_stamp = np.where(extended, EXTENDED_GROWTH * radii, radii)
    sizes = np.array([stamp_size_for(r - b) if r > b else 0 for r, b in zip(radii_stamp, blur)], dtype=np.int64)
    # A fainter source of a footprint: its extent above the saddle, times a margin for
    # its wings, or a few widths of the (source-filtered) PSF, whichever is larger.
    reach = np.maximum(SATELLITE_REACH * radii, SATELLITE_PSF_WIDTHS * np.sqrt(t2))
    satellite = ~dominant & (sig < SATELLITE_CONTRAST * _host_peak(sm, foot, pos))
    max_sizes = np.where(satellite, [stamp_size_for(r) for r in reach], 0).astype(np.int64)
    return Detection(
        positions=pos, significance=sig, segmentation=seg, stamp_sizes=np.where(satellite, np.minimum(sizes, max_sizes), sizes),
        radii=radii, kind=tuple(kinds), background=level, noise=float(noise), max_sizes=max_sizes,
    )


def _at(img, pos) -> np.ndarray:
    ny, nx = img.shape
    iy = np.clip(np.round(pos[:, 0]).astype(int), 0, ny - 1)
    ix = np.clip(np.round(pos[:, 1]).astype(int), 0, nx - 1)
    return img[iy, ix].astype(np.float64)


def _peaks(sm, foot, nsigma, contrast, npixels):
    """The peak of each deblended component of each footprint above ``nsigma``."""
    if not foot.any():
        return np.zeros((0, 2)), np.zeros(0), []
    from photutils.segmentation import SegmentationImage, deblend_sources

    segm = SegmentationImage(foot)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Positional n_pixels: its keyword was renamed (npixels -> n_pixels) in photutils 3.
        comps = deblend_sources(sm, segm, int(npixels), contrast=contrast, mode="exponential", progress_bar=False)
    labels = np.asarray(comps.data)
    idx = np.unique(labels[labels > 0])
    where = ndimage.maximum_position(sm, labels, index=idx)
    ys = np.array([w[0] for w in where], dtype=int)
    xs = np.array([w[1] for w in where], dtype=int)
    sig = sm[ys, xs]
    ok = sig >= nsigma
    ys, xs, sig = ys[ok], xs[ok], sig[ok]
    return _refine(sm, ys, xs), sig.astype(np.float64), ["peak"] * len(ys)


def _shoulders(images, sm, foot, pos, sig, kinds, psf_sigma, source_sigma, noise, nsigma, deblend_nsigma, contrast,
               dmin):
    """Add the curvature peaks of each image (the combined one first, then each band)
    that pass the thresholds, lie in a footprint, are ``dmin`` pixels from every peak kept
    and hold ``contrast`` of their footprint's flux."""
    labels = np.arange(1, int(foot.max()) + 1)
    norm = 2.0 * np.sqrt(np.pi) * psf_sigma
    # Footprint fluxes in the units of the unsmoothed detection image.
    foot_flux = np.concatenate([[np.inf], np.asarray(ndimage.sum(np.clip(sm, 0, None), foot, index=labels))])
    foot_flux = foot_flux * noise / norm
    kept = list(pos)
    sig, kinds = list(sig), list(kinds)
    lnorm = _impulse_norm(ndimage.gaussian_laplace, psf_sigma)
    # A Gaussian bump of flux F and width s, seen through the Laplacian of a Gaussian of
    # width psf_sigma, peaks at -LoG = F / (pi t^4), t^2 = s^2 + psf_sigma^2: the flux of
    # a bump from its curvature, for a galaxy twice as wide as the PSF (source_sigma): an
    # upper bound for a point source, about right for the small galaxies of close pairs.
    t4 = ((2.0 * source_sigma) ** 2 + psf_sigma**2) ** 2
    cands = []
    for im in images:
        raw = -ndimage.gaussian_laplace(im, psf_sigma, mode="constant")
        curv = raw / (lnorm * noise)
        smb = ndimage.gaussian_filter(im, psf_sigma, mode="constant") * norm / noise
        peaks = curv == ndimage.maximum_filter(curv, size=3, mode="constant", cval=-np.inf)
        peaks &= (curv > deblend_nsigma) & (smb > nsigma) & (foot > 0)
        ys, xs = np.nonzero(peaks)
        if not len(ys):
            continue
        ok = np.pi * t4 * raw[ys, xs] >= contrast * foot_flux[foot[ys, xs]]
        ys, xs = ys[ok], xs[ok]
        p = _refine(curv, ys, xs)
        for k in np.argsort(-curv[ys, xs], kind="stable"):
            cands.append((p[k], float(sm[ys[k], xs[k]])))
    for p, s in cands:
        if all(np.hypot(*(p - q)) >= dmin for q in kept):
            kept.append(p)
            sig.append(s)
            kinds.append("shoulder")
    return np.array(kept).reshape(-1, 2), np.asarray(sig, np.float64), kinds


def _split(sm, foot, pos) -> np.ndarray:
    """Divide the footprints among the sources: a watershed of ``-sm`` from a marker at
    each source (label ``k + 1``); footprints holding no source stay 0."""
    seg = np.zeros(sm.shape, np.int32)
    if not len(pos) or not foot.any():
        return seg
    from skimage.segmentation import watershed

    ny, nx = sm.shape
    iy = np.clip(np.round(pos[:, 0]).astype(int), 0, ny - 1)
    ix = np.clip(np.round(pos[:, 1]).astype(int), 0, nx - 1)
    markers = np.zeros(sm.shape, np.int32)
    inside = foot[iy, ix] > 0
    # Sources sharing a pixel: the first (most significant) marks it.
    for k in np.nonzero(inside)[0][::-1]:
        markers[iy[k], ix[k]] = k + 1
    mask = foot > 0
    if not markers.any():
        return seg
    seg = watershed(-sm, markers, mask=mask, connectivity=2).astype(np.int32)
    # Footprints without a marker are flooded by none (watershed leaves them 0).
    return seg


def _saddles(seg, sm, n) -> np.ndarray:
    """Per source (label ``k + 1`` of ``seg``), its saddle: the brightest pixel of its
    segment bordering (8-connected) another source's; -inf where none borders."""
    pad = np.pad(seg, 1)
    border = np.zeros(seg.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            nb = pad[1 + dy: 1 + dy + seg.shape[0], 1 + dx: 1 + dx + seg.shape[1]]
            border |= (nb > 0) & (nb != seg)
    border &= seg > 0
    saddle = np.full(n, -np.inf)
    if border.any():
        by, bx = np.nonzero(border)
        np.maximum.at(saddle, seg[by, bx] - 1, sm[by, bx])
    return saddle


def _prune(sm, foot, pos, sig, kinds, nsigma):
    """Merge the components that do not rise ``nsigma`` above their saddle (noise on a
    galaxy, which multi-thresholding splits off however faint, as it only asks for
    flux): the lowest one at a time (its neighbours' segments change when it goes),
    never the brightest of a footprint."""
    if len(pos) < 2:
        return pos, sig, kinds
    foot_peak = np.concatenate([[np.inf], np.asarray(ndimage.maximum(sm, foot, index=np.arange(1, int(foot.max()) + 1)))])
    ny, nx = sm.shape
    iy = np.clip(np.round(pos[:, 0]).astype(int), 0, ny - 1)
    ix = np.clip(np.round(pos[:, 1]).astype(int), 0, nx - 1)
    exempt = sig >= foot_peak[foot[iy, ix]] - 1e-9
    keep = np.ones(len(pos), bool)
    while True:
        idx = np.nonzero(keep)[0]
        seg = _split(sm, foot, pos[idx])
        height = sig[idx] - _saddles(seg, sm, len(idx))
        weak = (height < nsigma) & ~exempt[idx]
        if not weak.any():
            break
        keep[idx[np.argmin(np.where(weak, height, np.inf))]] = False
    return pos[keep], sig[keep], [k for k, ok in zip(kinds, keep) if ok]


def _host_peak(sm, foot, pos) -> np.ndarray:
    """Per source, the peak of the smoothed image over its footprint (its own peak for a
    source outside every footprint)."""
    iy = np.clip(np.rint(pos[:, 0]).astype(int), 0, sm.shape[0] - 1)
    ix = np.clip(np.rint(pos[:, 1]).astype(int), 0, sm.shape[1] - 1)
    label = foot[iy, ix]
    n_foot = int(foot.max())
    peaks = np.asarray(ndimage.maximum(sm, foot, index=np.arange(1, n_foot + 1)), np.float64) if n_foot else np.zeros(0)
    return np.where(label > 0, peaks[np.maximum(label, 1) - 1] if n_foot else 0.0, sm[iy, ix])


def _radii(seg, foot, sm, pos) -> np.ndarray:
    """Each source's extent: the largest distance from it to a pixel of its segment. The
    brightest source of a footprint owns all its segment; a fainter one only the pixels
    brighter than its saddle (the brightest pixel of its segment's border with another
    source), not the skirt of a neighbour's halo that the watershed gives it."""
    n = len(pos)
    out = np.zeros(n)
    if not n or not seg.any():
        return out, np.ones(n, bool)
    labels = np.arange(1, n + 1)
    peak = np.asarray(ndimage.maximum(sm, seg, index=labels), np.float64)
    peak = np.where(np.isfinite(peak), peak, -np.inf)
    foot_of = np.zeros(n, np.int64)
    ys, xs = np.nonzero(seg)
    lab = seg[ys, xs] - 1
    foot_of[lab] = foot[ys, xs]
    foot_peak = np.asarray(ndimage.maximum(sm, foot, index=np.arange(1, int(foot.max()) + 1)), np.float64)
    dominant = peak >= foot_peak[np.maximum(foot_of, 1) - 1] - 1e-9
    floor = np.where(dominant, -np.inf, _saddles(seg, sm, n))
    own = sm[ys, xs] >= floor[lab]
    d = np.hypot(ys - pos[lab, 0], xs - pos[lab, 1])
    np.maximum.at(out, lab[own], d[own])
    has_segment = np.bincount(lab, minlength=n) > 0
    return out, dominant | ~has_segment


def detect(
    data: Float[ArrayLike, "band y x"],
    weights: Float[ArrayLike, "band y x"],
    *,
    psf_sigma: float = 1.0,
    nsigma: float = 5.0,
    min_distance: int = 2,
    max_sources: int | None = None,
    deblend_nsigma: float | None = 5.0,
    **kwargs,
) -> np.ndarray:
    """Source positions: `find_sources` (see there for the arguments) without the
    segmentation. **Returns:** ``(n, 2)`` float64 ``(y, x)`` pixel positions, most
    significant first."""
    return find_sources(
        data, weights, psf_sigma=psf_sigma, nsigma=nsigma, min_distance=min_distance, max_sources=max_sources,
        deblend_nsigma=deblend_nsigma, **kwargs,
    ).positions
