"""Small Fourier helpers shared by PSF matching, rendering and likelihoods."""

import numpy as np


def good_fft_size(n: int) -> int:
    """Smallest integer >= ``n`` whose prime factors are 2, 3 and 5 (fast for FFTs)."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def centred_to_origin(kernel: np.ndarray, fft_shape: tuple[int, int]) -> np.ndarray:
    """Embed a centred kernel ``(..., h, w)`` in a ``fft_shape`` array with its centre
    pixel ``(h // 2, w // 2)`` moved to index ``(0, 0)`` (wrapped), so that its DFT carries
    no phase ramp and convolution with it does not shift images."""
    h, w = kernel.shape[-2:]
    fy, fx = fft_shape
    if h > fy or w > fx:
        raise ValueError(f"kernel of shape {(h, w)} does not fit an FFT of shape {fft_shape}")
    out = np.zeros(kernel.shape[:-2] + (fy, fx), dtype=kernel.dtype)
    out[..., :h, :w] = kernel
    return np.roll(out, (-(h // 2), -(w // 2)), axis=(-2, -1))
