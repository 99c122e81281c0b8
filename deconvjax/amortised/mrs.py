"""Debiasing with a multi-resolution support (Starck et al.; Akhaury et al. 2022).

A learned denoiser biases its output towards the training set; the debiasing step pulls it
back towards the data, but only where the data say something: in the starlet coefficients
(`deconvjax.model.starlet`) of the observation that stand above the noise.

- `starlet_noise_levels`: the standard deviation, per starlet scale, of unit white noise
  (the norm of each scale's impulse response, away from the edges).
- `multiresolution_support`: ``M_j(p) = 1`` where ``|W_j y(p)| > k sigma sigma_j``, for the
  wavelet scales ``j`` of the observation ``y`` (white noise of std ``sigma``); the coarse
  scale is always kept.
- `mrs_debias`: gradient descent on ``f(x) = 1/2 ||M . W(y - h * x)||^2`` from the network's
  output, step ``1 / L`` with ``L = max|H|^2 ||W||^2`` the gradient's Lipschitz bound
  (``||W||`` the starlet operator norm, from `starlet_operator_norm`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ..model.starlet import starlet_transform
from .convolution import transfer_function

__all__ = ["starlet_noise_levels", "starlet_operator_norm", "multiresolution_support", "mrs_debias"]


def _check_scales(scales, shape):
    if int(scales) != scales or scales < 1:
        raise ValueError(f"scales: expected a positive integer, got {scales}")
    if 2 ** (int(scales) + 1) > min(shape):
        raise ValueError(f"scales: {scales} scales need images larger than 2**(scales+1) pixels, got {shape}")
    return int(scales)


@functools.lru_cache(maxsize=32)
def starlet_noise_levels(scales: int) -> np.ndarray:
    """``(scales,)``: the standard deviation of each wavelet scale of `starlet_transform`
    for unit white noise (finest first), i.e. the L2 norm of each scale's response to a
    delta far from the edges."""
    scales = int(scales)
    if scales < 1:
        raise ValueError(f"scales: expected a positive integer, got {scales}")
    n = 2 ** (scales + 3) + 1
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    w = starlet_transform(delta, scales)[:-1]
    return np.sqrt((w**2).sum(axis=(-2, -1)))


@functools.lru_cache(maxsize=32)
def starlet_operator_norm(shape: tuple[int, int], scales: int, iterations: int = 50) -> float:
    """``||W||``, the largest singular value of the starlet transform of ``shape`` images
    (power iteration on ``W^T W``, with a 1 % margin so that ``1 / L`` stays a safe step)."""
    scales = _check_scales(scales, shape)
    zeros = jnp.zeros(shape)
    transpose = jax.linear_transpose(lambda x: starlet_transform(x, scales), zeros)

    def body(_, v):
        u = transpose(starlet_transform(v, scales))[0]
        return u / jnp.linalg.norm(u)

    v0 = jax.random.normal(jax.random.PRNGKey(0), shape)
    v = jax.lax.fori_loop(0, iterations, body, v0 / jnp.linalg.norm(v0))
    return float(1.01 * jnp.linalg.norm(starlet_transform(v, scales)))


def multiresolution_support(observed: Float[ArrayLike, "*batch y x"], sigma: Float[ArrayLike, "*batch"],
                            scales: int, k: float = 3.0) -> Bool[Array, "*batch scale y x"]:
    """The support ``(..., scales + 1, y, x)``: wavelet coefficients of `observed` above
    ``k sigma sigma_j`` (`sigma`: the white noise's std per image), coarse scale all true."""
    observed = jnp.asarray(observed, dtype=jnp.float32)
    sigma = jnp.asarray(sigma, dtype=jnp.float32)
    if observed.ndim < 2:
        raise ValueError(f"observed: expected images (..., y, x), got shape {observed.shape}")
    if sigma.shape != observed.shape[:-2]:
        raise ValueError(f"sigma: expected shape {observed.shape[:-2]} (one per image), got {sigma.shape}")
    if not k >= 0:
        raise ValueError(f"k: expected a non-negative threshold in noise sigmas, got {k}")
    scales = _check_scales(scales, observed.shape[-2:])
    w = starlet_transform(observed, scales)
    level = jnp.asarray(starlet_noise_levels(scales), dtype=w.dtype)
    thresh = k * sigma[..., None, None, None] * level[:, None, None]
    significant = jnp.abs(w[..., :-1, :, :]) > thresh
    coarse = jnp.ones_like(significant[..., :1, :, :])
    return jnp.concatenate([significant, coarse], axis=-3)


@functools.partial(jax.jit, static_argnames=("scales",))
def _debias(x0, observed, h, support, step, scales, steps):
    def forward(x):
        return jnp.fft.ifft2(jnp.fft.fft2(x) * h).real

    def adjoint(r):
        return jnp.fft.ifft2(jnp.fft.fft2(r) * jnp.conj(h)).real

    transpose = jax.linear_transpose(lambda x: starlet_transform(x, scales), x0)

    def body(_, x):
        w = support * starlet_transform(observed - forward(x), scales)
        return x + step * adjoint(transpose(w)[0])

    return jax.lax.fori_loop(0, steps, body, x0)


def mrs_debias(x0: Float[ArrayLike, "*batch y x"], observed: Float[ArrayLike, "*batch y x"],
               psf: Float[ArrayLike, "*batch h w"], support: Bool[ArrayLike, "*batch scale y x"],
               steps: int = 20) -> Float[Array, "*batch y x"]:
    """`steps` gradient steps from `x0` on ``1/2 ||M . W(y - h * x)||^2`` (``M`` the
    `support`, ``W`` the starlet transform with ``support.shape[-3] - 1`` scales, ``h * x``
    the periodic convolution with the centred `psf`), step ``1 / (max|H|^2 ||W||^2)``."""
    x0 = jnp.asarray(x0, dtype=jnp.float32)
    observed = jnp.asarray(observed, dtype=jnp.float32)
    support = jnp.asarray(support)
    if observed.shape != x0.shape:
        raise ValueError(f"observed: expected the shape of x0 {x0.shape}, got {observed.shape}")
    if support.shape != x0.shape[:-2] + (support.shape[-3],) + x0.shape[-2:] or support.shape[-3] < 2:
        raise ValueError(f"support: expected (..., scales + 1, y, x) matching x0 {x0.shape}, got {support.shape}")
    psf = jnp.asarray(psf, dtype=jnp.float32)
    if psf.ndim != x0.ndim:
        raise ValueError(f"psf: expected {x0.ndim} axes (one PSF per image), got shape {psf.shape}")
    h = transfer_function(psf, x0.shape[-2:])
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps: expected a non-negative integer, got {steps}")
    scales = support.shape[-3] - 1
    norm = starlet_operator_norm(tuple(x0.shape[-2:]), scales)
    lipschitz = jnp.max(jnp.abs(h) ** 2, axis=(-2, -1), keepdims=True) * norm**2
    return _debias(x0, observed, h, support.astype(x0.dtype), 1.0 / lipschitz, scales, jnp.asarray(int(steps)))
