"""Point sources: the model PSF itself at a sub-pixel centre."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .base import (
    AbstractParametricMorphology,
    MeasuredShape,
    check_stamp_shape,
    phase_ramp,
    pixel_transfer,
    stamp_centre,
)


class PointMorphology(AbstractParametricMorphology):
    """A point source: in the model frame it looks like the model PSF, rendered at its
    sub-pixel centre by a Fourier phase shift (exact for the band-limited model PSF).

    **Arguments:**

    - `shape`: stamp shape ``(h, w)``; a few model-PSF widths is enough.
    """

    shape: tuple[int, int] = eqx.field(static=True)
    intrinsic: ClassVar[bool] = True
    kind: ClassVar[str] = "point"

    def __init__(self, *, shape=(11, 11)):
        self.shape = check_stamp_shape(shape)

    def fourier(self, offset):
        centre = jnp.asarray(stamp_centre(self.shape), dtype=float) + offset
        return pixel_transfer(self.shape) * phase_ramp(self.shape, centre)

    # -- parametrisation: none (the centre and spectrum are the source's).

    def to_unconstrained(self, constraints):
        return self

    def from_unconstrained(self, constraints):
        return self

    def step_sizes(self, steps, constraints):
        return self

    @classmethod
    def initial_parameters(cls, measured: MeasuredShape, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def from_parameters(cls, parameters, shape: tuple[int, int]) -> "PointMorphology":
        return cls(shape=shape)

    @classmethod
    def stamp_sigma(cls, measured: MeasuredShape) -> float:
        # A point source is as wide as the model PSF, whatever its measured moments.
        return float(np.sqrt(measured.model_sigma2))
