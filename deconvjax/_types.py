"""Shape vocabulary shared across deconvjax.

Arrays are ordered (band, y, x). Positions are (y, x) in pixels of the model frame,
with pixel centres at integer coordinates (pixel ``[0, 0]`` covers ``[-0.5, 0.5)`` on
both axes), unless a `astropy.coordinates.SkyCoord` is given.
"""

from jaxtyping import Array, Bool, Float, Int

Image = Float[Array, "y x"]
Cube = Float[Array, "band y x"]
Spectrum = Float[Array, "band"]
Position = Float[Array, "2"]
Mask = Bool[Array, "band y x"]

__all__ = ["Array", "Bool", "Cube", "Float", "Image", "Int", "Mask", "Position", "Spectrum"]
