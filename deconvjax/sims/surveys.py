"""Survey presets: bands, PSFs, zero points, sky and exposure for realistic noise.

Units used everywhere in `deconvjax.sims`: image pixel values are **electrons (counts, gain 1)
accumulated over the preset's full exposure time** (`Band.exposure_time`, the survey's total
depth in that band), with the sky subtracted. A source of AB magnitude ``m`` in band ``b`` has
``counts = exposure_time * 10 ** (-0.4 * (m - zeropoint))``; ``zeropoint`` is the AB magnitude
giving 1 electron per second. The background noise per pixel has variance
``sky_counts + n_exposures * read_noise**2`` (sky counts from the sky surface brightness), which is
what `Band.background_variance` returns and what the simulated variance planes contain in blank
regions.

Where the numbers come from (all approximate, chosen to be representative, not exact):

- LSST: ten-year total exposure per band (u 1680 s ... r, i 5520 s), dark-sky brightness and
  zenith seeing FWHM of the WeakLensingDeblending / BlendingToolKit `LSST` survey (Ivezic et
  al. 2019, ApJ 873, 111, Table 2; LSST SMTN-002); 8.8 e- read noise per 15 s snap. Zero
  points are computed from the GalSim-shipped LSST total throughput curves (which include a
  standard atmosphere at airmass 1.2) and the 32.4 m^2 effective area; this reproduces that
  package's zero points (e.g. 43.70 e-/s at r = 24) to 3 digits (tested).
- HSC: HSC-SSP Wide depth (Aihara et al. 2018, PASJ 70, S4 and S8): exposure 10 min in g, r and
  20 min in i, z, y; median seeing and sky brightness as in BlendingToolKit's `HSC` survey;
  52.8 m^2 area. GalSim ships no HSC throughputs, so the LSST g r i z y curves stand in for the
  band shapes (colours are therefore LSST-like, a good approximation for these filters).
- HST ACS/WFC F814W as the COSMOS stamps (Koekemoer et al. 2007; Mandelbaum et al. 2012): 0.03
  arcsec drizzled pixels, one orbit (2028 s), AB zero point 25.94 (ACS instrument handbook,
  Sirianni et al. 2005). The sky level is set so the per-pixel variance equals the median
  NOISE_VARIANCE of the GalSim COSMOS sample (6.76e-6 (counts/s)^2 per pixel, i.e. drizzled
  noise); the PSF is an obscured Airy (2.4 m, 33% obscuration) at the band's effective
  wavelength broadened by a 0.06 arcsec-FWHM Gaussian (charge diffusion, jitter, drizzle) to a
  0.09 arcsec FWHM, just above the ~0.085 arcsec of the COSMOS PSF images, so that real COSMOS
  galaxies (whose own PSF is deconvolved) can be redrawn without amplifying their noise.
- Euclid VIS (Euclid Collaboration: Scaramella et al. 2022, A&A 662, A112; Cropper et al. 2024):
  0.1 arcsec pixels, 4 x 566 s wide-survey exposures, zodiacal sky about 22.33 mag/arcsec^2,
  4.4 e- read noise, a broad 550-900 nm band (modelled as a top hat with 0.55 mean system
  throughput, which gives a zero point of 25.5 AB for 1 e-/s), 1.2 m obscured aperture; PSF
  an obscured Airy at the band's effective wavelength broadened by a 0.1 arcsec Gaussian to
  the VIS design FWHM of about 0.16 arcsec.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import galsim
import numpy as np

# A flat f_nu SED: its AB magnitude is the same in every band, so it converts a zero point.
_FLAT_FNU = galsim.SED(galsim.LookupTable([50.0, 5000.0], [1.0, 1.0]), "nm", "fnu")


@dataclasses.dataclass(frozen=True)
class Band:
    """One band of a survey preset.

    Attributes:
        name: band name as used in the band axis of images ("g", "F814W", ...).
        bandpass_file: GalSim-shipped throughput file, or ``None`` for a top hat
            ``(tophat_nm[0], tophat_nm[1])`` of throughput ``tophat_throughput``.
        exposure_time: total exposure (s) of the preset depth.
        n_exposures: number of exposures co-added (multiplies the read-noise variance).
        sky_mag: sky surface brightness (AB mag / arcsec^2).
        psf_fwhm: PSF FWHM (arcsec): seeing for ground, total for space.
        read_noise: read noise per exposure (electrons).
        zeropoint_override: AB mag for 1 e-/s, when a published value is used instead of the
            one computed from throughput and collecting area.
    """

    name: str
    bandpass_file: str | None
    exposure_time: float
    sky_mag: float
    psf_fwhm: float
    n_exposures: int = 1
    read_noise: float = 0.0
    zeropoint_override: float | None = None
    tophat_nm: tuple[float, float] = (550.0, 900.0)
    tophat_throughput: float = 1.0


@dataclasses.dataclass(frozen=True)
class Survey:
    """A survey preset (hashable, so GalSim objects built from it are cached).

    Attributes:
        name: preset name ("lsst", "hsc", "hst", "euclid").
        pixel_scale: arcsec per pixel.
        bands: the bands, in band-axis order.
        effective_area: collecting area in m^2 (for computed zero points).
        psf_kind: "kolmogorov" or "moffat" (ground, with seeing FWHM) or "airy" (space).
        diameter: primary mirror diameter (m), for Airy PSFs.
        obscuration: linear central obscuration, for Airy PSFs.
        space: whether the survey is space based.
        reference_band: band in which detection / blendedness are reported.
        moffat_beta: Moffat beta when ``psf_kind == "moffat"``.
        airy_jitter_fwhm: FWHM (arcsec) of the Gaussian broadening the Airy core.
    """

    name: str
    pixel_scale: float
    bands: tuple[Band, ...]
    effective_area: float
    psf_kind: str = "kolmogorov"
    diameter: float = 8.36
    obscuration: float = 0.0
    space: bool = False
    reference_band: str = "i"
    moffat_beta: float = 3.5
    airy_jitter_fwhm: float = 0.0

    def __post_init__(self):
        if self.psf_kind not in ("kolmogorov", "moffat", "airy"):
            raise ValueError(
                f"psf_kind: expected 'kolmogorov', 'moffat' or 'airy', got {self.psf_kind!r}"
            )
        if self.pixel_scale <= 0:
            raise ValueError(f"pixel_scale: expected > 0 arcsec/pixel, got {self.pixel_scale}")
        names = self.band_names
        if len(set(names)) != len(names):
            raise ValueError(f"bands: names must be unique, got {names}")
        if self.reference_band not in names:
            raise ValueError(f"reference_band: {self.reference_band!r} is not one of {names}")

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        for b in self.bands:
            if b.name == name:
                return b
        raise ValueError(f"band: {name!r} is not a band of survey {self.name!r} {self.band_names}")

    def select(self, bands) -> Survey:
        """The same survey restricted to ``bands`` (in the order given)."""
        if bands is None:
            return self
        bands = tuple(bands)
        if not bands:
            raise ValueError("bands: expected at least one band name")
        chosen = tuple(self.band(b) for b in bands)
        ref = self.reference_band if self.reference_band in bands else bands[len(bands) // 2]
        return dataclasses.replace(self, bands=chosen, reference_band=ref)

    # ---- photometry -------------------------------------------------------------------
    def bandpass(self, name: str) -> galsim.Bandpass:
        return _bandpass(self.band(name))

    def zeropoint(self, name: str) -> float:
        """AB magnitude giving 1 electron per second in band ``name``."""
        return _zeropoint(self, name)

    def mag_to_counts(self, mag, name: str):
        """Electrons over the preset exposure for AB magnitude ``mag`` in band ``name``."""
        b = self.band(name)
        return b.exposure_time * 10.0 ** (-0.4 * (np.asarray(mag) - self.zeropoint(name)))

    def counts_to_mag(self, counts, name: str):
        b = self.band(name)
        return self.zeropoint(name) - 2.5 * np.log10(np.asarray(counts) / b.exposure_time)

    def sky_counts(self, name: str) -> float:
        """Sky electrons per pixel over the preset exposure (subtracted, but adds noise)."""
        b = self.band(name)
        return float(self.mag_to_counts(b.sky_mag, name)) * self.pixel_scale**2

    def background_variance(self, name: str) -> float:
        """Per-pixel noise variance (electrons^2) away from sources: sky + read noise."""
        b = self.band(name)
        return self.sky_counts(name) + b.n_exposures * b.read_noise**2

    # ---- PSF --------------------------------------------------------------------------
    def psf(self, name: str) -> galsim.GSObject:
        """The band's PSF as a GalSim profile (without the pixel response)."""
        return _psf(self, name)

    def psf_margin(self, loss: float = 0.006) -> float:
        """Distance (arcsec) from a point source to the image edges beyond which less than
        ``loss`` of its flux falls, summed over two opposite edges, in the widest band.

        Measured on the drawn PSFs, since Airy (space) and Kolmogorov (ground) wings fall
        slowly: e.g. about 2.7 arcsec for LSST u, 3 arcsec for Euclid VIS, 1.9 for HST.
        """
        return max(_psf_margin(self, b.name, float(loss)) for b in self.bands)


@functools.cache
def _bandpass(band: Band) -> galsim.Bandpass:
    if band.bandpass_file is not None:
        bp = galsim.Bandpass(band.bandpass_file, "nm")
    else:
        lo, hi = band.tophat_nm
        t = band.tophat_throughput
        bp = galsim.Bandpass(
            galsim.LookupTable([lo - 1.0, lo, hi, hi + 1.0], [0.0, t, t, 0.0],
                               interpolant="linear"),
            "nm",
        )
    # Thin the throughput tables: SED integrals become ~10x faster for < 0.1% change.
    return bp.thin(rel_err=1e-4).withZeropoint("AB")


@functools.lru_cache(maxsize=1024)  # bounded: per-epoch variants of a survey are new keys
def _zeropoint(survey: Survey, name: str) -> float:
    b = survey.band(name)
    if b.zeropoint_override is not None:
        return float(b.zeropoint_override)
    bp = _bandpass(b)
    photons = _FLAT_FNU.withMagnitude(0.0, bp).calculateFlux(bp)  # photons/s/cm^2 at AB 0
    return 2.5 * math.log10(photons * survey.effective_area * 1e4)


@functools.lru_cache(maxsize=1024)
def _psf(survey: Survey, name: str) -> galsim.GSObject:
    b = survey.band(name)
    if survey.psf_kind == "kolmogorov":
        return galsim.Kolmogorov(fwhm=b.psf_fwhm)
    if survey.psf_kind == "moffat":
        return galsim.Moffat(beta=survey.moffat_beta, fwhm=b.psf_fwhm)
    lam = _bandpass(b).effective_wavelength
    airy = galsim.Airy(lam=lam, diam=survey.diameter, obscuration=survey.obscuration,
                       scale_unit=galsim.arcsec)
    if survey.airy_jitter_fwhm > 0:
        return galsim.Convolve(airy, galsim.Gaussian(fwhm=survey.airy_jitter_fwhm))
    return airy


@functools.lru_cache(maxsize=1024)
def _psf_margin(survey: Survey, name: str, loss: float) -> float:
    scale = survey.pixel_scale
    half = int(np.ceil(10.0 / scale))  # a 20 arcsec image holds all but ~1e-3 of any preset PSF
    img = survey.psf(name).drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=scale).array
    prof = img.sum(axis=0).astype(np.float64)  # flux per column
    prof /= prof.sum()
    # Flux outside |x| <= h, for h = 0, 1, 2, ... pixels from the centre.
    inside = np.cumsum(prof[half:]) + np.concatenate([[0.0], np.cumsum(prof[:half][::-1])])
    outside = 1.0 - inside
    k = int(np.argmax(outside < loss)) if np.any(outside < loss) else half
    return (k + 0.5) * scale


# ---------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------

def _lsst_band(name, exptime, sky, fwhm):
    # 15 s snaps, two per 30 s visit; read noise 8.8 e- per snap (LSST SRD / descwl).
    n_exp = int(round(exptime / 15.0))
    return Band(name, f"LSST_{name}.dat", exptime, sky, fwhm, n_exposures=n_exp, read_noise=8.8)


LSST = Survey(
    name="lsst",
    pixel_scale=0.2,
    bands=(
        _lsst_band("u", 1680.0, 22.99, 0.859),
        _lsst_band("g", 2400.0, 22.26, 0.814),
        _lsst_band("r", 5520.0, 21.20, 0.781),
        _lsst_band("i", 5520.0, 20.48, 0.748),
        _lsst_band("z", 4800.0, 19.60, 0.725),
        _lsst_band("y", 4800.0, 18.61, 0.703),
    ),
    effective_area=32.4,
    psf_kind="kolmogorov",
    diameter=8.36,
    obscuration=0.61,
    reference_band="i",
)

# HSC-SSP Wide: 4-6 x 150 s (g, r) and 6 x 200 s (i, z, y); read noise 4.5 e-.
HSC = Survey(
    name="hsc",
    pixel_scale=0.168,
    bands=(
        Band("g", "LSST_g.dat", 600.0, 21.40, 0.72, n_exposures=4, read_noise=4.5),
        Band("r", "LSST_r.dat", 600.0, 20.60, 0.67, n_exposures=4, read_noise=4.5),
        Band("i", "LSST_i.dat", 1200.0, 19.70, 0.56, n_exposures=6, read_noise=4.5),
        Band("z", "LSST_z.dat", 1200.0, 18.30, 0.63, n_exposures=6, read_noise=4.5),
        Band("y", "LSST_y.dat", 1200.0, 17.90, 0.64, n_exposures=6, read_noise=4.5),
    ),
    effective_area=52.81,
    psf_kind="kolmogorov",
    diameter=8.2,
    obscuration=0.23,
    reference_band="i",
)

# Sky magnitude chosen so that sky_counts == 6.76e-6 * 2028**2 electrons per 0.03" pixel,
# the median COSMOS NOISE_VARIANCE (see module docstring); no separate read noise.
_HST_VAR = 6.76e-6 * 2028.0**2
_HST_SKY_MAG = 25.94 - 2.5 * math.log10(_HST_VAR / 2028.0 / 0.03**2)
HST = Survey(
    name="hst",
    pixel_scale=0.03,
    bands=(
        Band("F814W", "ACS_wfc_F814W.dat", 2028.0, _HST_SKY_MAG, 0.09, n_exposures=4,
             read_noise=0.0, zeropoint_override=25.94),
    ),
    effective_area=4.03,
    psf_kind="airy",
    diameter=2.4,
    obscuration=0.33,
    space=True,
    reference_band="F814W",
    airy_jitter_fwhm=0.06,
)

EUCLID = Survey(
    name="euclid",
    pixel_scale=0.1,
    bands=(
        Band("VIS", None, 4 * 566.0, 22.33, 0.16, n_exposures=4, read_noise=4.4,
             tophat_nm=(550.0, 900.0), tophat_throughput=0.55),
    ),
    effective_area=1.006,
    psf_kind="airy",
    diameter=1.2,
    obscuration=0.33,
    space=True,
    reference_band="VIS",
    airy_jitter_fwhm=0.1,
)

SURVEYS = {"lsst": LSST, "hsc": HSC, "hst": HST, "euclid": EUCLID}


def get_survey(survey: str | Survey, bands=None) -> Survey:
    """A preset by name ("lsst", "hsc", "hst", "euclid"), optionally restricted to ``bands``."""
    if isinstance(survey, Survey):
        return survey.select(bands)
    if not isinstance(survey, str):
        raise TypeError(f"survey: expected a name or a Survey, got {type(survey).__name__}")
    key = survey.lower()
    if key not in SURVEYS:
        raise ValueError(f"survey: expected one of {sorted(SURVEYS)}, got {survey!r}")
    return SURVEYS[key].select(bands)


# The bandpass in which catalog magnitudes are defined for every survey, so that paired
# space/ground views of one galaxy agree: LSST i (AB).
REFERENCE_BANDPASS = Band("i", "LSST_i.dat", 1.0, 20.0, 0.7)


def reference_bandpass() -> galsim.Bandpass:
    return _bandpass(REFERENCE_BANDPASS)
