"""PSF matching: the difference kernel that takes the model frame's narrow PSF to an
observation's PSF, evaluated once in Fourier space."""

import warnings

import numpy as np

from .._fft import centred_to_origin


def difference_kernel_fft(
    model_kernel: np.ndarray, obs_kernel: np.ndarray, fft_shape: tuple[int, int]
) -> np.ndarray:
    """Fourier transform (``rfft2`` layout, ``(band, fy, fx // 2 + 1)``) of the kernel
    ``D`` with ``model_psf * D = obs_psf``.

    Both kernels are ``(band or 1, h, w)`` arrays on the model pixel grid, centred on
    ``(h // 2, w // 2)``. The ratio is regularised as
    ``P_obs conj(P_model) / (|P_model|^2 + eps)`` with ``eps`` a 1e-10 fraction of the peak
    power, which only matters where the model PSF carries no information; a warning is
    given when the observation's PSF is narrower than the model's (the ratio then grows
    with frequency and matching amplifies noise)."""
    pm = np.fft.rfft2(centred_to_origin(model_kernel, fft_shape))
    po = np.fft.rfft2(centred_to_origin(obs_kernel, fft_shape))
    power = np.abs(pm) ** 2
    eps = 1e-10 * power.max()
    ratio = po * np.conj(pm) / (power + eps)
    if np.abs(ratio).max() > 1.05:
        warnings.warn(
            "an observation PSF is narrower than the model PSF at some frequencies "
            f"(difference kernel gain {np.abs(ratio).max():.2f} > 1): choose a narrower "
            "model PSF for the frame",
            stacklevel=3,
        )
    return ratio


def reshape_pixel_response(kernel: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """Change the pixel response of centred kernels from the unit model pixel to another
    pixel shape: ``kernel`` ``(band, h, w)``, integrated over unit pixels of the grid it
    is sampled on (``pixel_integrated=True``), becomes the same profile integrated over
    the parallelogram spanned by the columns of ``jacobian`` ``(2, 2)`` (the ``(y, x)``
    steps, in model pixels, of one pixel of another grid: a rotated, larger or smaller
    pixel), still sampled on the model grid with unit sum.

    The kernel's transform is multiplied by the ratio of the two boxes' transforms,
    ``sinc(k.a) sinc(k.b) / (sinc(k_y) sinc(k_x))``; the denominator is at least
    ``sinc(1/2)^2 = 0.41`` below the Nyquist frequency, so the ratio is well conditioned.
    An identity ``jacobian`` returns ``kernel`` unchanged.
    """
    jacobian = np.asarray(jacobian, dtype=np.float64)
    if np.allclose(jacobian, np.eye(2), rtol=0.0, atol=1e-9):
        return kernel
    h, w = kernel.shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    (ay, by), (ax, bx) = jacobian
    ratio = np.sinc(ky * ay + kx * ax) * np.sinc(ky * by + kx * bx) / (np.sinc(ky) * np.sinc(kx))
    if not (h % 2 and w % 2):
        raise ValueError(f"kernel must have odd sizes (centred on a pixel), got {(h, w)}")
    origin = np.fft.ifftshift(kernel, axes=(-2, -1))
    out = np.fft.ifft2(np.fft.fft2(origin) * ratio).real
    out = np.fft.fftshift(out, axes=(-2, -1))
    return out / out.sum(axis=(-2, -1), keepdims=True)
