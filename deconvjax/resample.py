"""Differentiable resampling of images at arbitrary positions.

Interpolation is linear in the image, so the adjoint of every resampling operator is its
vector-Jacobian product (``jax.vjp``); nothing here needs a hand-written transpose.
Positions are ``(y, x)`` in pixels of the input image, pixel centres at integers. Points
whose interpolation footprint leaves the image see zeros there (the image is taken to be
zero outside its bounds), so flux near an edge is lost rather than invented.
"""

from typing import Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._types import Image

Method = Literal["bspline3", "bicubic", "lanczos3"]


def _bspline3(t: Float[Array, "..."]) -> Float[Array, "... 4"]:
    """Cubic B-spline weights at taps -1, 0, 1, 2 for a fractional offset ``t`` in
    [0, 1). They sum to one (partition of unity). They interpolate the image only after
    it has been prefiltered by `bspline3_prefilter`; together the two reproduce cubic
    polynomials, with an error an order of magnitude below Keys' on well-sampled
    images."""
    s = 1.0 - t
    return jnp.stack([s**3, 4.0 - 6.0 * t**2 + 3.0 * t**3, 4.0 - 6.0 * s**2 + 3.0 * s**3, t**3], axis=-1) / 6.0


def bspline3_prefilter(fft_shape: tuple[int, int]) -> np.ndarray:
    """The ``rfft2``-layout ``(fy, fx // 2 + 1)`` transfer function that turns an image
    into its cubic B-spline coefficients (the inverse of the sampled B-spline
    ``[1, 4, 1] / 6`` along each axis, periodic over ``fft_shape``), so that `interpolate`
    with ``"bspline3"`` passes through the image's samples. Applied in Fourier space, it
    can be folded into a convolution that the image goes through anyway."""
    ky = np.fft.fftfreq(fft_shape[0])[:, None]
    kx = np.fft.rfftfreq(fft_shape[1])[None, :]
    return 9.0 / ((2.0 + np.cos(2 * np.pi * ky)) * (2.0 + np.cos(2 * np.pi * kx)))


def _keys_cubic(t: Float[Array, "..."]) -> Float[Array, "... 4"]:
    """Weights of the Keys (a = -1/2) cubic convolution kernel at taps -1, 0, 1, 2 for a
    fractional offset ``t`` in [0, 1). They sum to one for every ``t`` (partition of
    unity), which is what keeps resampled flux conserved."""
    a = -0.5
    d = jnp.stack([1.0 + t, t, 1.0 - t, 2.0 - t], axis=-1)
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return jnp.where(d <= 1.0, near, far)


def _lanczos3(t: Float[Array, "..."]) -> Float[Array, "... 6"]:
    """Separable Lanczos-3 weights at taps -2..3, renormalised to sum to one so that a
    constant image is reproduced exactly (and flux is conserved)."""
    d = t[..., None] - jnp.arange(-2.0, 4.0)
    w = jnp.sinc(d) * jnp.sinc(d / 3.0)
    w = jnp.where(jnp.abs(d) < 3.0, w, 0.0)
    return w / jnp.sum(w, axis=-1, keepdims=True)


def interpolate(
    image: Image, coords: Float[Array, "*points 2"], method: Method = "bicubic"
) -> Float[Array, "*points"]:
    """Sample ``image`` (y, x) at the ``(y, x)`` positions ``coords``.

    **Arguments:**

    - `image`: the image, shape ``(ny, nx)``.
    - `coords`: positions, shape ``(..., 2)``, in pixels of `image`.
    - `method`: ``"bspline3"`` (cubic B-spline, 4x4 taps, of an image already
      prefiltered by `bspline3_prefilter`), ``"bicubic"`` (Keys cubic convolution, 4x4
      taps, of the image itself) or ``"lanczos3"`` (separable Lanczos with a = 3, 6x6
      taps, sharper, slower; it does not reproduce linear gradients exactly, so on
      well-sampled images it is less accurate than either cubic).

    **Returns:** the interpolated values, shape ``coords.shape[:-1]``.
    """
    if method == "bspline3":
        weights, first = _bspline3, -1
    elif method == "bicubic":
        weights, first = _keys_cubic, -1
    elif method == "lanczos3":
        weights, first = _lanczos3, -2
    else:
        raise ValueError(f"method must be 'bspline3', 'bicubic' or 'lanczos3', got {method!r}")
    ny, nx = image.shape
    y, x = coords[..., 0], coords[..., 1]
    y0, x0 = jnp.floor(y), jnp.floor(x)
    wy, wx = weights(y - y0), weights(x - x0)
    ntap = wy.shape[-1]
    iy = y0.astype(jnp.int32)[..., None] + first + jnp.arange(ntap)
    ix = x0.astype(jnp.int32)[..., None] + first + jnp.arange(ntap)
    valid_y = (iy >= 0) & (iy < ny)
    valid_x = (ix >= 0) & (ix < nx)
    wy = jnp.where(valid_y, wy, 0.0)
    wx = jnp.where(valid_x, wx, 0.0)
    iy = jnp.clip(iy, 0, ny - 1)
    ix = jnp.clip(ix, 0, nx - 1)
    patch = image[iy[..., :, None], ix[..., None, :]]
    return jnp.einsum("...ij,...i,...j->...", patch, wy, wx)


def bin_pixels(image: Float[Array, "*batch y x"], factor: int) -> Float[Array, "*batch y2 x2"]:
    """Sum ``factor x factor`` blocks of pixels (flux-conserving binning). The trailing
    two dimensions must be multiples of ``factor``."""
    if factor == 1:
        return image
    *batch, ny, nx = image.shape
    if ny % factor or nx % factor:
        raise ValueError(f"image shape {(ny, nx)} is not a multiple of factor={factor}")
    blocks = image.reshape(*batch, ny // factor, factor, nx // factor, factor)
    return blocks.sum(axis=(-3, -1))
