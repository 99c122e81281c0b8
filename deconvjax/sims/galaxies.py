"""Galaxy and star populations and their GalSim profiles.

Population model (documented, approximately realistic for an i < 25.3 sample):

- Magnitudes (LSST i, AB): galaxy number counts ``N(<i) = 46 * 10**(0.31 (i - 25))`` per
  arcmin^2 (LSST Science Book, eq. 3.7), i.e. ``p(i) ~ 10**(0.31 i)`` between ``mag_range``.
- Redshifts: ``p(z) ~ z^2 exp(-z / z0) `` with ``z0 = 0.0417 i - 0.744`` (LSST Science Book,
  eq. 3.8), clipped to [0.01, 3.5].
- Sizes: half-light radius lognormal around ``0.40'' * 10**(-0.12 (i - 22))`` with 0.20 dex
  scatter, a fit to the median flux_radius against F814W magnitude of the shared COSMOS sample
  (0.39'' at 22, 0.28'' at 23, 0.20'' at 24, 0.18'' at 25); bulges are 0.3-0.6 times the disk.
- Morphology: a de Vaucouleurs bulge (Sersic n=4, truncated at 5 half-light radii so its flux
  is fully drawn) plus an exponential disk; bulge-to-total in i uniform in [0, 0.6] with 30% pure
  disks; half of the galaxies put a fraction (uniform 0.05-0.3) of their disk flux in
  star-forming knots (galsim.RandomKnots, 5-30 knots, same half-light radius as the disk).
  The knot counts are kept modest because each knot costs a full k-space evaluation in GalSim.
- Colours: bulge with the CWW elliptical template, disk with Sbc or Scd, knots with the Im
  (irregular) template, all redshifted and integrated through the survey bandpasses; the total
  i magnitude fixes the normalisation. Colours are tabulated on a redshift grid once per
  survey so drawing a galaxy costs no SED integrals.
- Shapes: ellipticity ``|e| = (1 - q) / (1 + q)`` from a Rayleigh law with sigma 0.25 clipped
  at 0.7 (e.g. the COSMOS ellipticity distribution, Mandelbaum et al. 2014), uniform position
  angle, shared by bulge, disk and knots.
- Stars: i uniform in ``star_mag_range`` (star counts are shallow); blackbody SEDs with
  temperatures uniform in 3500-10000 K.
- Real galaxies: galsim.RealGalaxy from the COSMOS catalog (HST F814W morphologies, with their
  own PSF deconvolved), coloured with the Scd template at the catalog's photometric redshift and
  normalised to its catalog magnitude (taken as LSST i).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import galsim
import numpy as np

from .surveys import Band, Survey, _bandpass, reference_bandpass

TEMPLATES = ("E", "Sbc", "Scd", "Im")
_Z_GRID = np.linspace(0.0, 3.5, 71)  # colours vary slowly: 0.05 steps interpolate to < 0.01 mag
_H_PLANCK_C_OVER_K = 1.4387769e7  # nm K


def _template_sed(name: str) -> galsim.SED:
    return galsim.SED(f"CWW_{name}_ext.sed", "A", "flambda")


def _blackbody_sed(temperature: float) -> galsim.SED:
    def flam(w):  # wavelength in nm; normalisation irrelevant (set by magnitude)
        return w**-5 / np.expm1(_H_PLANCK_C_OVER_K / (w * temperature))

    return galsim.SED(flam, "nm", "flambda")


@functools.cache
def _ref_mags(template: str) -> np.ndarray:
    ref = reference_bandpass()
    sed0 = _template_sed(template)
    return np.array([sed0.atRedshift(float(z)).calculateMagnitude(ref) for z in _Z_GRID])


@functools.cache
def _band_colours(band: Band, template: str) -> np.ndarray:
    # Cached per band (not per survey) so surveys sharing a bandpass share the integrals.
    bp = _bandpass(band)
    sed0 = _template_sed(template)
    mags = np.array([sed0.atRedshift(float(z)).calculateMagnitude(bp) for z in _Z_GRID])
    return mags - _ref_mags(template)


def _colour_table(survey: Survey) -> np.ndarray:
    """(template, band, z) magnitude offsets m_band - m_LSST_i on ``_Z_GRID``."""
    return np.stack([np.stack([_band_colours(b, t) for b in survey.bands]) for t in TEMPLATES])


def template_colours(survey: Survey, template: str, z) -> np.ndarray:
    """Magnitude offsets (band,) or (n, band) of ``template`` at redshift(s) ``z`` vs LSST i."""
    table = _colour_table(survey)[TEMPLATES.index(template)]
    z = np.asarray(z, dtype=float)
    cols = np.stack([np.interp(z, _Z_GRID, table[b]) for b in range(table.shape[0])], axis=-1)
    return cols


@functools.lru_cache(maxsize=64)
def _star_colours(survey: Survey, temperature: float) -> np.ndarray:
    sed = _blackbody_sed(temperature)
    m_ref = sed.calculateMagnitude(reference_bandpass())
    return np.array(
        [sed.calculateMagnitude(survey.bandpass(b.name)) - m_ref for b in survey.bands]
    )


def _power_law_mag(rng: np.random.Generator, n: int, lo: float, hi: float, slope: float):
    # Inverse CDF of p(m) ~ 10**(slope m) on [lo, hi].
    a = np.log(10.0) * slope
    u = rng.uniform(size=n)
    return np.log(np.exp(a * lo) + u * (np.exp(a * hi) - np.exp(a * lo))) / a


def draw_galaxy_params(
    rng: np.random.Generator, n: int, mag_range=(20.0, 25.3), knots: bool = True
) -> dict[str, np.ndarray]:
    """Draw ``n`` parametric galaxies from the population model of this module.

    Returns a dict of (n,) arrays: ``mag_i`` (LSST i AB), ``z``, ``hlr_disk``, ``hlr_bulge``
    (arcsec), ``bulge_frac``, ``knot_frac`` (fraction of disk flux), ``n_knots``, ``disk_sed``
    (0 for Sbc, 1 for Scd), ``e1``, ``e2``, ``knot_seed``.
    """
    if n < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    lo, hi = mag_range
    if not lo < hi:
        raise ValueError(
            f"mag_range: expected (bright, faint) with bright < faint, got {mag_range}"
        )
    mag = _power_law_mag(rng, n, lo, hi, 0.31)
    z0 = np.clip(0.0417 * mag - 0.744, 0.05, None)
    z = np.clip(rng.gamma(3.0, z0), 0.01, 3.5)  # z^2 exp(-z/z0) is a Gamma(3, z0)
    hlr = 0.40 * 10 ** (-0.12 * (mag - 22.0)) * 10 ** (0.20 * rng.standard_normal(n))
    hlr = np.clip(hlr, 0.08, 2.5)
    bulge_frac = np.where(rng.uniform(size=n) < 0.3, 0.0, rng.uniform(0.0, 0.6, size=n))
    hlr_bulge = hlr * rng.uniform(0.3, 0.6, size=n)
    emag = np.clip(np.abs(rng.rayleigh(0.25, size=n)), 0.0, 0.7)
    beta = rng.uniform(0.0, np.pi, size=n)
    has_knots = rng.uniform(size=n) < 0.5
    knot_frac = np.where(has_knots, rng.uniform(0.05, 0.3, size=n), 0.0)
    if not knots:
        knot_frac = np.zeros(n)
    return dict(
        mag_i=mag,
        z=z,
        hlr_disk=hlr,
        hlr_bulge=hlr_bulge,
        bulge_frac=bulge_frac,
        knot_frac=knot_frac,
        n_knots=rng.integers(5, 31, size=n),
        disk_sed=rng.integers(0, 2, size=n),
        e1=emag * np.cos(2 * beta),
        e2=emag * np.sin(2 * beta),
        knot_seed=rng.integers(1, 2**31 - 1, size=n),
    )


def draw_star_params(rng: np.random.Generator, n: int, mag_range=(18.0, 24.0)):
    """Draw ``n`` stars: ``mag_i`` uniform in ``mag_range`` and ``temperature`` (K)."""
    lo, hi = mag_range
    return dict(
        mag_i=rng.uniform(lo, hi, size=n),
        temperature=np.round(rng.uniform(3500.0, 10000.0, size=n), -2),
    )


def galaxy_band_fluxes(survey: Survey, p: dict, i: int) -> np.ndarray:
    """(3, band) electrons of bulge, disk (smooth part) and knots of galaxy ``i``."""
    z = p["z"][i]
    m = p["mag_i"][i]
    bt = p["bulge_frac"][i]
    kf = p["knot_frac"][i]
    fracs = np.array([bt, (1 - bt) * (1 - kf), (1 - bt) * kf])
    templates = ("E", ("Sbc", "Scd")[int(p["disk_sed"][i])], "Im")
    out = np.zeros((3, len(survey.bands)))
    for c, (f, t) in enumerate(zip(fracs, templates, strict=True)):
        if f <= 0:
            continue
        mags = m - 2.5 * np.log10(f) + template_colours(survey, t, z)
        out[c] = [survey.mag_to_counts(mags[b], band.name) for b, band in enumerate(survey.bands)]
    return out


def galaxy_components(p: dict, i: int, with_knots: bool = True) -> tuple:
    """Unit-flux bulge, disk and knot profiles of galaxy ``i`` (sheared, unconvolved)."""
    shear = galsim.Shear(e1=float(p["e1"][i]), e2=float(p["e2"][i]))
    hb = float(p["hlr_bulge"][i])
    bulge = galsim.DeVaucouleurs(half_light_radius=hb, trunc=5 * hb, flux_untruncated=False)
    disk = galsim.Exponential(half_light_radius=float(p["hlr_disk"][i]))
    knots = None
    if with_knots and p["knot_frac"][i] > 0:
        knots = galsim.RandomKnots(
            int(p["n_knots"][i]),
            half_light_radius=float(p["hlr_disk"][i]),
            flux=1.0,
            rng=galsim.BaseDeviate(int(p["knot_seed"][i])),
        ).shear(shear)
    return bulge.shear(shear), disk.shear(shear), knots


def knot_positions(p: dict, i: int) -> np.ndarray:
    """(n_knots, 2) knot (x, y) offsets in arcsec of galaxy ``i`` after its shear; the same
    points `galaxy_components` draws (unit total flux, equal per knot)."""
    if p["knot_frac"][i] <= 0:
        return np.zeros((0, 2))
    knots = galsim.RandomKnots(
        int(p["n_knots"][i]),
        half_light_radius=float(p["hlr_disk"][i]),
        flux=1.0,
        rng=galsim.BaseDeviate(int(p["knot_seed"][i])),
    )
    shear = galsim.Shear(e1=float(p["e1"][i]), e2=float(p["e2"][i]))
    return np.asarray(knots.points) @ shear.getMatrix().T


def galaxy_profiles(survey: Survey, p: dict, i: int) -> list[galsim.GSObject]:
    """One achromatic profile per band (unconvolved), fluxes in electrons."""
    fluxes = galaxy_band_fluxes(survey, p, i)
    comps = galaxy_components(p, i)
    out = []
    for b in range(len(survey.bands)):
        parts = [c * float(fluxes[k, b]) for k, c in enumerate(comps)
                 if c is not None and fluxes[k, b] > 0]
        out.append(galsim.Add(parts) if len(parts) > 1 else parts[0])
    return out


def star_band_fluxes(survey: Survey, p: dict, i: int) -> np.ndarray:
    cols = _star_colours(survey, float(p["temperature"][i]))
    return np.array([survey.mag_to_counts(p["mag_i"][i] + cols[b], band.name)
                     for b, band in enumerate(survey.bands)])


# ---------------------------------------------------------------------------------------
# Real COSMOS galaxies
# ---------------------------------------------------------------------------------------

COSMOS_CATALOG_FILE = "real_galaxy_catalog_26_extension_example.fits"  # the shipped subset's


def cosmos_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The COSMOS RealGalaxy folder: ``path``, else $DECONVJAX_COSMOS, else the subset shipped
    in the package (`deconvjax.data.cosmos_path`: 21 galaxies).

    A folder is one holding a ``real_galaxy_catalog*.fits`` (`deconvjax.data.cosmos_catalog_file`):
    the 100-galaxy sample, the shipped subset, or GalSim's full sample (``deconvjax data cosmos``).
    ``path`` or $DECONVJAX_COSMOS naming a folder without one is an error; returns ``None``
    only when the shipped subset is missing too.
    """
    from ..data import cosmos_catalog_file, cosmos_path

    for name, c in (("path", path), ("DECONVJAX_COSMOS", os.environ.get("DECONVJAX_COSMOS") or None)):
        if c is not None:
            if cosmos_catalog_file(c) is None:
                raise FileNotFoundError(f"cosmos_dir: {name}={c} holds no real_galaxy_catalog*.fits")
            return Path(c)
    shipped = cosmos_path()
    return shipped if cosmos_catalog_file(shipped) is not None else None


def _column(table, name: str):
    """A column of ``table`` by case-insensitive name (GalSim's full sample spells the
    companion's columns in lower case), or None."""
    for col in table.colnames:
        if col.lower() == name.lower():
            return table[col]
    return None


@functools.lru_cache(maxsize=4)
def _cosmos_catalog(d: str):
    from astropy.table import Table

    from ..data import cosmos_catalog_file

    catalog = cosmos_catalog_file(d)
    cat = galsim.RealGalaxyCatalog(catalog.name, dir=str(d))
    fits_file = catalog.with_name(catalog.name.replace(".fits", "_fits.fits"))
    extra = Table.read(fits_file) if fits_file.is_file() else None
    return cat, extra


def cosmos_catalog(path: str | os.PathLike | None = None):
    """(galsim.RealGalaxyCatalog, companion astropy Table or None) for the COSMOS folder
    `cosmos_dir` (``path``, else $DECONVJAX_COSMOS, else the shipped subset)."""
    d = cosmos_dir(path)
    if d is None:
        raise FileNotFoundError(
            "COSMOS data not found: pass cosmos_path or set DECONVJAX_COSMOS to a folder "
            "holding a real_galaxy_catalog*.fits (the shipped subset is missing from this install)"
        )
    return _cosmos_catalog(str(d))


def draw_real_params(rng: np.random.Generator, n: int, cosmos_path=None) -> dict[str, np.ndarray]:
    """Pick ``n`` COSMOS galaxies (with replacement) and random rotations."""
    cat, extra = cosmos_catalog(None if cosmos_path is None else str(cosmos_path))
    idx = rng.integers(0, cat.nobjects, size=n)
    mags = np.asarray(cat.mag, dtype=float)[idx]
    zphot = None if extra is None else _column(extra, "ZPHOT")
    radius = None if extra is None else _column(extra, "flux_radius")
    z = np.asarray(zphot, dtype=float)[idx] if zphot is not None else np.full(n, 0.8)
    hlr = np.asarray(radius, dtype=float)[idx] * 0.03 if radius is not None else np.full(n, np.nan)
    return dict(index=idx, mag_i=mags, z=np.clip(z, 0.01, 3.5), hlr=hlr,
                rotation=rng.uniform(0.0, 360.0, size=n))


@functools.lru_cache(maxsize=4096)
def _cosmos_shape(path: str | None, index: int) -> tuple[float, float]:
    """Reduced-shear ellipticity (g1, g2) of COSMOS galaxy ``index`` from adaptive moments of
    its HST image (PSF-convolved; NaN where the moments fail)."""
    cat, _ = cosmos_catalog(path)
    try:
        mom = galsim.hsm.FindAdaptiveMom(cat.getGalImage(index), strict=True)
    except galsim.GalSimHSMError:
        return float("nan"), float("nan")
    return float(mom.observed_shape.g1), float(mom.observed_shape.g2)


def real_galaxy_shapes(p: dict, i: int, cosmos_path=None) -> tuple[float, float]:
    """(e1, e2) of real galaxy ``i`` after its random rotation (ellipticity turns by 2x)."""
    g1, g2 = _cosmos_shape(str(cosmos_dir(cosmos_path)), int(p["index"][i]))
    a = 2 * np.deg2rad(p["rotation"][i])
    return g1 * np.cos(a) - g2 * np.sin(a), g1 * np.sin(a) + g2 * np.cos(a)


def real_galaxy_profiles(survey: Survey, p: dict, i: int, cosmos_path=None) -> list:
    cat, _ = cosmos_catalog(None if cosmos_path is None else str(cosmos_path))
    rg = galsim.RealGalaxy(cat, index=int(p["index"][i]))
    rg = rg.rotate(float(p["rotation"][i]) * galsim.degrees)
    cols = template_colours(survey, "Scd", p["z"][i])
    return [rg.withFlux(float(survey.mag_to_counts(p["mag_i"][i] + cols[b], band.name)))
            for b, band in enumerate(survey.bands)]


def real_galaxy_band_fluxes(survey: Survey, p: dict, i: int) -> np.ndarray:
    cols = template_colours(survey, "Scd", p["z"][i])
    return np.array([survey.mag_to_counts(p["mag_i"][i] + cols[b], band.name)
                     for b, band in enumerate(survey.bands)])
