"""The sky background of an observation: a smooth plane per band, profiled out of fits.

Real images carry a sky pedestal and gradients that a model of sources alone would
absorb into its sources (or into rows of spurious sources along an edge). The sky belongs
to an observation (each exposure has its own), and it is linear in a few coefficients, so
instead of adding them to the optimiser they are solved for exactly, for the current
source model, wherever the likelihood is evaluated: the chi2 of a fit is the chi2 of the
residual after the best plane per band has been removed (the profile likelihood; with a
flat prior on the coefficients it equals the marginal likelihood up to a constant). Its
gradient with respect to the sources needs no extra term (the coefficients are optimal).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._types import Cube


class PlaneBackground(eqx.Module):
    """A sky background per band: a constant (``order=0``) or a constant plus a linear
    gradient in y and x (``order=1``, the default), in the observation's pixels and flux
    units per pixel.

    Give it to an `Observation` (``background=PlaneBackground()``): its log-likelihood and
    chi2 then use the residual after the best background of each band, and
    `Observation.background_model` returns that background.
    """

    order: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        if self.order not in (0, 1):
            raise ValueError(f"order: expected 0 (constant) or 1 (constant + gradient), got {self.order!r}")

    def basis(self, shape: tuple[int, int]) -> Float[Array, "k y x"]:
        """The ``k`` basis images (1, then y and x running from -1 to 1 across the image)."""
        ny, nx = shape
        one = jnp.ones((ny, nx))
        if self.order == 0:
            return one[None]
        y = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, ny)[:, None], (ny, nx))
        x = jnp.broadcast_to(jnp.linspace(-1.0, 1.0, nx)[None, :], (ny, nx))
        return jnp.stack([one, y, x])

    def solve(self, residual: Cube, weights: Cube, whiten) -> tuple[Float[Array, "band k"], Cube]:
        """The least-squares coefficients ``(band, k)`` of the background of
        ``residual`` ``(band, y, x)`` under the noise model ``whiten(r, weights)`` (a
        linear whitening acting on each band alone), and the background cube they give."""
        basis = self.basis(residual.shape[-2:])
        per_band = jnp.broadcast_to(basis[:, None], (basis.shape[0], *residual.shape))
        white_basis = jax.vmap(lambda b: whiten(b, weights))(per_band)  # (k, band, y, x)
        white_res = whiten(residual, weights)
        gram = jnp.einsum("ibyx,jbyx->bij", white_basis, white_basis)
        rhs = jnp.einsum("ibyx,byx->bi", white_basis, white_res)
        # A tiny ridge keeps bands without valid pixels (all weights 0) solvable: their
        # coefficients come out 0 and change nothing.
        k = basis.shape[0]
        ridge = 1e-6 * (jnp.trace(gram, axis1=1, axis2=2)[:, None, None] / k + 1e-30) * jnp.eye(k)
        coeffs = jnp.linalg.solve(gram + ridge, rhs[..., None])[..., 0]
        return coeffs, jnp.einsum("bk,kyx->byx", coeffs, basis)
