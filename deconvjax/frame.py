"""The model frame: the pixel grid, bands and narrow PSF that a scene is rendered in."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from .psf import AbstractPSF, GaussianPSF
from .wcs import checked_wcs


@dataclass(frozen=True, eq=False)
class Frame:
    """The model frame: where a `Scene` lives.

    A frame is host-side metadata (it holds an astropy WCS) and is never passed into
    jitted code: everything the device needs from it is turned into arrays when a
    `Scene` or an `Observation` is built from it.

    **Arguments:**

    - `bands`: band names, e.g. ``("g", "r", "i")``; the model cube is ``(band, y, x)``.
    - `shape`: ``(ny, nx)`` in model pixels.
    - `pixel_scale`: arcsec per model pixel. Without a WCS, ``1.0`` makes every size
      below (PSF widths, ...) a size in pixels.
    - `wcs`: optional celestial astropy WCS of the model grid (TAN, SIP, ...). Needed to
      combine observations with other pointings or orientations, and to use sky
      positions.
    - `psf`: the model PSF, the same in all bands (a narrow Gaussian of sigma 1 model
      pixels by default). The model cube is the sky as seen through it; every
      observation's PSF must be wider.
    """

    bands: tuple[str, ...]
    shape: tuple[int, int]
    pixel_scale: float = 1.0
    wcs: WCS | None = None
    psf: AbstractPSF = field(default=None)  # type: ignore[assignment]

    def __init__(
        self,
        bands: Sequence[str],
        shape: tuple[int, int],
        pixel_scale: float | None = None,
        wcs: WCS | None = None,
        psf: AbstractPSF | None = None,
    ):
        if isinstance(bands, str) or not all(isinstance(b, str) for b in bands):
            raise TypeError(f"bands must be a sequence of band names (str), got {bands!r}")
        bands = tuple(bands)
        if len(bands) == 0 or len(set(bands)) != len(bands):
            raise ValueError(f"bands must be non-empty and unique, got {bands}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (ny, nx) with positive sizes, got {shape}")
        wcs, pixel_scale = checked_wcs(wcs, pixel_scale, owner="frame")
        pixel_scale = 1.0 if pixel_scale is None else float(pixel_scale)
        if not (pixel_scale > 0 and np.isfinite(pixel_scale)):
            raise ValueError(f"pixel_scale must be positive and finite, got {pixel_scale}")
        if psf is None:
            psf = GaussianPSF(1.0 * pixel_scale)
        if not isinstance(psf, AbstractPSF):
            raise TypeError(f"psf must be an AbstractPSF, got {type(psf).__name__}")
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "pixel_scale", pixel_scale)
        object.__setattr__(self, "wcs", wcs)
        object.__setattr__(self, "psf", psf)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    def psf_kernel(self, shape: tuple[int, int], *, pixel_integrated: bool) -> np.ndarray:
        """The model PSF rendered on model pixels, ``(h, w)`` float64, unit sum."""
        return self.psf.kernel(shape, self.pixel_scale, 1, pixel_integrated=pixel_integrated)[0]

    def to_pixel(self, coord: SkyCoord) -> np.ndarray:
        """Model-frame ``(y, x)`` pixel positions (float64, ``(..., 2)``) of sky positions."""
        if self.wcs is None:
            raise ValueError("this frame has no WCS: give positions in pixels (y, x)")
        x, y = self.wcs.world_to_pixel(coord)
        return np.stack([np.asarray(y), np.asarray(x)], axis=-1)

    def to_sky(self, yx) -> SkyCoord:
        """Sky positions of model-frame ``(y, x)`` pixel positions ``(..., 2)``."""
        if self.wcs is None:
            raise ValueError("this frame has no WCS: positions are only known in pixels")
        yx = np.asarray(yx, dtype=np.float64)
        return self.wcs.pixel_to_world(yx[..., 1], yx[..., 0])

    def positions(self, positions) -> np.ndarray:
        """Turn ``positions`` (a SkyCoord, or ``(y, x)`` pixels ``(n, 2)``) into model
        pixels ``(n, 2)`` float64."""
        if isinstance(positions, SkyCoord):
            return np.atleast_2d(self.to_pixel(positions))
        arr = np.atleast_2d(np.asarray(positions, dtype=np.float64))
        if arr.shape[-1] != 2 or arr.ndim != 2:
            raise ValueError(f"positions must be a SkyCoord or (n, 2) pixel (y, x), got shape {arr.shape}")
        return arr
