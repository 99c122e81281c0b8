"""An elliptical Gaussian profile, rendered analytically in Fourier space."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import check_shear, finite
from .base import (
    AbstractParametricMorphology,
    MeasuredShape,
    check_stamp_shape,
    fourier_grid,
    phase_ramp,
    pixel_transfer,
    shear_matrix,
    stamp_centre,
)
from .parametrisation import exp_clipped, log_floor, shear_to_u, u_to_shear


class GaussianMorphology(AbstractParametricMorphology):
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
    kind: ClassVar[str] = "gaussian"

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

    # -- parametrisation: log sigma, shear through tanh (|g| < G_MAX).

    def to_unconstrained(self, constraints):
        u1, u2 = shear_to_u(self.g1, self.g2)
        return eqx.tree_at(lambda m: (m.sigma, m.g1, m.g2), self, (log_floor(self.sigma, 1e-3), u1, u2))

    def from_unconstrained(self, constraints):
        g1, g2 = u_to_shear(self.g1, self.g2)
        return eqx.tree_at(lambda m: (m.sigma, m.g1, m.g2), self, (exp_clipped(self.sigma, 7.0), g1, g2))

    def step_sizes(self, steps, constraints):
        return eqx.tree_at(
            lambda m: (m.sigma, m.g1, m.g2),
            self,
            (jnp.full_like(self.sigma, steps["size"]), jnp.full_like(self.g1, steps["shear"]),
             jnp.full_like(self.g2, steps["shear"])),
        )

    @classmethod
    def initial_parameters(cls, measured: MeasuredShape, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        return {"sigma": np.asarray(measured.sigma), "g1": np.asarray(measured.g1), "g2": np.asarray(measured.g2)}

    @classmethod
    def from_parameters(cls, parameters, shape: tuple[int, int]) -> "GaussianMorphology":
        return cls(parameters["sigma"], parameters["g1"], parameters["g2"], shape=shape)

    @classmethod
    def stamp_sigma(cls, measured: MeasuredShape) -> float:
        return float(np.sqrt(measured.sigma**2 + measured.model_sigma2))
