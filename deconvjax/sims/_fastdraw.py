"""Multi-band drawing of galaxies whose components share their shape across bands.

A parametric galaxy is a sum of components (bulge, disk, knots) whose shapes do not depend on
the band, only their fluxes do. GalSim, drawing each band separately, evaluates every
component (and every knot) at every k of every band's FFT grid. Here each component's
k-image is computed once (the knots' one as a separable sum, cheap for tens of points), and
each band costs one weighted sum, one multiplication by its cached PSF x pixel k-image, and
one inverse FFT. Conventions match GalSim's ``drawImage(method="auto",
use_true_center=False)``: pixel response included, profile centre on pixel
``(size // 2, size // 2)``, F(k) = integral f(x) exp(-i k.x) dx, and the FFT period follows
GalSim's own choice (``getGoodImageSize``) so folding is at GalSim's level.
"""

from __future__ import annotations

import galsim
import numpy as np


def _fft_size(n: int) -> int:
    # Smallest 2^a or 3 * 2^a >= n, sizes numpy's FFT handles quickly.
    m = 8
    while m < n:
        m *= 2
    return min(m, 3 * m // 4) if 3 * m // 4 >= n else m


def kimage(obj: galsim.GSObject, n_fft: int, scale: float) -> np.ndarray:
    """(n_fft, n_fft // 2 + 1) k-values of ``obj`` on the rfft2 grid of an n_fft image."""
    dk = 2 * np.pi / (n_fft * scale)
    kim = obj.drawKImage(nx=n_fft, ny=n_fft, scale=dk).array  # centred, index n_fft // 2 = 0
    return np.fft.ifftshift(kim)[:, : n_fft // 2 + 1]


def psf_kimage(psf: galsim.GSObject, n_fft: int, scale: float) -> np.ndarray:
    """(n_fft, n_fft // 2 + 1) PSF x pixel k-values on the rfft2 grid of an n_fft image."""
    kim = kimage(psf, n_fft, scale)
    ky = 2 * np.pi * np.fft.fftfreq(n_fft, d=scale)
    kx = 2 * np.pi * np.fft.rfftfreq(n_fft, d=scale)
    pix = np.sinc(ky * scale / (2 * np.pi))[:, None] * np.sinc(kx * scale / (2 * np.pi))[None]
    return kim * pix


def draw_points(
    positions: np.ndarray,
    band_fluxes: np.ndarray,
    psf_k: list[np.ndarray],
    size: int,
    scale: float,
    n_fft: int,
) -> np.ndarray:
    """(band, size, size) images of equal-flux point sources convolved with each band's PSF.

    **Arguments:**

    - `positions`: (n, 2) (x, y) offsets in arcsec from the stamp centre.
    - `band_fluxes`: (band,) total flux of all the points in each band (shared equally).
    - `psf_k`: per band, `psf_kimage` on the ``n_fft`` grid.
    - `size`: stamp side (pixels); the centre is pixel ``size // 2``.
    """
    ky = 2 * np.pi * np.fft.fftfreq(n_fft, d=scale)
    kx = 2 * np.pi * np.fft.rfftfreq(n_fft, d=scale)
    ey = np.exp(-1j * np.outer(ky, positions[:, 1]))  # (ny, n)
    ex = np.exp(-1j * np.outer(positions[:, 0], kx))  # (n, nx)
    # Mean over points of exp(-i k.x_k), computed once for all bands. Broadcast-and-sum
    # rather than ``@``: a BLAS call this small is slower than the loop when BLAS threads
    # contend for the cores.
    unit = (ey[:, :, None] * ex[None]).mean(axis=1)
    c = size // 2
    out = np.empty((len(psf_k), size, size))
    for b, pk in enumerate(psf_k):
        img = np.fft.irfft2(unit * (band_fluxes[b] * pk), s=(n_fft, n_fft))
        # Grid index 0 is the origin; the stamp centre pixel c maps there.
        out[b] = np.roll(img, (c, c), axis=(0, 1))[:size, :size]
    return out


def points_fft_size(positions: np.ndarray, size: int, scale: float, psf_radius: float) -> int:
    """An FFT size whose periodic images of the points + PSF cannot fold into the stamp."""
    r = float(np.abs(positions).max()) if len(positions) else 0.0
    need = size + 2 * int(np.ceil((r + psf_radius) / scale)) + 2
    return _fft_size(max(need, 2 * size))


def points_kimage(positions: np.ndarray, n_fft: int, scale: float) -> np.ndarray:
    """k-image of equal-flux points (unit total flux) at (x, y) ``positions`` (arcsec)."""
    ky = 2 * np.pi * np.fft.fftfreq(n_fft, d=scale)
    kx = 2 * np.pi * np.fft.rfftfreq(n_fft, d=scale)
    ey = np.exp(-1j * np.outer(ky, positions[:, 1]))
    ex = np.exp(-1j * np.outer(positions[:, 0], kx))
    if n_fft <= 256:
        return (ey[:, :, None] * ex[None]).mean(axis=1)
    # Larger grids: einsum's loop avoids the (ny, n, nx) temporary (BLAS is avoided on
    # purpose, see draw_points).
    return np.einsum("yn,nx->yx", ey, ex) / len(positions)


def draw_components(
    component_k: list[np.ndarray],
    fluxes: np.ndarray,
    psf_k: list[np.ndarray],
    size: int,
    n_fft: int,
) -> np.ndarray:
    """(band, size, size) images of ``sum_c fluxes[c, band] * component_c`` convolved with
    each band's PSF x pixel; component k-images have unit flux (value 1 at k = 0)."""
    c = size // 2
    out = np.empty((len(psf_k), size, size))
    for b, pk in enumerate(psf_k):
        total = sum(fluxes[j, b] * kc for j, kc in enumerate(component_k))
        img = np.fft.irfft2(total * pk, s=(n_fft, n_fft))
        out[b] = np.roll(img, (c, c), axis=(0, 1))[:size, :size]
    return out


def good_fft_size(n: int) -> int:
    return _fft_size(n)
