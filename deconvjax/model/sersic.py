"""Sersic profiles, pixel-integrated by Gauss-Legendre quadrature so that cuspy cores (n of
4 and more) keep their flux on coarse pixels."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jaxtyping import Array, Float

from .._checks import check_shear, finite, is_traced
from .base import AbstractParametricMorphology, MeasuredShape, check_stamp_shape, shear_matrix, stamp_centre
from .parametrisation import exp_clipped, log_floor, logit_n, shear_to_u, sigmoid_n, u_to_shear


def sersic_b(n: Float[Array, ""]) -> Float[Array, ""]:
    """``b_n`` such that the half-light radius holds half the flux (Ciotti & Bertin
    1999 asymptotic series; relative error < 1e-6 for n > 0.36)."""
    return (
        2.0 * n
        - 1.0 / 3.0
        + 4.0 / (405.0 * n)
        + 46.0 / (25515.0 * n**2)
        + 131.0 / (1148175.0 * n**3)
        - 2194697.0 / (30690717750.0 * n**4)
    )


def _gl(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return x / 2.0, w / 2.0


class SersicMorphology(AbstractParametricMorphology):
    """An elliptical Sersic profile ``I(r) ~ exp(-b_n (r / r_e)^(1/n))`` of unit total
    flux (over the infinite plane: light beyond the stamp is lost, as on a detector).

    Pixel integration is by 4x4-point Gauss-Legendre quadrature per pixel, and on the 3x3
    pixels around the centre, where the cusp of large-``n`` profiles lives, by 8x8
    sub-pixels with 4x4 points each.

    **Arguments:**

    - `n`: Sersic index (0.36 < n < 8; 1 is exponential, 4 de Vaucouleurs).
    - `r_e`: half-light radius in model pixels (of the round profile before shear).
    - `g1`, `g2`: reduced shear (``|g| < 1``), GalSim convention.
    - `shape`: stamp shape ``(h, w)``.
    """

    n: Float[Array, ""]
    r_e: Float[Array, ""]
    g1: Float[Array, ""]
    g2: Float[Array, ""]
    shape: tuple[int, int] = eqx.field(static=True)
    intrinsic: ClassVar[bool] = True
    kind: ClassVar[str] = "sersic"

    def __init__(self, n, r_e, g1=0.0, g2=0.0, *, shape=(31, 31)):
        n, r_e, g1, g2 = finite(n, "n"), finite(r_e, "r_e"), finite(g1, "g1"), finite(g2, "g2")
        for name, v in (("n", n), ("r_e", r_e)):
            if not is_traced(v) and np.any(v <= 0):
                raise ValueError(f"{name} must be positive, got {v.tolist()}")
        check_shear(g1, g2)
        self.n = jnp.asarray(n, dtype=float)
        self.r_e = jnp.asarray(r_e, dtype=float)
        self.g1 = jnp.asarray(g1, dtype=float)
        self.g2 = jnp.asarray(g2, dtype=float)
        self.shape = check_stamp_shape(shape)

    def _profile(self, dy, dx):
        s = shear_matrix(self.g1, self.g2)
        # The inverse of the area-preserving shear: swap the diagonal, negate g2.
        sinv = jnp.array([[s[1, 1], -s[0, 1]], [-s[1, 0], s[0, 0]]])
        m = sinv @ sinv
        r2 = m[0, 0] * dy**2 + 2 * m[0, 1] * dy * dx + m[1, 1] * dx**2
        b = sersic_b(self.n)
        log_norm = (
            jnp.log(2 * jnp.pi * self.n) + 2 * jnp.log(self.r_e) + gammaln(2 * self.n)
            - 2 * self.n * jnp.log(b)
        )
        # The small offset keeps the gradient finite should a node sit on the centre.
        r = jnp.sqrt(r2 + 1e-12) / self.r_e
        return jnp.exp(-b * r ** (1.0 / self.n) - log_norm)

    def _integrate(self, cy, cx, ys, xs, nodes, weights):
        """Mean of the profile over boxes centred on (ys, xs) of unit/len(nodes) size."""
        dy = ys[:, None, None, None] + nodes[None, None, :, None] - cy
        dx = xs[None, :, None, None] + nodes[None, None, None, :] - cx
        vals = self._profile(dy, dx)
        return jnp.einsum("yxij,i,j->yx", vals, weights, weights)

    def fourier(self, offset):
        h, w = self.shape
        py, px = stamp_centre(self.shape)
        cy, cx = py + offset[0], px + offset[1]
        nodes, weights = _gl(4)
        nodes, weights = jnp.asarray(nodes), jnp.asarray(weights)
        img = self._integrate(cy, cx, jnp.arange(h, dtype=float), jnp.arange(w, dtype=float), nodes, weights)
        # Refine the central 3x3 pixels: split each into 8x8 sub-pixels.
        sub = 8
        fine = (jnp.arange(3 * sub) + 0.5) / sub - 1.5
        centre = self._integrate(cy, cx, py + fine, px + fine, nodes / sub, weights)
        centre = centre.reshape(3, sub, 3, sub).mean(axis=(1, 3))
        img = img.at[py - 1 : py + 2, px - 1 : px + 2].set(centre)
        return jnp.fft.rfft2(img)

    # -- parametrisation: n logistic on (N_MIN, N_MAX), log r_e, shear through tanh.

    def to_unconstrained(self, constraints):
        u1, u2 = shear_to_u(self.g1, self.g2)
        return eqx.tree_at(
            lambda m: (m.n, m.r_e, m.g1, m.g2), self, (logit_n(self.n), log_floor(self.r_e, 1e-3), u1, u2)
        )

    def from_unconstrained(self, constraints):
        g1, g2 = u_to_shear(self.g1, self.g2)
        return eqx.tree_at(
            lambda m: (m.n, m.r_e, m.g1, m.g2), self, (sigmoid_n(self.n), exp_clipped(self.r_e, 7.0), g1, g2)
        )

    def step_sizes(self, steps, constraints):
        return eqx.tree_at(
            lambda m: (m.n, m.r_e, m.g1, m.g2),
            self,
            (jnp.full_like(self.n, steps["n"]), jnp.full_like(self.r_e, steps["size"]),
             jnp.full_like(self.g1, steps["shear"]), jnp.full_like(self.g2, steps["shear"])),
        )

    @classmethod
    def initial_parameters(cls, measured: MeasuredShape, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        # A Gaussian's half-light radius is 1.177 sigma; start exponential-like.
        return {"n": np.asarray(1.0), "r_e": np.asarray(1.177 * measured.sigma),
                "g1": np.asarray(measured.g1), "g2": np.asarray(measured.g2)}

    @classmethod
    def from_parameters(cls, parameters, shape: tuple[int, int]) -> "SersicMorphology":
        return cls(parameters["n"], parameters["r_e"], parameters["g1"], parameters["g2"], shape=shape)

    @classmethod
    def stamp_sigma(cls, measured: MeasuredShape) -> float:
        return float(np.sqrt(measured.sigma**2 + measured.model_sigma2))
