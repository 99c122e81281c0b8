import equinox as eqx
import jax.numpy as jnp

from .._types import Position, Spectrum
from .base import AbstractMorphology


class Source(eqx.Module):
    """A source: a spectrum times a morphology, centred at a sub-pixel position.

    Unbatched as built; a `Scene` stacks sources of the same kind on a leading axis.

    **Arguments:**

    - `spectrum`: ``(band,)`` amplitude per band. For the parametric morphologies, which
      have unit total flux, this is the source's total flux per band (in the units of
      the data: counts, nanomaggies, ...). For a `PixelMorphology` the flux is the
      spectrum times the sum of its pixels.
    - `morphology`: an `AbstractMorphology`.
    - `center`: ``(y, x)`` in model-frame pixels.
    """

    spectrum: Spectrum
    morphology: AbstractMorphology
    center: Position

    def __init__(self, spectrum, morphology: AbstractMorphology, center):
        if not isinstance(morphology, AbstractMorphology):
            raise TypeError(f"morphology must be an AbstractMorphology, got {type(morphology).__name__}")
        self.spectrum = jnp.atleast_1d(jnp.asarray(spectrum, dtype=float))
        self.center = jnp.asarray(center, dtype=float)
        if self.spectrum.ndim != 1:
            raise ValueError(f"spectrum must be (band,), got shape {self.spectrum.shape}")
        if self.center.shape != (2,):
            raise ValueError(f"center must be (y, x), got shape {self.center.shape}")
        self.morphology = morphology
