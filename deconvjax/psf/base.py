"""The PSF family's interface (a kernel on any stamp, per band) and the helpers its members
share: per-band parameters, normalisation, pixel-integration offsets."""

import abc
from collections.abc import Sequence
from typing import ClassVar

import equinox as eqx
import numpy as np


def per_band(value: float | Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """A PSF parameter as a float64 array with one entry per band (or a single entry
    that broadcasts over bands), validated to be finite and positive."""
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-d sequence (one per band), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and positive, got {arr}")
    return arr


def broadcast_bands(arr: np.ndarray, n_bands: int, name: str) -> np.ndarray:
    if len(arr) == 1:
        return np.repeat(arr, n_bands)
    if len(arr) != n_bands:
        raise ValueError(f"{name} has {len(arr)} entries but {n_bands} bands were asked for")
    return arr


class AbstractPSF(eqx.Module):
    """A point-spread function, per band.

    PSFs are host-side descriptions: `kernel` renders them once, in float64 numpy, on the
    pixel grid where they are used (PSF matching kernels, point sources); the device only
    ever sees the resulting arrays.

    Conventions, chosen deliberately:

    - A kernel of shape ``(h, w)`` has the PSF centre on pixel ``(h // 2, w // 2)``; for even
      sizes that is the pixel just past the middle (the FFT convention).
    - Kernels are normalised to unit sum over the kernel box: a PSF's normalisation is
      not a model parameter, and flux outside the box is taken to be part of the
      photometric calibration.
    - Analytic PSFs (`GaussianPSF`, `MoffatPSF`) are optical profiles, sizes in arcsec;
      they can be rendered pixel-integrated (the effective PSF of a pixel of that size)
      or sampled at pixel centres. Array PSFs are effective PSFs at their own sampling.
    - `effective` says which: an effective PSF already holds the detector's pixel
      response, so an observation samples it at its pixel centres; an optical profile is
      integrated over each observed pixel's footprint.
    """

    effective: ClassVar[bool] = False

    @abc.abstractmethod
    def kernel(
        self,
        shape: tuple[int, int],
        pixel_scale: float,
        n_bands: int,
        *,
        pixel_integrated: bool = True,
    ) -> np.ndarray:
        """Render the PSF as a ``(n_bands, h, w)`` float64 array on pixels of
        ``pixel_scale`` arcsec, centred on pixel ``(h // 2, w // 2)``, unit sum per band."""

    @abc.abstractmethod
    def radius(self) -> float:
        """The radius in arcsec of the PSF's core (90% of the flux for analytic
        profiles, half the image for array PSFs), used to check that the PSF fits in a
        frame. Kernels themselves span the whole frame."""


def normalise(kernel: np.ndarray, name: str = "psf") -> np.ndarray:
    total = kernel.sum(axis=(-2, -1), keepdims=True)
    if np.any(~np.isfinite(total)) or np.any(total <= 0):
        raise ValueError(f"{name} must have a positive, finite sum in every band, got {total.ravel()}")
    return kernel / total


def gauss_legendre_offsets(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes in (-1/2, 1/2) and weights (summing to one) of n-point Gauss-Legendre
    quadrature over one pixel."""
    x, w = np.polynomial.legendre.leggauss(n)
    return x / 2.0, w / 2.0
