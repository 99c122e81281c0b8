"""An elliptical Gaussian profile, rendered analytically in Fourier space."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._checks import check_shear, finite
from .base import (
    AbstractMorphology,
    check_stamp_shape,
    fourier_grid,
    phase_ramp,
    pixel_transfer,
    shear_matrix,
    stamp_centre,
)


class GaussianMorphology(AbstractMorphology):
    """An elliptical Gaussian of unit total flux.

    Rendered analytically in Fourier space, pixel integration included, so it is exact
    up to the stamp's periodic wrap (negligible for stamps wider than ~8 sigma).

    **Arguments:**

    - `sigma`: standard deviation in model pixels (of the round profile before shear).
    - `g1`, `g2`: reduced shear (``|g| < 1``), GalSim convention.
    - `shape`: stamp shape ``(h, w)``.
    """

    sigma: Float[Array, ""]
    g1: Float[Array, ""]
    g2: Float[Array, ""]
    shape: tuple[int, int] = eqx.field(static=True)
    intrinsic: ClassVar[bool] = True

    def __init__(self, sigma, g1=0.0, g2=0.0, *, shape=(31, 31)):
        sigma, g1, g2 = finite(sigma, "sigma"), finite(g1, "g1"), finite(g2, "g2")
        check_shear(g1, g2)
        self.sigma = jnp.asarray(sigma, dtype=float)
        self.g1 = jnp.asarray(g1, dtype=float)
        self.g2 = jnp.asarray(g2, dtype=float)
        self.shape = check_stamp_shape(shape)

    def fourier(self, offset):
        ky, kx = fourier_grid(self.shape)
        s = shear_matrix(self.g1, self.g2)
        cov = self.sigma**2 * (s @ s)
        quad = cov[0, 0] * ky**2 + 2 * cov[0, 1] * ky * kx + cov[1, 1] * kx**2
        centre = jnp.asarray(stamp_centre(self.shape), dtype=float) + offset
        return jnp.exp(-2 * jnp.pi**2 * quad) * pixel_transfer(self.shape) * phase_ramp(self.shape, centre)
