"""Point sources: the model PSF itself at a sub-pixel centre."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .base import AbstractMorphology, check_stamp_shape, phase_ramp, pixel_transfer, stamp_centre


class PointMorphology(AbstractMorphology):
    """A point source: in the model frame it looks like the model PSF, rendered at its
    sub-pixel centre by a Fourier phase shift (exact for the band-limited model PSF).

    **Arguments:**

    - `shape`: stamp shape ``(h, w)``; a few model-PSF widths is enough.
    """

    shape: tuple[int, int] = eqx.field(static=True)
    intrinsic: ClassVar[bool] = True

    def __init__(self, *, shape=(11, 11)):
        self.shape = check_stamp_shape(shape)

    def fourier(self, offset):
        centre = jnp.asarray(stamp_centre(self.shape), dtype=float) + offset
        return pixel_transfer(self.shape) * phase_ramp(self.shape, centre)
