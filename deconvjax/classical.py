"""Classical deconvolution baselines: Tikhonov / Wiener with a Laplacian regulariser,
and Richardson-Lucy.

Both work on any set of `Observation`s (several exposures, instruments, resampled
grids): the forward operator ``A`` is the observations' own, its transpose a VJP.
`wiener` is the closed-form Fourier version for one image on a periodic grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse.linalg import cg
from jaxtyping import Array, ArrayLike, Float

from ._types import Cube
from .observation import Observation, as_observations

__all__ = ["laplacian", "tikhonov", "wiener", "richardson_lucy"]


def _model_shape(observations, n_bands):
    nb = max(max(o.band_index) for o in observations) + 1 if n_bands is None else int(n_bands)
    return (nb, *observations[0].frame_shape)


def laplacian(x: Float[Array, "... y x"]) -> Float[Array, "... y x"]:
    """The 5-point discrete Laplacian with periodic edges (symmetric: ``L^T = L``)."""
    return (jnp.roll(x, 1, -1) + jnp.roll(x, -1, -1) + jnp.roll(x, 1, -2) + jnp.roll(x, -1, -2)
            - 4.0 * x)


def tikhonov(observations: Observation | Sequence[Observation], lam: float = 1e-2, *,
             n_bands: int | None = None, maxiter: int = 500, tol: float = 1e-6) -> Cube:
    """Tikhonov-regularised deconvolution with a Laplacian (smoothness) regulariser:

        argmin_x  sum_obs || W^{1/2} (y - A x) ||^2 + lam || L x ||^2,

    i.e. ``(A^T W A + lam L^T L) x = A^T W y``, solved by conjugate gradients (jitted).
    ``lam`` is in units of the weights (inverse variance): ``lam = 1e-2 * w`` makes the
    regulariser 1e-2 times as strong as one pixel's data term. Returns the model cube
    ``(band, ny, nx)`` (``n_bands``: default the largest band index seen + 1).
    """
    observations = as_observations(observations)
    if not lam >= 0:
        raise ValueError(f"lam: expected a non-negative float, got {lam}")
    shape = _model_shape(observations, n_bands)
    return _tikhonov(observations, jnp.float32(lam), shape, int(maxiter), float(tol))


@eqx.filter_jit
def _tikhonov(observations, lam, shape, maxiter, tol):
    zeros = jnp.zeros(shape)

    def at(o, r):
        return jax.linear_transpose(o, zeros)(r)[0]

    rhs = sum(at(o, o.weights * o.data) for o in observations)

    def normal(x):
        return sum(at(o, o.weights * o(x)) for o in observations) + lam * laplacian(laplacian(x))

    x, _ = cg(normal, rhs, maxiter=maxiter, tol=tol)
    return x


def wiener(image: Float[ArrayLike, "band y x"], psf: Float[ArrayLike, "band y x"],
           lam: float, weight: float = 1.0) -> Cube:
    """Closed-form Tikhonov deconvolution of one image on a periodic grid, in Fourier
    space: ``X = conj(H) Y / (|H|^2 + lam / weight |L_k|^2)`` with ``H`` the transfer
    function of ``psf`` (centred on ``(h // 2, w // 2)``, same shape as ``image``) and
    ``L_k`` the Fourier symbol of `laplacian`. Same objective as `tikhonov` when the
    observation is a periodic convolution with uniform weights ``weight``."""
    image = jnp.asarray(image, dtype=float)
    psf = jnp.asarray(psf, dtype=float)
    if image.ndim == 2:
        image = image[None]
    if psf.ndim == 2:
        psf = psf[None]
    if psf.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"psf: expected the image's (y, x) shape {image.shape[-2:]}, got {psf.shape}")
    ny, nx = image.shape[-2:]
    h = jnp.fft.fft2(jnp.fft.ifftshift(psf, axes=(-2, -1)))
    ky = 2 * np.pi * np.fft.fftfreq(ny)[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(nx)[None, :]
    lk = 2 * np.cos(ky) + 2 * np.cos(kx) - 4
    f = jnp.conj(h) * jnp.fft.fft2(image) / (jnp.abs(h) ** 2 + lam / weight * lk**2)
    return jnp.fft.ifft2(f).real


def richardson_lucy(observations: Observation | Sequence[Observation], n_iter: int = 50, *,
                    background: float | None = None, n_bands: int | None = None,
                    x0: Cube | None = None) -> Cube:
    """Richardson-Lucy deconvolution (the Poisson maximum-likelihood EM iteration):

        x <- x * A^T(m * (y + b) / (A x + b)) / A^T m,

    summed over observations, ``m`` the mask of valid pixels (weight > 0). Background-
    subtracted data are made positive by a constant pedestal ``b`` added to data and model
    (default 3 x the largest noise rms). Early stopping (``n_iter``) is the regulariser.
    Starts from a flat image of the data's mean flux unless ``x0`` is given.
    """
    observations = as_observations(observations)
    if int(n_iter) < 0:
        raise ValueError(f"n_iter: expected a non-negative integer, got {n_iter}")
    shape = _model_shape(observations, n_bands)
    if background is None:
        wmin = min(float(jnp.min(jnp.where(o.weights > 0, o.weights, jnp.inf))) for o in observations)
        background = 3.0 / np.sqrt(wmin)
    if x0 is None:
        o = observations[0]
        flux = float(jnp.sum(jnp.where(o.weights > 0, o.data, 0.0)) / o.data.shape[0])
        x0 = jnp.full(shape, max(flux, 1e-12) / (shape[1] * shape[2]))
    x0 = jnp.asarray(x0, dtype=float)
    if x0.shape != shape:
        raise ValueError(f"x0: expected shape {shape}, got {x0.shape}")
    return _rl(observations, x0, jnp.float32(background), int(n_iter))


@eqx.filter_jit
def _rl(observations, x0, b, n_iter):
    zeros = jnp.zeros(x0.shape)

    def at(o, r):
        return jax.linear_transpose(o, zeros)(r)[0]

    masks = [(o.weights > 0).astype(x0.dtype) for o in observations]
    norm = sum(at(o, m) for o, m in zip(observations, masks))
    norm = jnp.where(norm > 0, norm, 1.0)

    def body(_, x):
        ratio = sum(at(o, m * (o.data + b) / jnp.maximum(o(x) + b, 1e-12 * b))
                    for o, m in zip(observations, masks))
        return jnp.clip(x * ratio / norm, 0.0, None)

    return jax.lax.fori_loop(0, n_iter, body, x0)
