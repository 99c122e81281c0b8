"""A free-form morphology in the starlet basis (the isotropic undecimated wavelet of
Starck et al., scarlet2's `StarletMorphology`): an image as the sum of its wavelet scales
and a coarse residual.

The starlet transform is the "a trous" algorithm with the B3-spline filter
``[1, 4, 6, 4, 1] / 16``, dilated by ``2^j`` at scale ``j``: ``c_{j+1} = h_j * c_j``,
``w_j = c_j - c_{j+1}``, so that ``image = c_J + sum_j w_j`` exactly, whatever the
boundary treatment. The basis is overcomplete: without a sparsity measure in it, a starlet
morphology fits as a positive pixel array does. What it adds is that measure: the L1 norm
of the wavelet coefficients, which `Constraints.sparsity` weighs (scarlet's starlet
sources: compact, clumpy structure is cheap, pixel noise is not).

For fitting, the coefficients move freely (no map), each with a step relative to its
own size; after every step the image is projected onto positive values (clipped, then
transformed back into coefficients) and to unit sum. Without monotonicity the positive
noise of the wings stays in the model, so the flux of a faint, extended source comes out
high (as for a pixel morphology under positivity alone; figures in tests/test_starlet.py):
use ``kind="pixel"`` for photometry, starlets for structure, or a morphology prior.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import finite
from .base import AbstractFreeFormMorphology, MeasuredShape, check_stamp_shape, phase_ramp
from .parametrisation import TINY, normalise
from .pixel import gaussian_stamp

_B3 = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


def default_scales(shape: tuple[int, int]) -> int:
    """Wavelet scales for a stamp (scarlet's choice): ``floor(log2(min(h, w))) - 1``,
    at least 1."""
    return max(1, int(np.log2(min(shape))) - 1)


def _smooth(c: Float[Array, "*batch h w"], step: int, axis: int) -> Float[Array, "*batch h w"]:
    """The B3-spline filter with holes of ``step`` pixels along ``axis``; edges mirrored
    (``symmetric``: each pixel of the border repeated), so a flat image stays flat."""
    # numpy for host arrays (initialisation: no device program per source), jax else.
    xp = np if isinstance(c, np.ndarray) else jnp
    n = c.shape[axis]
    pad = [(0, 0)] * c.ndim
    pad[axis] = (2 * step, 2 * step)
    # Mirror padding needs the pad to fit in the axis; beyond it, repeat the edge.
    mode = "symmetric" if 2 * step <= n else "edge"
    padded = xp.pad(c, pad, mode=mode)
    out = 0.0
    for k, weight in enumerate(_B3):
        out = out + weight * xp.take(padded, np.arange(n) + k * step, axis=axis)
    return out


def starlet_transform(image: Float[Array, "*batch h w"], scales: int) -> Float[Array, "*batch scale h w"]:
    """The starlet coefficients ``(..., scales + 1, h, w)``: ``scales`` wavelet planes,
    finest first, then the coarse residual. Their sum is the image."""
    xp = np if isinstance(image, np.ndarray) else jnp
    c = image if xp is np else jnp.asarray(image)
    planes = []
    for j in range(int(scales)):
        smooth = _smooth(_smooth(c, 2**j, -2), 2**j, -1)
        planes.append(c - smooth)
        c = smooth
    planes.append(c)
    return xp.stack(planes, axis=-3)


def starlet_reconstruction(coefficients: Float[Array, "*batch scale h w"]) -> Float[Array, "*batch h w"]:
    """The image of starlet coefficients: the sum of its planes."""
    return coefficients.sum(axis=-3)


class StarletMorphology(AbstractFreeFormMorphology):
    """A free-form morphology held as starlet coefficients (seen through the model PSF,
    as a `PixelMorphology`).

    **Arguments:**

    - `coefficients`: ``(scales + 1, h, w)`` starlet coefficients (wavelet planes finest
      first, then the coarse plane), e.g. ``starlet_transform(image, scales)``; the
      image is their sum (`starlet_reconstruction`).
    """

    coefficients: Float[Array, "scale h w"]
    shape: tuple[int, int] = eqx.field(static=True)
    kind: ClassVar[str] = "starlet"

    def __init__(self, coefficients):
        coeffs = jnp.asarray(finite(coefficients, "coefficients", "a (scales + 1, h, w) array"), dtype=float)
        if coeffs.ndim != 3 or coeffs.shape[0] < 2:
            raise ValueError(f"coefficients must be (scales + 1, h, w) with at least one wavelet scale, got {coeffs.shape}")
        self.shape = check_stamp_shape(coeffs.shape[-2:])
        self.coefficients = coeffs

    @classmethod
    def from_image(cls, image, scales: int | None = None) -> StarletMorphology:
        """The starlet morphology of an ``(h, w)`` image (``scales``: `default_scales`)."""
        image = np.asarray(finite(image, "image", "an (h, w) array of real numbers"), dtype=float)
        if image.ndim != 2:
            raise ValueError(f"image must be a 2-d (h, w) array, got shape {image.shape}")
        scales = default_scales(image.shape) if scales is None else int(scales)
        if scales < 1:
            raise ValueError(f"scales must be >= 1, got {scales}")
        return cls(starlet_transform(image, scales))

    def total(self) -> Float[Array, "*source h w"]:
        """The morphology's image at the stamp centre."""
        return starlet_reconstruction(self.coefficients)

    def fourier(self, offset):
        return jnp.fft.rfft2(self.total()) * phase_ramp(self.shape, offset)

    # -- parametrisation: coefficients moved as they are, the image projected onto
    # -- positive values and unit sum.

    def to_unconstrained(self, constraints):
        return self

    def from_unconstrained(self, constraints):
        return self

    def step_sizes(self, steps, constraints):
        # Relative steps, as the log map gives pixel arrays: each coefficient moves by
        # about ``pixels_projection`` of its own size (at least 1e-3 of the largest),
        # so that a pixel moves by about that share of itself summed over the planes;
        # one step for all, as for pixels, would tear a faint wing apart at the first
        # step. The gradient is the same on every plane (the image is their sum).
        size = jnp.abs(self.coefficients)
        floor = 1e-3 * jnp.max(size, axis=(-3, -2, -1), keepdims=True)
        step = steps["pixels_projection"] * jnp.maximum(size, floor)
        return eqx.tree_at(lambda m: m.coefficients, self, step)

    def project(self, constraints, *, full=True):
        image = jnp.maximum(self.total(), 0.0)
        scale = jnp.ones(image.shape[:-2])
        if constraints.normalise:
            image, scale = normalise(image)
        coeffs = starlet_transform(image, self.coefficients.shape[-3] - 1)
        return eqx.tree_at(lambda m: m.coefficients, self, coeffs), scale

    def free_image(self):
        return self.total()

    def sparsity(self):
        # The L1 norm of the wavelet planes (not the coarse one), in units of the image's
        # peak: sparse in the starlet basis, as scarlet's starlet sources.
        image = jnp.maximum(self.total(), 0.0)
        l1 = jnp.sum(jnp.abs(self.coefficients[..., :-1, :, :]), axis=(-3, -2, -1))
        return l1 / (jnp.max(image, axis=(-2, -1)) + TINY)

    def effective_pixels(self, flux, noise, symmetric):
        # The data determine the image's pixels (the coefficients are redundant); every
        # coefficient is a free parameter of the fit.
        image = np.asarray(self.total())
        snr2 = (flux[:, None, None] * image / noise) ** 2
        n_free = np.full(len(image), np.asarray(self.coefficients)[0].size)
        return (snr2 / (1.0 + snr2)).sum(axis=(1, 2)), n_free

    def source_kinds(self, n):
        return [self.kind] * n

    @classmethod
    def initial_parameters(cls, measured: MeasuredShape, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        image = gaussian_stamp(shape, cls.stamp_sigma(measured), measured.g1, measured.g2)
        return {"coefficients": starlet_transform(image, default_scales(shape))}

    @classmethod
    def from_parameters(cls, parameters, shape: tuple[int, int]) -> StarletMorphology:
        return cls(parameters["coefficients"])
