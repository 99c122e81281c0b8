"""The host-side containers of an observation and of a simulated field.

`ObservationData` is what every path into deconvjax produces and every consumer takes: the
FITS readers (`deconvjax.io.read_images`, which also reads deconvjax's own files), the
simulations (`deconvjax.sims`), the ``fit`` and ``sample`` commands and the pipelines after
them. It holds numpy arrays on the host, in deconvjax's conventions (arrays ``(band, y, x)``,
pixel centres at integers, 0-based), and says where its noise came from; `frame` and
`to_observation` turn it into the device-side `deconvjax.Frame` / `deconvjax.Observation`.

A simulated field is an observation plus its truth: `SimulatedField` holds an
`ObservationData` (``field.data``) and the truth table, the noise-free image of each source,
the survey preset and the seed. The observation's attributes (``images``, ``variance``,
``psf_images``, ...) read through, so a field can be used wherever its observation can,
and `deconvjax.io.write_field` / `deconvjax.io.read_field` store and restore both parts.

This module is the bottom of the I/O layer: it imports neither the FITS code nor the
simulations (which need GalSim), and the device-side classes only inside the methods that
build them.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from jaxtyping import Bool, Float

from .noise import NoiseEstimate

__all__ = ["ObservationData", "SimulatedField"]


def _weights_from_variance(variance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 ``1 / variance``; 0 where masked, or the variance is not positive and finite."""
    var = np.asarray(variance, np.float64)
    ok = np.isfinite(var) & (var > 0) & ~mask
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)


def _variance_from_weights(weights: np.ndarray) -> np.ndarray:
    """float64 ``1 / weights``; inf where the weight is 0."""
    w = np.asarray(weights, np.float64)
    with np.errstate(divide="ignore"):
        return np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), np.inf)


@dataclasses.dataclass(frozen=True, eq=False)
class ObservationData:
    """One observation's arrays and metadata, host side (numpy).

    Give ``variance`` or ``weights`` (or both, consistent); the other is derived
    (``weights = 1 / variance``, 0 where masked or the variance is not positive and finite;
    ``variance = 1 / weights``, inf where the weight is 0). ``mask`` defaults to no bad
    pixel. The instance is frozen: make a changed copy with `dataclasses.replace`.

    Attributes:
        images: (band, y, x) float32 data.
        weights: (band, y, x) float64 inverse variances, 0 where masked or unknown.
        variance: (band, y, x) variance as given (or ``1 / weights``).
        mask: (band, y, x) bool, True for bad pixels.
        psf_images: (band, h, w) PSF images, or None.
        bands: band names along the band axis.
        wcs: celestial astropy WCS, or None.
        pixel_scale: arcsec per pixel (from PIXSCALE or the WCS), or None.
        psf_pixel_scale: arcsec per pixel of the PSF images (None: the images').
        bunit: the data's unit (the FITS ``BUNIT`` card), or None when not known.
        meta: other header values worth keeping; path: where it was read from ("" if not).
        psf_center: how `deconvjax.psf.ArrayPSF` finds the PSF centre: ``"pixel"`` for
            odd, centred PSFs (deconvjax files, simulations), ``"centroid"`` for foreign
            PSF images.
        noise_source: where the noise came from (``"given: variance map"``, a
            simulation's true variance, ..., or the estimate's method); noise_estimate:
            the `NoiseEstimate` where the noise was estimated from the images, else None.
    """

    images: Float[np.ndarray, "band y x"]
    weights: Float[np.ndarray, "band y x"] | None = None
    variance: Float[np.ndarray, "band y x"] | None = None
    mask: Bool[np.ndarray, "band y x"] | None = None
    psf_images: Float[np.ndarray, "band h w"] | None = None
    bands: tuple[str, ...] = ()
    wcs: WCS | None = None
    pixel_scale: float | None = None
    psf_pixel_scale: float | None = None
    bunit: str | None = None
    meta: dict = dataclasses.field(default_factory=dict)
    path: str = ""
    psf_center: str = "centroid"
    noise_source: str = ""
    noise_estimate: NoiseEstimate | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen
        img = np.asarray(self.images)
        if img.ndim != 3:
            raise ValueError(f"images: expected (band, y, x), got shape {img.shape}")
        nb = img.shape[0]
        bands = tuple(str(b) for b in self.bands) if self.bands else tuple(str(k) for k in range(nb))
        if len(bands) != nb:
            raise ValueError(f"bands: {len(bands)} names {bands} for {nb} image planes")
        set_("bands", bands)
        mask = np.zeros(img.shape, bool) if self.mask is None else np.asarray(self.mask, bool)
        if mask.shape != img.shape:
            raise ValueError(f"mask: expected shape {img.shape}, got {mask.shape}")
        set_("mask", mask)
        if self.weights is None and self.variance is None:
            raise ValueError("weights, variance: give at least one of them")
        for name in ("weights", "variance"):
            a = getattr(self, name)
            if a is not None and np.shape(a) != img.shape:
                raise ValueError(f"{name}: expected shape {img.shape}, got {np.shape(a)}")
        if self.weights is None:
            set_("weights", _weights_from_variance(self.variance, mask))
        if self.variance is None:
            set_("variance", _variance_from_weights(self.weights))
        if self.psf_images is not None:
            psf = np.asarray(self.psf_images)
            if psf.ndim != 3 or psf.shape[0] != nb:
                raise ValueError(f"psf_images: expected (band={nb}, h, w), got shape {psf.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the images."""
        return tuple(np.shape(self.images)[1:])

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
        return Frame(self.bands, self.shape, pixel_scale=ps, wcs=self.wcs, psf=psf)

    def to_observation(self, frame=None, **kwargs):
        """A `deconvjax.Observation`: the PSF an `ArrayPSF` of ``psf_images``, the weights
        ``weights``, 0 where ``mask`` is set (also where the mask was changed in place
        since); ``frame`` defaults to `frame()`, this observation's own grid; other keyword
        arguments go to `Observation`."""
        from deconvjax.observation import Observation
        from deconvjax.psf import ArrayPSF

        if self.psf_images is None:
            raise ValueError(f"{self.path or 'observation'}: no PSF; an Observation needs one")
        if frame is None:
            frame = self.frame()
        ps = self.psf_pixel_scale or self.pixel_scale
        psf = ArrayPSF(self.psf_images, pixel_scale=ps, center=self.psf_center)
        weights = np.where(self.mask, 0.0, self.weights)
        return Observation(self.images, frame=frame, psf=psf, weights=weights,
                           bands=self.bands, wcs=self.wcs, pixel_scale=self.pixel_scale,
                           **kwargs)


@dataclasses.dataclass(eq=False)
class SimulatedField:
    """A simulated observation and its truth (made by `deconvjax.sims.simulate_field`).

    Attributes:
        data: the observation (`ObservationData`): noisy images in electrons over the survey
            preset's exposure, sky subtracted; the true per-pixel variance; odd, centred,
            unit-sum PSFs (pixel response included); the TAN WCS, bands and pixel scale.
        truth: astropy Table, one row per source (see `deconvjax.sims.simulate_field`).
        source_images: (source, band, y, x) float32 noise-free image of each source alone.
        survey: the preset name.
        seed: the seed that made the field (or -1 if unknown).

    ``images``, ``variance``, ``weights``, ``mask``, ``psf_images``, ``wcs``, ``bands``,
    ``pixel_scale``, ``shape``, `frame` and `to_observation` are the observation's.
    """

    data: ObservationData
    truth: Table
    source_images: Float[np.ndarray, "source band y x"]
    survey: str = ""
    seed: int = -1

    def __post_init__(self):
        if not isinstance(self.data, ObservationData):
            raise TypeError(f"data: expected an ObservationData, got {type(self.data).__name__}")
        if not isinstance(self.truth, Table):
            raise TypeError(f"truth: expected an astropy Table, got {type(self.truth).__name__}")
        shape = np.shape(self.data.images)
        if np.ndim(self.source_images) != 4 or np.shape(self.source_images)[1:] != shape:
            raise ValueError(
                f"source_images: expected (source, {', '.join(map(str, shape))}), "
                f"got {np.shape(self.source_images)}"
            )

    # The observation's attributes, read through.
    images = property(lambda self: self.data.images, doc="(band, y, x) noisy images.")
    variance = property(lambda self: self.data.variance, doc="(band, y, x) true variance.")
    weights = property(lambda self: self.data.weights, doc="(band, y, x) inverse variances.")
    mask = property(lambda self: self.data.mask, doc="(band, y, x) bool, True for bad pixels.")
    psf_images = property(lambda self: self.data.psf_images, doc="(band, h, w) PSF images.")
    wcs = property(lambda self: self.data.wcs, doc="The images' celestial WCS.")
    bands = property(lambda self: self.data.bands, doc="Band names.")
    pixel_scale = property(lambda self: self.data.pixel_scale, doc="Arcsec per pixel.")
    shape = property(lambda self: self.data.shape, doc="(ny, nx) of the images.")

    @property
    def noise_free(self) -> Float[np.ndarray, "band y x"]:
        """(band, y, x) sum of all sources without noise."""
        return self.source_images.sum(axis=0)

    def frame(self, psf=None):
        """`ObservationData.frame` of ``data``."""
        return self.data.frame(psf)

    def to_observation(self, frame=None, **kwargs):
        """`ObservationData.to_observation` of ``data``."""
        return self.data.to_observation(frame, **kwargs)
