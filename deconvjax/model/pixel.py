from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .base import AbstractMorphology, check_stamp_shape, phase_ramp


class PixelMorphology(AbstractMorphology):
    """A free-form morphology: a pixel array in the model frame (already seen through
    the model PSF), the scarlet representation of galaxies that no profile describes.

    The image's centre is its centre pixel ``(h // 2, w // 2)``; a sub-pixel offset of
    the source centre is applied as a Fourier phase shift of the array (band-limited
    interpolation, periodic over the stamp).

    **Arguments:**

    - `pixels`: ``(h, w)``; its normalisation is arbitrary (the source's flux in a band is
      its spectrum times the image's sum).
    """

    pixels: Float[Array, "h w"]
    shape: tuple[int, int] = eqx.field(static=True)
    intrinsic: ClassVar[bool] = False

    def __init__(self, pixels):
        image = jnp.asarray(pixels, dtype=float)
        if image.ndim != 2:
            raise ValueError(f"pixels must be a 2-d (h, w) array, got shape {image.shape}")
        self.shape = check_stamp_shape(image.shape)
        self.pixels = image

    def fourier(self, offset):
        return jnp.fft.rfft2(self.pixels) * phase_ramp(self.shape, offset)
