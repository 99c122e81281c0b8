"""Blended fields with deblending truth.

A field is drawn source by source with GalSim into images that carry a real TAN WCS (centred by
default on the COSMOS field, RA 150.1, Dec 2.2). Pixel conventions follow deconvjax: arrays are
(band, y, x), positions (y, x) are 0-based with pixel centres at integers; GalSim images are
1-based, so GalSim position ``(x + 1, y + 1)`` is deconvjax pixel ``(y, x)``.

Image units are electrons over the survey preset's exposure (see `deconvjax.sims.surveys`);
truth fluxes are in the same units and are the total flux of each source (every source is placed
far enough from the edge that at least 99% of it lands in the field).
"""

from __future__ import annotations

import dataclasses
import math

import galsim
import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from ..io.data import ObservationData, SimulatedField
from ..wcs import COSMOS_CENTER, make_wcs
from .galaxies import (
    draw_galaxy_params,
    draw_real_params,
    draw_star_params,
    galaxy_band_fluxes,
    galaxy_profiles,
    real_galaxy_band_fluxes,
    real_galaxy_profiles,
    real_galaxy_shapes,
    star_band_fluxes,
)
from .surveys import Survey, get_survey

__all__ = ["COSMOS_CENTER", "SimulatedField", "blendedness", "default_field", "draw_psf_images",
           "make_wcs", "simulate_field", "simulate_fields"]

def galsim_wcs(wcs: WCS) -> galsim.GSFitsWCS:
    """The same WCS as a GalSim GSFitsWCS (pure numpy, fast for drawing)."""
    header = wcs.to_header()
    # astropy omits PC terms equal to the identity; GSFitsWCS wants them all.
    for i in (1, 2):
        for j in (1, 2):
            header.setdefault(f"PC{i}_{j}", 1.0 if i == j else 0.0)
    return galsim.GSFitsWCS(header=galsim.FitsHeader(header))


def draw_psf_images(survey: Survey, size: int | None = None) -> np.ndarray:
    """(band, size, size) float32 PSF images at the survey pixel scale.

    Odd-sized, centred on the central pixel, including the pixel response (what a point source
    looks like in the image), normalised to unit sum.
    """
    if size is None:
        fwhm = max(b.psf_fwhm for b in survey.bands)
        size = int(2 * math.ceil(3.0 * fwhm / survey.pixel_scale) + 1)
        size = max(size, 25)
    if size % 2 == 0 or size < 3:
        raise ValueError(f"size: expected an odd PSF size >= 3, got {size}")
    out = np.empty((len(survey.bands), size, size), np.float32)
    for b, band in enumerate(survey.bands):
        img = survey.psf(band.name).drawImage(nx=size, ny=size, scale=survey.pixel_scale,
                                              method="auto")
        a = img.array.astype(np.float64)
        out[b] = a / a.sum()
    return out


# ---------------------------------------------------------------------------------------
# Source catalogs (sky positions and intrinsic properties), independent of the survey
# ---------------------------------------------------------------------------------------

def place_sources(
    rng: np.random.Generator,
    n: int,
    extent: tuple[float, float],
    margins,
    min_separation: float,
    max_separation: float,
    max_tries: int = 2000,
) -> np.ndarray:
    """(n, 2) offsets (dy, dx) in arcsec from the field centre, a connected blend.

    The first source lands within ``max_separation / 2`` of the centre; each next one at a
    distance in [min_separation, max_separation] of a random earlier one, at least
    ``min_separation`` from all, and at least ``margins[k]`` arcsec from the field edge.
    """
    if not 0 <= min_separation <= max_separation:
        raise ValueError(
            f"min_separation/max_separation: expected 0 <= min <= max, got "
            f"{min_separation}, {max_separation}"
        )
    hy, hx = extent[0] / 2.0, extent[1] / 2.0
    margins = np.asarray(margins, float)
    out = np.zeros((n, 2))
    for k in range(n):
        m = margins[k]
        for _ in range(max_tries):
            if k == 0:
                r = rng.uniform(0, max_separation / 2.0)
                base = np.zeros(2)
            else:
                r = rng.uniform(min_separation, max_separation)
                base = out[rng.integers(0, k)]
            a = rng.uniform(0, 2 * np.pi)
            p = base + r * np.array([np.sin(a), np.cos(a)])
            if abs(p[0]) > hy - m or abs(p[1]) > hx - m:
                continue
            if k and np.min(np.hypot(*(out[:k] - p).T)) < min_separation:
                continue
            out[k] = p
            break
        else:
            raise ValueError(
                f"n_sources: could not place {n} sources with separations in "
                f"[{min_separation}, {max_separation}] arcsec and margin {m:.2f} arcsec inside a "
                f"{extent[0]:.1f} x {extent[1]:.1f} arcsec field; enlarge shape or lower n_sources"
            )
    return out


@dataclasses.dataclass
class SourceCatalog:
    """Intrinsic source properties, shared by every survey that observes the field.

    Attributes:
        kind: (n,) "galaxy", "real" or "star".
        offsets: (n, 2) (dy, dx) arcsec from the field centre along north and west (the
            +y and +x axes of the north-up, east-left image).
        gal, real, star: parameter dicts of the parametric galaxies, real COSMOS galaxies
            and stars (arrays over the sources of that kind; see `deconvjax.sims.galaxies`).
        index: (n,) index of each source within its kind's dict.
    """

    kind: np.ndarray
    offsets: np.ndarray
    gal: dict
    real: dict
    star: dict
    index: np.ndarray


def _margin(hlr, psf_margin: float):
    """Distance (arcsec) from the edges that keeps >= 99% of a source's flux in the field:
    4 half-light radii of the galaxy and the PSF's own margin (`Survey.psf_margin`), added in
    quadrature as the widths of a convolution roughly do."""
    return np.hypot(4.0 * np.asarray(hlr), psf_margin)


def _draw_fitting_galaxies(rng, n, extent, mag_range, knots, psf_margin):
    """Galaxies from the population model, redrawing any too large for the field.

    This truncates the size distribution where ``_margin(hlr) > 0.4 * min(extent)`` (for
    LSST and a 12.8 arcsec field: hlr > 0.9 arcsec), so every galaxy fits with its margin.
    """
    limit = 0.4 * min(extent)
    gal = draw_galaxy_params(rng, n, mag_range=mag_range, knots=knots)
    for _ in range(100):
        bad = np.flatnonzero(_margin(gal["hlr_disk"], psf_margin) > limit)
        if bad.size == 0:
            return gal
        new = draw_galaxy_params(rng, bad.size, mag_range=mag_range, knots=knots)
        for key in gal:
            gal[key][bad] = new[key]
    raise ValueError(
        f"shape: a {extent[0]:.1f} x {extent[1]:.1f} arcsec field is too small for the galaxy "
        "size distribution; use a larger shape"
    )


def draw_catalog(
    rng: np.random.Generator,
    n_sources: int,
    extent_arcsec: tuple[float, float],
    *,
    star_fraction: float = 0.1,
    real_fraction: float = 0.0,
    min_separation: float = 0.6,
    max_separation: float = 2.5,
    mag_range=(20.0, 25.0),
    cosmos_path=None,
    knots: bool = True,
    psf_margin: float = 3.0,
) -> SourceCatalog:
    """Draw an intrinsic catalog of ``n_sources`` blended sources in a field of
    ``extent_arcsec`` (dy, dx); ``psf_margin`` (arcsec, `Survey.psf_margin` of the widest PSF
    that will observe it) sets, with each source's size, how far from the edges it stays."""
    if n_sources < 1:
        raise ValueError(f"n_sources: expected >= 1, got {n_sources}")
    if not 0 <= star_fraction <= 1 or not 0 <= real_fraction <= 1:
        raise ValueError("star_fraction, real_fraction: expected values in [0, 1]")
    u = rng.uniform(size=n_sources)
    kind = np.where(u < star_fraction, "star",
                    np.where(u < star_fraction + real_fraction, "real", "galaxy")).astype("<U6")
    index = np.zeros(n_sources, int)
    for k in ("galaxy", "real", "star"):
        sel = kind == k
        index[sel] = np.arange(sel.sum())
    gal = _draw_fitting_galaxies(rng, int((kind == "galaxy").sum()), extent_arcsec, mag_range,
                                 knots, psf_margin)
    star = draw_star_params(rng, int((kind == "star").sum()))
    n_real = int((kind == "real").sum())
    real = draw_real_params(rng, n_real, cosmos_path) if n_real else {}
    size = np.zeros(n_sources)  # stars: 0, the PSF term of the margin covers them
    for s in range(n_sources):
        if kind[s] == "galaxy":
            size[s] = gal["hlr_disk"][index[s]]
        elif kind[s] == "real":
            h = real["hlr"][index[s]]
            size[s] = 0.5 if not np.isfinite(h) else h
    margins = _margin(size, psf_margin)
    offsets = place_sources(rng, n_sources, extent_arcsec, margins, min_separation,
                            max_separation)
    return SourceCatalog(kind, offsets, gal, real, star, index)


def _source_profiles(survey: Survey, cat: SourceCatalog, s: int, cosmos_path=None):
    """(per-band unconvolved profiles or None for a point source, per-band total fluxes)."""
    k, i = cat.kind[s], cat.index[s]
    if k == "galaxy":
        return galaxy_profiles(survey, cat.gal, i), galaxy_band_fluxes(survey, cat.gal, i).sum(0)
    if k == "real":
        return (real_galaxy_profiles(survey, cat.real, i, cosmos_path),
                real_galaxy_band_fluxes(survey, cat.real, i))
    return None, star_band_fluxes(survey, cat.star, i)


def render_catalog(
    rng: np.random.Generator,
    survey: Survey,
    cat: SourceCatalog,
    shape: tuple[int, int],
    center=COSMOS_CENTER,
    *,
    source_noise: bool = True,
    psf_size: int | None = None,
    cosmos_path=None,
    seed: int = -1,
    correlated_noise: bool = False,
) -> SimulatedField:
    """Draw ``cat`` as seen by ``survey`` in a field of ``shape`` centred on ``center``."""
    ny, nx = shape
    nb = len(survey.bands)
    wcs = make_wcs(shape, survey.pixel_scale, center)
    gwcs = galsim_wcs(wcs)
    n = len(cat.kind)
    # Sky position of each source: offsets are along the image axes of a north-up frame.
    c_ra, c_dec = center
    dec = c_dec + cat.offsets[:, 0] / 3600.0
    ra = c_ra - cat.offsets[:, 1] / 3600.0 / np.cos(np.deg2rad(c_dec))
    # Exact tangent-plane placement through the WCS (float64, 0-based).
    px, py = wcs.all_world2pix(ra, dec, 0)
    sources = np.zeros((n, nb, ny, nx), np.float32)
    fluxes = np.zeros((n, nb))
    psfs = [survey.psf(b.name) for b in survey.bands]
    for s in range(n):
        profs, fl = _source_profiles(survey, cat, s, cosmos_path)
        fluxes[s] = fl
        pos = galsim.PositionD(float(px[s]) + 1.0, float(py[s]) + 1.0)
        for b in range(nb):
            img = galsim.ImageF(nx, ny, wcs=gwcs)
            if profs is None:
                obj = psfs[b].withFlux(float(fl[b]))
            else:
                obj = galsim.Convolve(profs[b], psfs[b])
            obj.drawImage(img, center=pos, method="auto", add_to_image=False)
            sources[s, b] = img.array
    noise_free = sources.sum(0, dtype=np.float64)
    bkg = np.array([survey.background_variance(b.name) for b in survey.bands])
    variance = np.broadcast_to(bkg[:, None, None], noise_free.shape).copy()
    if source_noise:
        # Poisson noise of the sources themselves (gain 1), in the Gaussian limit.
        variance += np.clip(noise_free, 0.0, None)
    if correlated_noise:
        # Background noise with the correlation of drizzled HST ACS F814W images (GalSim's
        # COSMOS correlation function, the one shipped in deconvjax/data/cosmos), at the preset's
        # per-pixel variance; the sources' Poisson part stays white.
        if not np.isclose(survey.pixel_scale, 0.03):
            raise ValueError(
                "correlated_noise: only for 0.03 arcsec pixels (the COSMOS ACS correlation "
                f"function), not {survey.name!r} at {survey.pixel_scale} arcsec"
            )
        images = noise_free.copy()
        for b in range(nb):
            cn = galsim.getCOSMOSNoise(rng=galsim.BaseDeviate(int(rng.integers(1, 2**31 - 1))),
                                       variance=float(bkg[b]))
            img = galsim.ImageD(nx, ny, scale=survey.pixel_scale)
            img.addNoise(cn)
            images[b] += img.array
        extra = variance - bkg[:, None, None]
        images += rng.standard_normal(noise_free.shape) * np.sqrt(extra)
    else:
        images = noise_free + rng.standard_normal(noise_free.shape) * np.sqrt(variance)
    truth = _truth_table(survey, cat, sources, fluxes, px, py, ra, dec, cosmos_path)
    # (Correlated noise: the variance is its diagonal only.)
    noise = "simulated: true variance" + (" (diagonal; correlated)" if correlated_noise else "")
    data = ObservationData(
        images=images.astype(np.float32),
        variance=variance.astype(np.float32),
        psf_images=draw_psf_images(survey, psf_size),
        bands=survey.band_names,
        wcs=wcs,
        pixel_scale=survey.pixel_scale,
        bunit="ct",  # FITS-standard; counts are electrons (gain 1)
        psf_center="pixel",
        noise_source=noise,
    )
    return SimulatedField(data, truth, sources, survey=survey.name, seed=seed)


def blendedness(source_images: np.ndarray) -> np.ndarray:
    """(source, band) blendedness ``1 - sum(I_s^2) / sum(I_s * I_all)`` (Bosch et al. 2018)."""
    total = source_images.sum(0, dtype=np.float64)
    num = np.einsum("sbyx,sbyx->sb", source_images, source_images, dtype=np.float64)
    den = np.einsum("sbyx,byx->sb", source_images, total, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - num / den, 0.0)


def _truth_table(survey, cat, sources, fluxes, px, py, ra, dec, cosmos_path=None) -> Table:
    n = len(cat.kind)
    t = Table()
    t["id"] = np.arange(n, dtype=np.int64)
    t["kind"] = cat.kind.astype("U6")
    t["y"] = py
    t["x"] = px
    t["ra"] = ra
    t["dec"] = dec
    mag = np.full(n, np.nan)
    z = np.full(n, np.nan)
    hlr = np.zeros(n)
    hlr_b = np.zeros(n)
    hlr_d = np.zeros(n)
    bt = np.zeros(n)
    e1 = np.zeros(n)
    e2 = np.zeros(n)
    cosmos_index = np.full(n, -1, np.int64)
    temp = np.full(n, np.nan)
    for s in range(n):
        k, i = cat.kind[s], cat.index[s]
        if k == "galaxy":
            g = cat.gal
            mag[s], z[s] = g["mag_i"][i], g["z"][i]
            hlr_b[s], hlr_d[s], bt[s] = g["hlr_bulge"][i], g["hlr_disk"][i], g["bulge_frac"][i]
            hlr[s] = bt[s] * hlr_b[s] + (1 - bt[s]) * hlr_d[s]
            e1[s], e2[s] = g["e1"][i], g["e2"][i]
        elif k == "real":
            r = cat.real
            mag[s], z[s], hlr[s] = r["mag_i"][i], r["z"][i], r["hlr"][i]
            e1[s], e2[s] = real_galaxy_shapes(r, i, cosmos_path)
            cosmos_index[s] = r["index"][i]
        else:
            mag[s] = cat.star["mag_i"][i]
            temp[s] = cat.star["temperature"][i]
    t["mag_i"] = mag
    t["z"] = z
    t["hlr"] = hlr
    t["hlr_bulge"] = hlr_b
    t["hlr_disk"] = hlr_d
    t["bulge_frac"] = bt
    t["e1"] = e1
    t["e2"] = e2
    t["cosmos_index"] = cosmos_index
    t["temperature"] = temp
    t["temperature"].unit = "K"
    blend = blendedness(sources)
    for b, band in enumerate(survey.bands):
        t[f"flux_{band.name}"] = fluxes[:, b]
    for b, band in enumerate(survey.bands):
        t[f"blendedness_{band.name}"] = blend[:, b]
    t["blendedness"] = blend[:, survey.band_names.index(survey.reference_band)]
    for c, unit in (("y", "pix"), ("x", "pix"), ("ra", "deg"), ("dec", "deg"), ("hlr", "arcsec"),
                    ("hlr_bulge", "arcsec"), ("hlr_disk", "arcsec")):
        t[c].unit = unit
    for band in survey.bands:
        t[f"flux_{band.name}"].unit = "ct"  # FITS-standard; counts are electrons (gain 1)
    t.meta["survey_name"] = survey.name
    t.meta["pixel_scale"] = survey.pixel_scale
    t.meta["flux_units"] = "electrons over the survey preset exposure"
    t.meta["positions"] = "(y, x) 0-based pixel centres of this image; ra/dec ICRS degrees"
    t.meta["ellipticity"] = ("e = (1 - q) / (1 + q); e1, e2 of the intrinsic profile (real "
                             "galaxies: adaptive moments of the PSF-convolved HST image)")
    return t


def as_rng(seed) -> tuple[np.random.Generator, int]:
    """A numpy Generator and the int seed it came from (-1 for a Generator given as is);
    a `TypeError` for anything else."""
    if isinstance(seed, np.random.Generator):
        return seed, -1
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int or numpy Generator, got {type(seed).__name__}")
    return np.random.default_rng(np.random.SeedSequence(int(seed))), int(seed)


def check_shape(shape) -> tuple[int, int]:
    """``shape`` as ``(ny, nx)`` positive ints; a `ValueError` naming it otherwise."""
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or not all(isinstance(v, (int, np.integer)) and v > 0 for v in shape)):
        raise ValueError(f"shape: expected (ny, nx) positive ints, got {shape!r}")
    return int(shape[0]), int(shape[1])


def simulate_field(
    survey: str | Survey = "lsst",
    *,
    seed: int | np.random.Generator = 0,
    shape: tuple[int, int] = (64, 64),
    n_sources: int = 4,
    bands=None,
    min_separation: float = 0.6,
    max_separation: float = 2.5,
    star_fraction: float = 0.1,
    real_fraction: float = 0.0,
    mag_range=(20.0, 25.0),
    center=COSMOS_CENTER,
    source_noise: bool = True,
    knots: bool = True,
    psf_size: int | None = None,
    cosmos_path=None,
    correlated_noise: bool = False,
) -> SimulatedField:
    """Simulate one blended field for a survey preset.

    **Arguments:**

    - `survey`: preset name ("lsst", "hsc", "hst", "euclid") or a `Survey`.
    - `seed`: int (the same seed gives the same field, bit for bit) or numpy Generator.
    - `shape`: (ny, nx) pixels.
    - `n_sources`: number of sources (galaxies, real COSMOS galaxies and stars).
    - `bands`: subset of the preset bands (default all).
    - `min_separation`, `max_separation`: arcsec between each source and a neighbour.
    - `star_fraction`, `real_fraction`: probability of a star, of a real COSMOS galaxy (the
      COSMOS folder must be present for ``real_fraction > 0``).
    - `mag_range`: LSST-i AB magnitude range of galaxies.
    - `center`: (RA, Dec) degrees of the field centre.
    - `source_noise`: add the sources' own Poisson noise to the background noise.
    - `psf_size`: odd size of the PSF images (default from the seeing).
    - `correlated_noise`: HST preset only: background noise correlated like drizzled ACS
      images (GalSim's COSMOS noise correlation function), same per-pixel variance;
      ``variance`` then holds its diagonal only.

    **Returns:**

    A `SimulatedField`; its truth Table has columns id, kind, y, x (pixels of this image),
    ra, dec, mag_i, z, hlr (flux-weighted of bulge and disk, arcsec), hlr_bulge, hlr_disk,
    bulge_frac, e1, e2, cosmos_index, temperature (stars' blackbody, K), flux_<band>
    (electrons), blendedness_<band>, and blendedness (in the reference band).
    """
    rng, seed_int = as_rng(seed)
    sv = get_survey(survey, bands)
    ny, nx = check_shape(shape)
    extent = (ny * sv.pixel_scale, nx * sv.pixel_scale)
    cat = draw_catalog(rng, n_sources, extent, star_fraction=star_fraction,
                       real_fraction=real_fraction, min_separation=min_separation,
                       max_separation=max_separation, mag_range=mag_range,
                       cosmos_path=cosmos_path, knots=knots,
                       psf_margin=sv.psf_margin())
    return render_catalog(rng, sv, cat, (ny, nx), center, source_noise=source_noise,
                          psf_size=psf_size, cosmos_path=cosmos_path, seed=seed_int,
                          correlated_noise=correlated_noise)


def simulate_fields(survey="lsst", n_fields: int = 10, *, seed: int = 0, progress: bool = True,
                    **kwargs):
    """Yield ``n_fields`` fields; field ``k`` depends only on (seed, k), not on n_fields."""
    from tqdm.auto import tqdm

    if n_fields < 0:
        raise ValueError(f"n_fields: expected >= 0, got {n_fields}")
    for k in tqdm(range(n_fields), desc=f"simulate {survey}", disable=not progress):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), k]))
        f = simulate_field(survey, seed=rng, **kwargs)
        f.seed = int(seed)
        # Field k is reproduced by simulate_field(seed=default_rng(SeedSequence([seed, k]))).
        f.truth.meta["field_index"] = k
        f.truth.meta["seed"] = int(seed)
        yield f


def default_field(seed: int = 0) -> SimulatedField:
    """The embedded default: a small LSST-like g, r, i field, 80x80 pixels, 5 blended galaxies.

    Generated deterministically from ``seed`` (no file needed), in well under a second.
    """
    return simulate_field(
        "lsst", seed=seed, shape=(80, 80), n_sources=5, bands=("g", "r", "i"),
        min_separation=0.8, max_separation=2.2, star_fraction=0.0, mag_range=(20.5, 23.5),
    )
