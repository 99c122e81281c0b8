"""Periodic convolution with a centred PSF on the image's own grid: the forward operator
that the amortised methods are trained and measured with (``y = h * x + n``)."""

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Complex, Float


def transfer_function(psf: Float[ArrayLike, "*band h w"], shape: tuple[int, int]) -> Complex[Array, "*band ny nx"]:
    """The DFT of `psf` (centred on pixel ``(h // 2, w // 2)``, unit sum for flux
    conservation) embedded in a ``shape`` grid with its centre moved to the origin, so that
    multiplying by it convolves without shifting. A PSF larger than ``shape`` is an error."""
    psf = jnp.asarray(psf, dtype=float)
    h, w = psf.shape[-2:]
    ny, nx = shape
    if h > ny or w > nx:
        raise ValueError(f"psf: expected at most the image's (y, x) shape {tuple(shape)}, got {(h, w)}")
    padded = jnp.zeros(psf.shape[:-2] + (ny, nx), dtype=psf.dtype).at[..., :h, :w].set(psf)
    padded = jnp.roll(padded, (-(h // 2), -(w // 2)), axis=(-2, -1))
    return jnp.fft.fft2(padded)


def convolve(image: Float[ArrayLike, "*batch y x"], psf: Float[ArrayLike, "*band h w"]) -> Float[Array, "*batch y x"]:
    """``h * image`` on the periodic grid of `image` (leading axes broadcast with the PSF's)."""
    image = jnp.asarray(image, dtype=float)
    return jnp.fft.ifft2(jnp.fft.fft2(image) * transfer_function(psf, image.shape[-2:])).real
