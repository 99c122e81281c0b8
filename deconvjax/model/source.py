"""A source: its spectrum (flux per band), morphology and centre (model pixels, or a sky
position converted by the frame's WCS)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from astropy.coordinates import SkyCoord

from .._checks import is_traced, real_array
from .._types import Position, Spectrum
from .base import AbstractMorphology

_UNCONVERTED = (
    "this Source's center is a sky position (SkyCoord), not yet model-frame pixels: put the "
    "Source in a Scene(frame, sources) first (the frame's WCS converts it), or give center "
    "as (y, x) pixels"
)


class SkyCenter:
    """A `Source` centre given as a sky position, waiting for a frame: `Scene` turns it
    into model-frame ``(y, x)`` pixels through its frame's WCS. It is no array: any use as
    one (rendering, `jit`, arithmetic) raises a `TypeError` that says so.

    **Attributes:** `coord`, the scalar `astropy.coordinates.SkyCoord`.
    """

    __slots__ = ("coord",)

    def __init__(self, coord: SkyCoord):
        self.coord = coord

    def _refuse(self, *args, **kwargs):
        raise TypeError(_UNCONVERTED)

    __array__ = __getitem__ = __iter__ = __len__ = __float__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __neg__ = __round__ = _refuse

    @property
    def shape(self):
        raise TypeError(_UNCONVERTED)

    def __repr__(self) -> str:
        return f"SkyCenter({self.coord!r})"


def _finite_array(value, name: str, expected: str) -> np.ndarray:
    arr = real_array(value, name, expected)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


class Source(eqx.Module):
    """A source: a spectrum times a morphology, centred at a sub-pixel position.

    Unbatched as built; a `Scene` stacks sources of the same kind on a leading axis.

    **Arguments:**

    - `spectrum`: ``(band,)`` amplitude per band. For the parametric morphologies, which
      have unit total flux, this is the source's total flux per band (in the units of
      the data: counts, nanomaggies, ...). For a `PixelMorphology` the flux is the
      spectrum times the sum of its pixels.
    - `morphology`: an `AbstractMorphology`.
    - `center`: ``(y, x)`` in model-frame pixels, or a scalar
      `astropy.coordinates.SkyCoord`: kept as a `SkyCenter` until the source is put in a
      `Scene`, whose frame (which must have a WCS) converts it to pixels.

    Concrete values are checked (real numbers, finite, of the right shape); values
    traced under `jit`/`vmap` are not.
    """

    spectrum: Spectrum
    morphology: AbstractMorphology
    center: Position | SkyCenter

    def __init__(self, spectrum, morphology: AbstractMorphology, center):
        if not isinstance(morphology, AbstractMorphology):
            raise TypeError(f"morphology must be an AbstractMorphology, got {type(morphology).__name__}")
        if not is_traced(spectrum):
            spectrum = np.atleast_1d(_finite_array(spectrum, "spectrum", "a (band,) array of real fluxes"))
        self.spectrum = jnp.atleast_1d(jnp.asarray(spectrum, dtype=float))
        if self.spectrum.ndim != 1 or self.spectrum.shape[0] == 0:
            raise ValueError(f"spectrum must be (band,) with at least one band, got shape {self.spectrum.shape}")
        if isinstance(center, SkyCoord):
            if not center.isscalar:
                raise ValueError(f"center must be a single sky position, got a SkyCoord of shape {center.shape}")
            self.center = SkyCenter(center)
        elif isinstance(center, SkyCenter):
            self.center = center
        else:
            if not is_traced(center):
                center = _finite_array(center, "center", "(y, x) model-frame pixels or a SkyCoord")
            self.center = jnp.asarray(center, dtype=float)
            if self.center.shape != (2,):
                raise ValueError(f"center must be (y, x), got shape {self.center.shape}")
        self.morphology = morphology
