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
