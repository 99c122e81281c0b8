"""What every morphology shares: rendering in Fourier space on a fixed stamp (phase ramps
for sub-pixel centres, the pixel transfer function, shears), and the abstract morphology."""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from equinox import AbstractClassVar, AbstractVar
from jaxtyping import Array, Complex, Float

from .._types import Position


def fourier_grid(shape: tuple[int, int]) -> tuple[Float[Array, "h 1"], Float[Array, "1 w2"]]:
    """Frequencies (cycles per pixel) of ``rfft2`` on a stamp of ``shape``."""
    h, w = shape
    ky = jnp.fft.fftfreq(h)[:, None]
    kx = jnp.fft.rfftfreq(w)[None, :]
    return ky, kx


def phase_ramp(shape: tuple[int, int], position: Position) -> Complex[Array, "h w2"]:
    """Fourier transform of a unit point at ``position`` (y, x) of a stamp of ``shape``."""
    ky, kx = fourier_grid(shape)
    # Separable: two 1-d exponentials and an outer product, not h * w complex exps.
    return jnp.exp(-2j * jnp.pi * ky * position[0]) * jnp.exp(-2j * jnp.pi * kx * position[1])


def pixel_transfer(shape: tuple[int, int]) -> Float[Array, "h w2"]:
    """Fourier transform of the unit-pixel box: integrating a profile over pixels."""
    ky, kx = fourier_grid(shape)
    return jnp.sinc(ky) * jnp.sinc(kx)


def stamp_centre(shape: tuple[int, int]) -> tuple[int, int]:
    """The pixel that a stamp's source sits on: ``(h // 2, w // 2)``."""
    return shape[0] // 2, shape[1] // 2


def shear_matrix(g1: Float[Array, ""], g2: Float[Array, ""]) -> Float[Array, "2 2"]:
    """The area-preserving shear for reduced shear ``(g1, g2)`` in (y, x) order.

    ``g1 > 0`` stretches along x, ``g2 > 0`` along the x = y diagonal: the GalSim
    convention with x along columns and y along rows."""
    norm = 1.0 / jnp.sqrt(1.0 - g1**2 - g2**2)
    return norm * jnp.array([[1.0 - g1, g2], [g2, 1.0 + g1]])


class AbstractMorphology(eqx.Module):
    """The shape of a source on a fixed-size stamp.

    Morphologies are unbatched: one instance describes one source; a scene stacks many
    of the same kind on a leading axis and vmaps over them.

    Every morphology renders in Fourier space, as the ``rfft2`` of its pixel-integrated
    image on its stamp, centred at the stamp centre ``(h // 2, w // 2)`` plus a sub-pixel
    ``offset``. `intrinsic` says whether that image is the source before the model PSF
    (parametric profiles: the scene then multiplies by the model PSF's transfer
    function) or already as the model frame sees it (free-form pixel arrays).
    """

    shape: AbstractVar[tuple[int, int]]
    intrinsic: AbstractClassVar[bool]

    @abc.abstractmethod
    def fourier(self, offset: Position) -> Complex[Array, "h w2"]:
        """``rfft2`` of the stamp image, for a profile centre at
        ``stamp_centre(shape) + offset``, ``offset`` in ``[-0.5, 0.5]`` pixels."""

    def image(self, offset: Position | None = None) -> Float[Array, "h w"]:
        """The stamp image itself (before the model PSF for intrinsic morphologies)."""
        offset = jnp.zeros(2) if offset is None else offset
        return jnp.fft.irfft2(self.fourier(offset), s=self.shape)


def check_stamp_shape(shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 3:
        raise ValueError(f"stamp shape must be (h, w) with sizes >= 3, got {shape}")
    return shape


__all__ = [
    "AbstractMorphology",
    "ClassVar",
    "check_stamp_shape",
    "fourier_grid",
    "phase_ramp",
    "pixel_transfer",
    "shear_matrix",
    "stamp_centre",
]
