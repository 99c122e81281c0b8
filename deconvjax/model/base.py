"""What every morphology shares: rendering in Fourier space on a fixed stamp (phase ramps
for sub-pixel centres, the pixel transfer function, shears), and the abstract morphology
with the parametrisation every morphology brings to a fit.

A morphology owns how it is fitted: its unconstrained transform, its step sizes, its
projection (constraints), its initialisation from measured moments, its sparsity measure
and its name. The fit (`deconvjax.fit`) only calls these methods, so adding a morphology
touches `deconvjax.model` alone: subclass `AbstractParametricMorphology` (a profile with
a few parameters) or `AbstractFreeFormMorphology` (an image the fit projects), and
implement the abstract methods.
"""

import abc
import dataclasses
from typing import ClassVar, Self

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from equinox import AbstractClassVar, AbstractVar
from jaxtyping import Array, Complex, Float

from .._types import Position
from .parametrisation import Constraints, StepSizes


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
    #: The morphology's name: ``init_scene(kind=...)``, catalogs and saved scenes use it.
    kind: AbstractClassVar[str]
    #: Whether the morphology is a free image that the fit projects (positivity,
    #: symmetry, monotonicity, unit sum) and that morphology priors act on.
    free_form: AbstractClassVar[bool]

    @abc.abstractmethod
    def fourier(self, offset: Position) -> Complex[Array, "h w2"]:
        """``rfft2`` of the stamp image, for a profile centre at
        ``stamp_centre(shape) + offset``, ``offset`` in ``[-0.5, 0.5]`` pixels."""

    def image(self, offset: Position | None = None) -> Float[Array, "h w"]:
        """The stamp image itself (before the model PSF for intrinsic morphologies)."""
        offset = jnp.zeros(2) if offset is None else offset
        return jnp.fft.irfft2(self.fourier(offset), s=self.shape)


    # -- The parametrisation a fit uses. Every method acts on batched morphologies too
    # -- (leaves with leading source / cutout axes), so a scene's groups call them once.

    @abc.abstractmethod
    def to_unconstrained(self, constraints: Constraints) -> Self:
        """The morphology's parameters mapped to the unconstrained space an optimiser
        moves (the same tree, every parameter leaf replaced)."""

    @abc.abstractmethod
    def from_unconstrained(self, constraints: Constraints) -> Self:
        """The inverse of `to_unconstrained`."""

    @abc.abstractmethod
    def step_sizes(self, steps: StepSizes, constraints: Constraints) -> Self:
        """Per-entry optimiser step sizes (in unconstrained units) for the same tree, from
        the steps per parameter kind (`deconvjax.model.parametrisation.STEP_KINDS`);
        ``0`` holds an entry fixed, and every leaf that is data rather than a parameter
        (a mask, a flag) must be all 0."""

    @abc.abstractmethod
    def project(self, constraints: Constraints, *, full: bool = True) -> tuple[Self, Float[Array, " *source"]]:
        """The morphology after the constraints' projections (constrained values), and
        the factor by which its flux was scaled to unit sum, which the fit moves into the
        spectrum (1 where nothing is renormalised). ``full=False`` asks for a cheaper,
        approximate projection inside the optimiser's loop (the exact one runs at the end)."""

    @abc.abstractmethod
    def free_image(self) -> Float[Array, "*source h w"] | None:
        """The free-form image that morphology priors see (``None`` for profiles)."""

    @abc.abstractmethod
    def sparsity(self) -> Float[Array, " *source"]:
        """The L1 measure that `Constraints.sparsity` weighs (0 for profiles)."""

    @abc.abstractmethod
    def effective_pixels(self, flux: np.ndarray, noise: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """For a batched free-form morphology on the host: per source, the effective number
        of pixels the data determine (``s^2 / (1 + s^2)`` summed over its free pixels, ``s``
        each pixel's model flux over ``noise``, halved where the symmetry constraint ties
        pixel pairs) and the number of free pixels; ``None`` for profiles, whose
        parameters all count."""

    @abc.abstractmethod
    def source_kinds(self, n: int) -> list[str]:
        """The catalog kind of each of the ``n`` sources of a batched morphology."""

    @classmethod
    @abc.abstractmethod
    def initial_parameters(cls, measured: "MeasuredShape", shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Host (numpy) parameters of a unit-flux morphology on a stamp of ``shape``
        that matches a source's measured moments; kept apart from the object so that
        batched initialisation stacks them over sources and cutouts on the host."""

    @classmethod
    @abc.abstractmethod
    def from_parameters(cls, parameters: dict[str, np.ndarray], shape: tuple[int, int]) -> Self:
        """The morphology of `initial_parameters` (or a template: ``parameters`` from
        `initial_parameters` of any measured shape) on a stamp of ``shape``."""

    @classmethod
    @abc.abstractmethod
    def stamp_sigma(cls, measured: "MeasuredShape") -> float:
        """The width (model pixels) that sizes the morphology's stamp."""


class AbstractParametricMorphology(AbstractMorphology):
    """A profile with a few parameters (before the model PSF): nothing to project, no
    free image, every parameter counts as one."""

    free_form: ClassVar[bool] = False

    def project(self, constraints: Constraints, *, full: bool = True) -> tuple[Self, Float[Array, ""]]:
        # Unit flux by construction: the spectrum is the flux.
        return self, jnp.ones(())

    def free_image(self) -> None:
        return None

    def sparsity(self) -> Float[Array, ""]:
        return jnp.zeros(())

    def effective_pixels(self, flux, noise, symmetric) -> None:
        return None

    def source_kinds(self, n: int) -> list[str]:
        return [self.kind] * n


class AbstractFreeFormMorphology(AbstractMorphology):
    """A free image (already seen through the model PSF) that the fit projects: its
    `project` keeps the constraints, its `free_image` is what morphology priors see."""

    free_form: ClassVar[bool] = True
    intrinsic: ClassVar[bool] = False

    @classmethod
    def stamp_sigma(cls, measured: "MeasuredShape") -> float:
        # The image is the source seen through the model PSF: their widths add.
        return float(np.sqrt(measured.sigma**2 + measured.model_sigma2))


@dataclasses.dataclass(frozen=True)
class MeasuredShape:
    """A source's shape measured from the data (second moments, PSF removed).

    **Arguments:**

    - `sigma`: intrinsic round sigma in model pixels.
    - `g1`, `g2`: reduced shear (GalSim convention).
    - `model_sigma2`: the model PSF's second moment per axis (pixels^2): free-form images
      live behind the model PSF, profiles before it.
    """

    sigma: float
    g1: float = 0.0
    g2: float = 0.0
    model_sigma2: float = 0.0


def check_stamp_shape(shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 3:
        raise ValueError(f"stamp shape must be (h, w) with sizes >= 3, got {shape}")
    return shape


__all__ = [
    "AbstractFreeFormMorphology",
    "AbstractMorphology",
    "AbstractParametricMorphology",
    "MeasuredShape",
    "ClassVar",
    "check_stamp_shape",
    "fourier_grid",
    "phase_ramp",
    "pixel_transfer",
    "shear_matrix",
    "stamp_centre",
]
