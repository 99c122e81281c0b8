"""Real images on a fixed-size prior: the prior's stamp placed on the data by the
observation's own resampling, at a pixel scale chosen from the galaxy's measured size, and
the data's flux units mapped onto the prior's by a measured factor.

A diffusion prior such as the shipped one (`deconvjax.load_prior`) describes galaxies that
*fill* a small stamp (32x32) at a typical brightness in its own units (``flux_scale``). Real
images come at any size, pixel scale and flux unit. `prior_observations` measures the
galaxy (PSF-corrected adaptive second moments, aperture flux), and builds:

- a model `Frame` whose central ``size x size`` pixels are the prior's stamp, at the pixel
  scale that gives the galaxy the training galaxies' typical size in stamp pixels, padded
  by the PSF's radius so that blurred light outside the stamp is modelled (zeros there:
  `PaddedScale`), with the widest model PSF that the observations' PSFs allow
  (`deconvjax.psf.model_psf_for`);
- `Observation`s that resample that frame onto each image through WCSs (the images' own,
  or synthetic ones sharing their centre when the files have none), the frame centred on
  the galaxy;
- the embedding ``E x = flux_scale * factor * pad(x)``, ``factor`` the galaxy's measured
  flux over the training galaxies' typical flux: samples come out in the data's units, and
  scaling the data by ``a`` scales them by ``a`` exactly (the whitened problem is
  unchanged);
- notes (what was done) and warnings (masked pixels, cropped PSFs, galaxies outside the
  prior's training range).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .base import AbstractEmbedding

__all__ = ["PaddedScale", "PriorSetup", "GalaxyMeasurement", "TrainingReference",
           "SHIPPED_REFERENCE", "adaptive_moments", "measure_galaxy", "prepare_psf",
           "prior_observations"]


# --------------------------------------------------------------------------------------
# Embedding: the prior's stamp inside a larger model frame
# --------------------------------------------------------------------------------------


class PaddedScale(AbstractEmbedding):
    """``E x = scale * x`` placed at the centre of a model frame ``pad`` pixels larger on
    every side (zeros there): the prior's stamp inside a frame wide enough to hold the
    light that the PSF spreads out of it."""

    # A traced leaf (not static, unlike `ScaledIdentity`'s): another flux factor reuses
    # the compiled sampler.
    scale: Array = eqx.field(converter=lambda v: jnp.asarray(v, jnp.float32), default=1.0)
    pad: int = eqx.field(static=True, default=0)

    def __call__(self, x):
        p = int(self.pad)
        if p == 0:
            return self.scale * x
        return self.scale * jnp.pad(x, ((0, 0), (p, p), (p, p)))

    def crop(self, cube):
        """The prior's stamp out of a model cube (or a stack of them)."""
        p = int(self.pad)
        return cube if p == 0 else cube[..., p:-p, p:-p]

    def gain(self, n_bands):
        return jnp.full((n_bands,), self.scale**2)


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------


def adaptive_moments(image: np.ndarray, weights: np.ndarray | None = None, *,
                     guess: tuple[float, float] | None = None, sigma0: float = 2.0,
                     iters: int = 50) -> tuple[np.ndarray, np.ndarray, bool]:
    """Adaptive (elliptical Gaussian-weighted) moments of a 2-D image: ``(centre (y, x),
    covariance (2, 2) in pixels^2, converged)``. For a Gaussian profile the covariance is
    the profile's own, so sizes of an image and its PSF subtract in quadrature.
    ``weights`` (0 = masked) multiply the Gaussian weight."""
    img = np.nan_to_num(np.asarray(image, np.float64))
    mask = np.ones_like(img) if weights is None else (np.asarray(weights) > 0).astype(float)
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    if guess is None:
        from scipy.ndimage import gaussian_filter

        sm = gaussian_filter(img * mask, 1.5)
        guess = np.unravel_index(int(np.argmax(sm)), sm.shape)
    c = np.asarray(guess, np.float64)
    cov = np.eye(2) * sigma0**2
    ok = False
    for _ in range(iters):
        try:
            inv = np.linalg.inv(cov)
        except np.linalg.LinAlgError:
            break
        dy, dx = yy - c[0], xx - c[1]
        q = inv[0, 0] * dy * dy + 2 * inv[0, 1] * dy * dx + inv[1, 1] * dx * dx
        w = np.exp(-0.5 * np.minimum(q, 200.0)) * mask * img
        s = w.sum()
        if not s > 0:
            break
        cy, cx = (w * yy).sum() / s, (w * xx).sum() / s
        dy, dx = yy - cy, xx - cx
        m = np.array([[(w * dy * dy).sum(), (w * dy * dx).sum()],
                      [(w * dy * dx).sum(), (w * dx * dx).sum()]]) / s
        new = 2.0 * m
        ev = np.linalg.eigvalsh(new)
        if not (np.all(np.isfinite(new)) and ev.min() > 1e-4):
            break
        # Keep the weight inside the image (noise far out can pull it wide).
        new = new * min(1.0, (0.5 * max(ny, nx)) ** 2 / ev.max())
        done = np.abs(new - cov).max() < 1e-4 * np.trace(cov) and np.hypot(cy - c[0], cx - c[1]) < 1e-4
        c, cov = np.array([cy, cx]), new
        if done:
            ok = True
            break
    return c, cov, ok


def moment_sigma(cov: np.ndarray) -> float:
    """The size ``sqrt(trace / 2)`` of a covariance (sigma of the equal-area... a round
    Gaussian of the same trace)."""
    return float(np.sqrt(max(np.trace(cov), 0.0) / 2.0))


def aperture_flux(image: np.ndarray, centre, cov, weights=None, n_sigma: float = 3.0
                  ) -> tuple[float, float]:
    """Sum inside the ellipse ``n_sigma`` adaptive sigmas wide (a circle of radius
    ``n_sigma * max(sigma, 1.5 px)``... elliptical, at least 2 pixels across); masked pixels
    are filled with the mean of the unmasked ones in the aperture. Returns ``(flux, area in
    pixels)``."""
    img = np.nan_to_num(np.asarray(image, np.float64))
    ny, nx = img.shape
    yy, xx = np.mgrid[:ny, :nx]
    cov = np.asarray(cov, np.float64) + np.eye(2) * 0.5
    inv = np.linalg.inv(cov)
    dy, dx = yy - centre[0], xx - centre[1]
    q = inv[0, 0] * dy * dy + 2 * inv[0, 1] * dy * dx + inv[1, 1] * dx * dx
    ap = q <= n_sigma**2
    good = ap if weights is None else ap & (np.asarray(weights) > 0)
    if not good.any():
        return float("nan"), 0.0
    return float(img[good].sum() * ap.sum() / good.sum()), float(ap.sum())


@dataclass(frozen=True)
class TrainingReference:
    """What a prior's training galaxies look like on its stamp, measured with the
    functions above: adaptive-moment size (pixels) and 3-sigma aperture flux (prior units,
    i.e. divided by ``flux_scale``): the median and the 2nd / 98th percentiles."""

    size_px: tuple[float, float, float]
    flux: tuple[float, float, float]
    source: str = ""


# Measured on the shipped prior's training set (deconvjax/data/prior/README.md: the 80
# training COSMOS stamps rebinned to 32x32, weighted 4, and simulate_galaxies(0, 400)
# standing for the 1200 simulated ones, weighted 3) by `training_reference` below, flux in
# units of flux_scale 0.4044. The COSMOS part alone: size 3.54 (1.82-6.36) px, flux 4.87
# (1.31-109); the simulated part: 2.12 (1.23-4.98) px, 5.43 (0.71-43).
SHIPPED_REFERENCE = TrainingReference(
    size_px=(2.42, 1.24, 5.69), flux=(5.43, 0.73, 52.4),
    source="shipped prior's training set (80 COSMOS x4 + 1200 simulated stamps)")


def training_reference(images: np.ndarray, flux_scale: float, repeat: np.ndarray | None = None,
                       source: str = "") -> TrainingReference:
    """`TrainingReference` of training stamps ``(n, band, y, x)`` (band 0 measured);
    ``repeat`` weights each stamp (how often training saw it)."""
    sizes, fluxes = [], []
    for im in np.asarray(images, np.float64)[:, 0]:
        c, cov, _ = adaptive_moments(im)
        sizes.append(moment_sigma(cov))
        fluxes.append(aperture_flux(im, c, cov)[0] / flux_scale)
    rep = np.ones(len(sizes), int) if repeat is None else np.asarray(repeat, int)
    s, f = np.repeat(sizes, rep), np.repeat(fluxes, rep)
    q = lambda a: tuple(float(v) for v in np.nanpercentile(a, [50, 2, 98]))  # noqa: E731
    return TrainingReference(q(s), q(f), source)


def reference_for(prior) -> TrainingReference:
    """The training reference of a prior: the shipped one's for the shipped prior and for
    priors that do not record one (their training data is taken to be like it)."""
    info = dict(getattr(prior, "info", ()) or ())
    if "train_size_px" in info and "train_flux" in info:
        import ast

        return TrainingReference(tuple(ast.literal_eval(info["train_size_px"])),
                                 tuple(ast.literal_eval(info["train_flux"])), "recorded in the prior")
    return SHIPPED_REFERENCE


@dataclass(frozen=True)
class GalaxyMeasurement:
    """The galaxy on one image: centre (pixels, y x), PSF-corrected size and the PSF's size
    (arcsec, adaptive sigma), aperture flux (data units) and its noise."""

    centre: tuple[float, float]
    size: float
    psf_size: float
    observed_size: float
    flux: float
    flux_err: float
    resolved: bool
    converged: bool


def measure_galaxy(image: np.ndarray, weights: np.ndarray, psf: np.ndarray,
                   pixel_scale: float) -> GalaxyMeasurement:
    """Adaptive moments of the image (band sum) and of its PSF image (same pixel scale):
    PSF-corrected size ``sqrt(sigma_obs^2 - sigma_psf^2)`` in arcsec (at least a third of
    the PSF's, flagged unresolved below half of it), and the 3-sigma aperture flux."""
    img = np.asarray(image, np.float64)
    w = np.asarray(weights, np.float64)
    img2 = np.where(w > 0, img, 0.0).sum(0) if img.ndim == 3 else img
    w2 = (w > 0).any(0) if w.ndim == 3 else w > 0
    p = np.asarray(psf, np.float64)
    p2 = p.sum(0) if p.ndim == 3 else p
    _, pcov, _ = adaptive_moments(p2, sigma0=1.0)
    s_psf = moment_sigma(pcov) * pixel_scale
    c, cov, ok = adaptive_moments(img2, w2.astype(float), sigma0=max(2.0, s_psf / pixel_scale))
    s_obs = moment_sigma(cov) * pixel_scale
    var_g = s_obs**2 - s_psf**2
    resolved = var_g > (0.5 * s_psf) ** 2
    size = float(np.sqrt(max(var_g, (s_psf / 3.0) ** 2)))
    flux, area = aperture_flux(img2, c, cov, w2)
    var = np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), 0.0)
    var2 = var.sum(0) if var.ndim == 3 else var
    good = var2[w2]
    flux_err = float(np.sqrt(area * np.median(good))) if good.size else float("nan")
    return GalaxyMeasurement((float(c[0]), float(c[1])), size, s_psf, s_obs, float(flux),
                             flux_err, bool(resolved), bool(ok))


# --------------------------------------------------------------------------------------
# PSF images
# --------------------------------------------------------------------------------------


def prepare_psf(psf: np.ndarray, max_side: int, *, name: str = "psf") -> tuple[np.ndarray, list[str]]:
    """An odd-sized, square, unit-sum PSF image of at most ``max_side`` pixels, centred
    on its peak: larger images are cropped (a note gives the share of light left out),
    smaller or even-sized ones padded with zeros. Returns ``(image, notes)``."""
    p = np.nan_to_num(np.asarray(psf, np.float64))
    notes = []
    if p.ndim == 2:
        p = p[None]
    total = p.sum(axis=(-2, -1), keepdims=True)
    if np.any(total <= 0):
        raise ValueError(f"{name}: the PSF image has no positive flux")
    p = p / total
    band0 = p.sum(0)
    cy, cx = np.unravel_index(int(np.argmax(band0)), band0.shape)
    h, w = band0.shape
    half = max(cy, h - 1 - cy, cx, w - 1 - cx)
    side = 2 * half + 1
    out = np.zeros((p.shape[0], side, side))
    out[:, half - cy: half - cy + h, half - cx: half - cx + w] = p
    if side != h or side != w:
        notes.append(f"{name}: {h}x{w} PSF image padded to {side}x{side} around its peak")
    max_side = max_side - 1 + max_side % 2
    if side > max_side:
        k = (side - max_side) // 2
        cut = out[:, k: k + max_side, k: k + max_side]
        lost = 1.0 - float(cut.sum(axis=(-2, -1)).min())
        notes.append(f"{name}: {side}x{side} PSF image cropped to {max_side}x{max_side} "
                     f"({100 * lost:.2g}% of its light left out)")
        out = cut / cut.sum(axis=(-2, -1), keepdims=True)
    return out if np.asarray(psf).ndim == 3 else out[0], notes


def _psf_radius(psf: np.ndarray, frac: float = 0.995) -> float:
    """Radius (pixels) from the peak holding ``frac`` of a centred PSF image's light."""
    p = np.asarray(psf, np.float64)
    p = p.sum(0) if p.ndim == 3 else p
    h, w = p.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h // 2, xx - w // 2).ravel()
    order = np.argsort(r)
    cum = np.cumsum(np.abs(p.ravel()[order]))
    cum /= cum[-1]
    return float(r[order][min(np.searchsorted(cum, frac), len(r) - 1)])


# --------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------


@dataclass
class PriorSetup:
    """What `prior_observations` built and measured."""

    frame: object
    observations: tuple
    embed: PaddedScale
    grid_scale: float            # arcsec per prior pixel
    flux_factor: float           # data units per (prior unit * flux_scale)
    measurement: GalaxyMeasurement
    reference: TrainingReference
    model_psf_sigma: float       # arcsec
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def header(self) -> dict:
        """FITS keywords recording the choices."""
        m = self.measurement
        return {"FLUXSCL": (float(self.flux_factor), "data units per unit of prior flux"),
                "PRIORFS": (float(self.embed.scale), "data units per prior variable unit"),
                "PIXSCALE": (float(self.grid_scale), "arcsec per output pixel (prior grid)"),
                "GALSIZE": (float(m.size), "PSF-corrected adaptive sigma, arcsec"),
                "GALFLUX": (float(m.flux), "3-sigma aperture flux, data units"),
                "MODPSF": (float(self.model_psf_sigma), "model PSF Gaussian sigma, arcsec")}


def _image_wcs(shape, pixel_scale, wcs):
    from ..wcs import make_wcs

    return wcs if wcs is not None else make_wcs(tuple(shape), pixel_scale)


def prior_observations(
    prior,
    images: Sequence[np.ndarray],
    psfs: Sequence[np.ndarray],
    variances: Sequence[np.ndarray | float],
    *,
    pixel_scales: Sequence[float | None] | None = None,
    wcss: Sequence[object] | None = None,
    grid_scale: float | None = None,
    flux_factor: float | None = None,
    reference: TrainingReference | None = None,
    max_frame: int = 160,
) -> PriorSetup:
    """Place a fixed-size prior's stamp on real images (see the module docstring).

    ``images``: ``(y, x)`` or ``(band, y, x)`` arrays in one flux unit (any); ``psfs``:
    one effective PSF image each, at that image's pixel scale (any size: cropped or
    padded); ``variances``: arrays or scalars (inf or 0 weight masks). ``pixel_scales``:
    arcsec per pixel of each image (default: from ``wcss``, else 1: sizes are then in
    pixels of the first image); ``wcss``: celestial WCSs (or None) of the images.
    ``grid_scale`` (arcsec per prior pixel) and ``flux_factor`` override the measured
    choices. NaN pixels are masked with a warning.
    """
    from ..frame import Frame
    from ..observation import Observation
    from ..psf import model_psf_for
    from ..wcs import checked_wcs, make_wcs

    n = len(images)
    if n == 0:
        raise ValueError("images: expected at least one image")
    if len(psfs) != n or len(variances) != n:
        raise ValueError(f"expected one PSF and one variance per image ({n}), got "
                         f"{len(psfs)} and {len(variances)}")
    wcss = [None] * n if wcss is None else list(wcss)
    pixel_scales = [None] * n if pixel_scales is None else list(pixel_scales)
    reference = reference_for(prior) if reference is None else reference
    nb, size = int(prior.shape[0]), int(prior.shape[-1])
    notes, warns = [], []

    cubes, weights, scales, wcs_list = [], [], [], []
    for i, (im, var) in enumerate(zip(images, variances)):
        im = np.asarray(im, np.float64)
        im = im[None] if im.ndim == 2 else im
        if im.ndim != 3:
            raise ValueError(f"images[{i}]: expected (y, x) or (band, y, x), got shape {im.shape}")
        if im.shape[0] != nb:
            raise ValueError(f"images[{i}] has {im.shape[0]} band(s) but the prior {nb}")
        v = np.asarray(var, np.float64)
        v = np.broadcast_to(v, im.shape) if v.ndim == 0 else (v[None] if v.ndim == 2 else v)
        if v.shape != im.shape:
            raise ValueError(f"variances[{i}]: shape {v.shape} differs from the image's {im.shape}")
        bad = ~np.isfinite(im)
        if bad.any():
            warns.append(f"images[{i}]: {int(bad.sum())} NaN or inf pixel(s) masked (weight 0)")
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(np.isfinite(v) & (v > 0) & ~bad, 1.0 / np.where(v > 0, v, 1.0), 0.0)
        if not (w > 0).any():
            raise ValueError(f"images[{i}]: every pixel is masked (NaN data or zero weight)")
        wcs, scale = checked_wcs(wcss[i], pixel_scales[i], owner="observation")
        if scale is None:
            scale = scales[0] if scales else 1.0
            if i == 0:
                notes.append("no pixel scale or WCS: sizes in pixels of the first image "
                             "(give --pixel-scale)")
        cubes.append(np.where(bad, 0.0, im))
        weights.append(w)
        scales.append(float(scale))
        wcs_list.append(wcs)

    # PSF images: padded to odd squares, cropped to the first image's extent for measuring.
    meas_psf, _ = prepare_psf(psfs[0], 4 * max(cubes[0].shape[-2:]) + 1, name="psfs[0]")
    m = measure_galaxy(cubes[0], weights[0], meas_psf, scales[0])
    snr = m.flux / m.flux_err if m.flux_err > 0 else np.inf
    if not m.converged:
        warns.append("the galaxy's adaptive moments did not converge: its size and flux are rough")
    if not m.resolved:
        warns.append(f"the galaxy is barely resolved (PSF-corrected size {m.size:.3g} vs the PSF's "
                     f"{m.psf_size:.3g} arcsec): the prior's grid scale is a guess")

    # Grid scale: the galaxy at the training galaxies' median size in prior pixels.
    auto_grid = grid_scale is None
    if auto_grid:
        grid_scale = m.size / reference.size_px[0]
    grid_scale = float(grid_scale)
    size_px = m.size / grid_scale
    if not reference.size_px[1] <= size_px <= reference.size_px[2]:
        warns.append(f"the galaxy is {size_px:.3g} prior pixels in size, outside the prior's training "
                     f"range {reference.size_px[1]:.3g}-{reference.size_px[2]:.3g}")

    # Flux factor: the galaxy at the training galaxies' median flux.
    fs = float(getattr(prior, "flux_scale", 1.0))
    if flux_factor is None:
        if not (m.flux > 0 and snr > 2):
            raise ValueError(
                f"the galaxy's flux ({m.flux:.3g} +- {m.flux_err:.3g} data units in a 3-sigma "
                "aperture) is not measurably positive: cannot scale it to the prior (give a "
                "flux factor by hand, or check the sky subtraction)")
        flux_factor = m.flux / (reference.flux[0] * fs)
        if snr < 5:
            warns.append(f"the galaxy's flux is measured at SNR {snr:.2g} only: the flux factor is rough")
    flux_factor = float(flux_factor)
    flux_prior = m.flux / (flux_factor * fs)
    if not reference.flux[1] <= flux_prior <= reference.flux[2]:
        warns.append(f"the galaxy's flux is {flux_prior:.3g} prior units, outside the prior's training "
                     f"range {reference.flux[1]:.3g}-{reference.flux[2]:.3g}")

    # PSFs: at most the image and the largest frame wide; the frame padded by their radius.
    pad_psfs, pads = [], []
    for i, (p, sc, cube) in enumerate(zip(psfs, scales, cubes)):
        # Light spread further than the image's width from the galaxy is never observed.
        max_side = min(int(max_frame * grid_scale / sc), max(cube.shape[-2:]))
        p2, pn = prepare_psf(p, max_side, name=f"psfs[{i}]")
        notes.extend(pn)
        pad_psfs.append(p2)
        pads.append(int(np.ceil(_psf_radius(p2) * sc / grid_scale)) + 2)
    pad = min(max(pads), (max_frame - size) // 2)
    fshape = (size + 2 * pad, size + 2 * pad)
    # No PSF may span more than the frame.
    for i, (p2, sc) in enumerate(zip(pad_psfs, scales)):
        max_side = int(fshape[0] * grid_scale / sc)
        if max(p2.shape[-2:]) > max_side:
            p3, pn = prepare_psf(p2, max_side, name=f"psfs[{i}]")
            notes.extend(pn)
            pad_psfs[i] = p3

    from ..psf import ArrayPSF

    aps = [ArrayPSF(p, pixel_scale=sc) for p, sc in zip(pad_psfs, scales)]
    allow_gain = False
    try:
        model_psf = model_psf_for(aps, grid_scale, nb)
    except ValueError:
        from ..psf import GaussianPSF

        model_psf = GaussianPSF(0.3 * grid_scale)
        allow_gain = True
        warns.append("the images' PSFs are sharper than the prior's grid (pixels of "
                     f"{grid_scale:.3g} arcsec): the model PSF is wider than theirs at some "
                     "frequencies (allowed; the fit may amplify noise there)")

    # WCSs: each image's own, or a synthetic TAN one at its pixel scale (images without a
    # WCS share their centres); the frame centred on the galaxy in the first image.
    if all(w is None for w in wcs_list):
        wcs_list = [make_wcs(c.shape[-2:], sc) for c, sc in zip(cubes, scales)]
    elif any(w is None for w in wcs_list):
        raise ValueError("wcs: give every image a WCS, or none")
    ra, dec = wcs_list[0].pixel_to_world_values(m.centre[1], m.centre[0])
    fwcs = make_wcs(fshape, grid_scale, center=(float(ra), float(dec)))
    # Orientation of the first image (a rotated sky grid stays rotated on the output).
    try:
        pm = np.asarray(wcs_list[0].pixel_scale_matrix, np.float64)
        fwcs.wcs.cd = pm / (np.sqrt(abs(np.linalg.det(pm)))) * grid_scale / 3600.0
    except Exception:  # noqa: BLE001 - keep the north-up default
        pass
    bands = tuple(f"b{i}" for i in range(nb))
    frame = Frame(bands, fshape, wcs=fwcs, psf=model_psf)
    obs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cube, w, ap, wcs in zip(cubes, weights, aps, wcs_list):
            obs.append(Observation(cube, frame=frame, psf=ap, weights=w, wcs=wcs,
                                   allow_psf_gain=allow_gain))
    embed = PaddedScale(fs * flux_factor, pad)
    notes.insert(0, f"galaxy: centre ({m.centre[1]:.1f}, {m.centre[0]:.1f}) px (x, y), PSF-corrected "
                    f"size {m.size:.3g} arcsec (PSF {m.psf_size:.3g}), flux {m.flux:.4g} +- "
                    f"{m.flux_err:.2g} data units")
    notes.append(f"prior grid: {size}x{size} at {grid_scale:.4g} arcsec/px "
                 f"({'chosen from the galaxy size' if auto_grid else 'given'}: "
                 f"{size_px:.3g} px, training median {reference.size_px[0]:.3g}), model frame "
                 f"{fshape[0]}x{fshape[1]} (padded {pad} px for the PSF), model PSF sigma "
                 f"{float(np.ravel(model_psf.sigma)[0]):.3g} arcsec")
    notes.append(f"flux factor {flux_factor:.4g}: data units per unit of the prior's flux "
                 f"(galaxy flux {flux_prior:.3g} prior units, training median {reference.flux[0]:.3g})")
    return PriorSetup(frame, tuple(obs), embed, grid_scale, flux_factor, m, reference,
                      float(np.ravel(model_psf.sigma)[0]), notes, warns)
