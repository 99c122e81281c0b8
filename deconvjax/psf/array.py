"""PSFs given as images (measured or drawn), optical or effective (pixel response
included), recentred and resampled onto the grids that need them."""

from typing import ClassVar, Literal

import jax.numpy as jnp
import numpy as np

from .._checks import real_array
from ..resample import bin_pixels, bspline3_prefilter, interpolate
from .base import AbstractPSF, normalise


def _centre(image: np.ndarray, how) -> np.ndarray:
    """(y, x) of the PSF centre of a (band, h, w) image, per band."""
    n, h, w = image.shape
    if isinstance(how, str):
        if how == "pixel":
            return np.tile([h // 2, w // 2], (n, 1)).astype(np.float64)
        if how == "peak":
            idx = image.reshape(n, -1).argmax(axis=1)
            return np.stack(np.unravel_index(idx, (h, w)), axis=-1).astype(np.float64)
        if how == "centroid":
            # First moment within a Gaussian window, re-centred on the moment until it
            # settles, so that noise in the far wings of real PSF images does not drag
            # the centre and a window started on one of several equal peak pixels
            # does not bias it.
            yy, xx = np.mgrid[:h, :w]
            width = max(2.0, min(h, w) / 8.0)
            out = []
            for img, (cy, cx) in zip(image, _centre(image, "peak")):
                for _ in range(20):
                    wgt = np.clip(img, 0, None) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
                    cy, cx = (wgt * yy).sum() / wgt.sum(), (wgt * xx).sum() / wgt.sum()
                out.append([cy, cx])
            return np.asarray(out)
        raise ValueError(f"center must be 'centroid', 'peak', 'pixel' or (y, x), got {how!r}")
    c = np.asarray(how, dtype=np.float64)
    if c.shape != (2,):
        raise ValueError(f"center must be 'centroid', 'peak', 'pixel' or (y, x), got {how!r}")
    return np.tile(c, (n, 1))


def _shift_and_cut(img: np.ndarray, cy: float, cx: float, shape: tuple[int, int]) -> np.ndarray:
    """Move the centre ``(cy, cx)`` of ``img`` onto the centre pixel of a ``shape``
    kernel: the sub-pixel part by a Fourier phase shift (exact for a band-limited PSF,
    unlike interpolation), the integer part by cutting or padding."""
    h, w = img.shape
    iy, ix = int(round(cy)), int(round(cx))
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    if iy == cy and ix == cx:
        shifted = img  # no sub-pixel part: skip the FFT round trip (PSFs centred on a pixel)
    else:
        phase = np.exp(-2j * np.pi * (ky * (iy - cy) + kx * (ix - cx)))
        shifted = np.fft.ifft2(np.fft.fft2(img) * phase).real
    out = np.zeros(shape)
    ty, tx = shape[0] // 2, shape[1] // 2
    y0, x0 = max(0, iy - ty), max(0, ix - tx)
    y1, x1 = min(h, iy - ty + shape[0]), min(w, ix - tx + shape[1])
    out[y0 - iy + ty : y1 - iy + ty, x0 - ix + tx : x1 - ix + tx] = shifted[y0:y1, x0:x1]
    return out


class ArrayPSF(AbstractPSF):
    """A PSF given as an image (an effective PSF: optics and pixel response together),
    possibly supersampled, as HST and survey PSF models come.

    **Arguments:**

    - `image`: ``(h, w)`` for all bands or ``(band, h, w)``; any normalisation (it is
      normalised to unit sum), no NaN or inf.
    - `pixel_scale`: arcsec per pixel of the instrument the PSF belongs to. `None` means
      "the observation's pixel scale" and is filled in by `Observation`.
    - `oversampling`: the image is sampled ``oversampling`` times finer than
      `pixel_scale` (e.g. 4 for a 4x supersampled HST PSF model).
    - `center`: where the PSF centre is in the image: ``"centroid"`` (default; its first
      moment near the peak), ``"peak"``, ``"pixel"`` (pixel ``(h // 2, w // 2)``), or an
      explicit ``(y, x)``. Even-sized images are common and their centre usually lies
      between pixels, so the centroid is the safe default; rendering moves that centre
      onto the kernel's centre pixel by interpolation.
    """

    effective: ClassVar[bool] = True
    image: np.ndarray
    pixel_scale: float | None
    oversampling: int
    center: np.ndarray

    def __init__(
        self,
        image,
        pixel_scale: float | None = None,
        oversampling: int = 1,
        center: Literal["centroid", "peak", "pixel"] | tuple[float, float] = "centroid",
    ):
        image = real_array(image, "psf image", "an (h, w) or (band, h, w) array of real numbers")
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise ValueError(f"psf image must be (h, w) or (band, h, w), got shape {image.shape}")
        if not np.all(np.isfinite(image)):
            raise ValueError("psf image contains NaN or inf; clean or mask it before use")
        if int(oversampling) != oversampling or oversampling < 1:
            raise ValueError(f"oversampling must be a positive integer, got {oversampling}")
        if pixel_scale is not None and not pixel_scale > 0:
            raise ValueError(f"pixel_scale must be positive, got {pixel_scale}")
        self.image = normalise(image, "psf image")
        self.pixel_scale = None if pixel_scale is None else float(pixel_scale)
        self.oversampling = int(oversampling)
        self.center = _centre(self.image, center)

    @property
    def native_scale(self) -> float:
        if self.pixel_scale is None:
            raise ValueError("this ArrayPSF has no pixel_scale; give one, or attach it to an Observation")
        return self.pixel_scale / self.oversampling

    def kernel(self, shape, pixel_scale, n_bands, *, pixel_integrated=True):
        # An image PSF is an effective PSF already (the detector's pixel response is in
        # it): on a grid coarser than its own, ``pixel_integrated`` sums it over each
        # target pixel; otherwise it is sampled (cubic B-spline) at the target pixel centres.
        nb = self.image.shape[0]
        if nb not in (1, n_bands):
            raise ValueError(f"psf image has {nb} bands but {n_bands} bands were asked for")
        ratio = pixel_scale / self.native_scale
        sub = max(1, int(np.ceil(ratio - 1e-9))) if pixel_integrated else 1
        h, w = shape
        u = (np.arange(h * sub) + 0.5) / sub - 0.5 - h // 2
        v = (np.arange(w * sub) + 0.5) / sub - 0.5 - w // 2
        out = []
        for b in range(n_bands):
            img, (cy, cx) = self.image[b % nb], self.center[b % nb]
            if abs(ratio - 1.0) < 1e-9:
                out.append(_shift_and_cut(img, cy, cx, shape))
                continue
            yy, xx = np.meshgrid(cy + u * ratio, cx + v * ratio, indexing="ij")
            coords = jnp.asarray(np.stack([yy, xx], -1), dtype=jnp.float32)
            # Cubic B-spline of the prefiltered image: PSF shapes set the accuracy of
            # everything downstream, and on smooth profiles the spline's error is ~10x
            # below Lanczos-3's (which does not reproduce gradients exactly).
            coef = np.fft.irfft2(np.fft.rfft2(img) * bspline3_prefilter(img.shape), s=img.shape)
            vals = interpolate(jnp.asarray(coef, dtype=jnp.float32), coords, "bspline3")
            out.append(np.asarray(bin_pixels(vals, sub), dtype=np.float64))
        return normalise(np.stack(out))

    def radius(self) -> float:
        h, w = self.image.shape[-2:]
        return 0.5 * max(h, w) * self.native_scale
