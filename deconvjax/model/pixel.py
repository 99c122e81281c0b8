"""Free-form morphologies: pixel arrays in the model frame (scarlet's representation of
galaxies that no profile describes), and the body-plus-structure form of resolved
galaxies. Each carries its own parametrisation for fitting: positive through a log map
(or projected), symmetric and monotonic under scarlet's constraints, unit sum."""

import functools
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import finite
from .base import AbstractFreeFormMorphology, MeasuredShape, check_stamp_shape, phase_ramp
from .parametrisation import (
    TINY,
    exp_clipped,
    log_floor,
    monotonise,
    normalise,
    relative_steps,
    symmetrise,
)


def gaussian_stamp(shape: tuple[int, int], sigma: float, g1: float = 0.0, g2: float = 0.0) -> np.ndarray:
    """A sheared Gaussian sampled at the pixel centres of a stamp (centre pixel h//2,
    w//2), unit sum, floored at 1e-6 of its peak (log maps need positive values); in
    numpy, so that initialisation needs no device round trip per source."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    dy, dx = yy - h // 2, xx - w // 2
    norm = 1.0 / np.sqrt(max(1.0 - g1**2 - g2**2, 1e-6))
    s = norm * np.array([[1.0 - g1, g2], [g2, 1.0 + g1]])
    inv = np.linalg.inv(sigma**2 * (s @ s))
    img = np.exp(-0.5 * (inv[0, 0] * dy**2 + 2 * inv[0, 1] * dy * dx + inv[1, 1] * dx**2))
    img = np.maximum(img, 1e-6 * img.max()) if img.max() > 0 else np.ones(img.shape)
    return img / img.sum()


def _log_floor_of(image):
    """The floor of the log map: far below each image's peak, never zero."""
    return 1e-8 * jnp.max(image, axis=(-2, -1), keepdims=True) + TINY


def _pixel_steps(image, steps, constraints):
    if constraints.pixels == "projection":
        return relative_steps(image, steps["pixels_projection"])
    return jnp.full_like(image, steps["pixels"])


def _free_pixel_support(parts, flux, noise, tied, n_free):
    """`AbstractMorphology.effective_pixels` from the host images of a morphology's parts."""
    support = 0.0
    for pixels in parts:
        snr2 = (flux[:, None, None] * pixels / noise) ** 2
        support = support + (snr2 / (1.0 + snr2)).sum(axis=(1, 2))
    return np.where(tied, support / 2.0, support), n_free


def _sparsity_of(image):
    """Sum over pixels of the max-normalised positive image: its effective number of pixels."""
    p = jnp.maximum(image, 0.0)
    return jnp.sum(p, axis=(-2, -1)) / (jnp.max(p, axis=(-2, -1)) + TINY)


class PixelMorphology(AbstractFreeFormMorphology):
    """A free-form morphology: a pixel array in the model frame (already seen through
    the model PSF), the scarlet representation of galaxies that no profile describes.

    The image's centre is its centre pixel ``(h // 2, w // 2)``; a sub-pixel offset of
    the source centre is applied as a Fourier phase shift of the array (band-limited
    interpolation, periodic over the stamp).

    **Arguments:**

    - `pixels`: ``(h, w)``; its normalisation is arbitrary (the source's flux in a band is
      its spectrum times the image's sum).
    """

    pixels: Float[Array, "h w"]
    shape: tuple[int, int] = eqx.field(static=True)
    kind: ClassVar[str] = "pixel"

    def __init__(self, pixels):
        image = jnp.asarray(finite(pixels, "pixels", "an (h, w) array of real numbers"), dtype=float)
        if image.ndim != 2:
            raise ValueError(f"pixels must be a 2-d (h, w) array, got shape {image.shape}")
        self.shape = check_stamp_shape(image.shape)
        self.pixels = image

    def fourier(self, offset):
        return jnp.fft.rfft2(self.pixels) * phase_ramp(self.shape, offset)

    def image(self, offset=None):
        offset = jnp.zeros(2) if offset is None else offset
        h, w = self.shape
        if h % 2 == 0 or w % 2 == 0:
            # Even sizes have a Nyquist row whose phase shift is not separable into
            # real matrices: go through Fourier space.
            return super().image(offset)
        # For odd sizes the Fourier phase shift is exactly a periodic convolution with
        # the Dirichlet kernel along each axis: two small matmuls, several times faster
        # on CPU than an rfft2 / irfft2 pair (and its gradient).
        return _shift_image(self.pixels, jnp.asarray(offset, dtype=self.pixels.dtype))

    # -- parametrisation: log pixels (or projected at 0), scarlet's symmetry and
    # -- monotonicity, unit sum.

    def to_unconstrained(self, constraints):
        if constraints.pixels != "log":
            return self
        return eqx.tree_at(lambda m: m.pixels, self, log_floor(self.pixels, _log_floor_of(self.pixels)))

    def from_unconstrained(self, constraints):
        if constraints.pixels != "log":
            return self
        return eqx.tree_at(lambda m: m.pixels, self, exp_clipped(self.pixels))

    def step_sizes(self, steps, constraints):
        return eqx.tree_at(lambda m: m.pixels, self, _pixel_steps(self.pixels, steps, constraints))

    def project(self, constraints, *, full=True):
        p = self.pixels
        if constraints.pixels == "projection":
            p = jnp.maximum(p, 0.0)
        if constraints.symmetric:
            p = symmetrise(p)
        if constraints.monotonic:
            # Materialise the input first: otherwise XLA fuses everything upstream (the
            # optimiser update, the exponential, the symmetrisation) into each of the
            # shifted reads of the sweep, recomputing it ~9 times per pixel.
            p = monotonise(jax.lax.optimization_barrier(p), full=full)
        scale = jnp.ones(p.shape[:-2])
        if constraints.normalise:
            p, scale = normalise(p)
        return eqx.tree_at(lambda m: m.pixels, self, p), scale

    def free_image(self):
        return self.pixels

    def sparsity(self):
        return _sparsity_of(self.pixels)

    def effective_pixels(self, flux, noise, symmetric):
        pixels = np.asarray(self.pixels)
        return _free_pixel_support([pixels], flux, noise, bool(symmetric), np.full(len(pixels), pixels[0].size))

    def source_kinds(self, n):
        return [self.kind] * n

    @classmethod
    def initial_parameters(cls, measured: MeasuredShape, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        # Free-form pixels live behind the model PSF: a Gaussian of the summed width.
        wide = cls.stamp_sigma(measured)
        return {"pixels": gaussian_stamp(shape, wide, measured.g1, measured.g2)}

    @classmethod
    def from_parameters(cls, parameters, shape: tuple[int, int]) -> "PixelMorphology":
        return cls(parameters["pixels"])


def shift_matrix(n: int, shift: Float[Array, ""]) -> Float[Array, "n n"]:
    """``(n, n)`` matrix of the band-limited periodic shift by ``shift`` pixels of a
    length-``n`` signal, ``n`` odd: ``S[i, j] = D(i - j - shift)`` with the Dirichlet
    kernel ``D(t) = sin(pi t) / (n sin(pi t / n))``, identical to multiplying the DFT by
    ``exp(-2 pi i k shift / n)``."""
    if n % 2 == 0:
        raise ValueError(f"shift_matrix needs an odd size, got {n}")
    return _shift_terms(n, jnp.asarray(shift, dtype=jnp.result_type(float)))[0]


def _shift_terms(n: int, d):
    """The matrix ``S(d)`` and its derivative ``dS/dd``, from scalar transcendentals only.

    With k = i - j an integer, sin(pi (k - d)) = -(-1)^k sin(pi d) and the denominator
    n sin(pi (k - d) / n) expands by the angle-difference formula: the rest are constant
    matrices (sines on the whole matrix are slow on CPU)."""
    k = np.arange(n)[:, None] - np.arange(n)[None, :]
    sign = jnp.asarray(-((-1.0) ** k))
    a = jnp.asarray(np.sin(np.pi * k / n))
    b = jnp.asarray(np.cos(np.pi * k / n))
    diag = jnp.asarray(k == 0)
    sd, cd = jnp.sin(jnp.pi * d), jnp.cos(jnp.pi * d)
    sn, cn = jnp.sin(jnp.pi * d / n), jnp.cos(jnp.pi * d / n)
    den = jnp.where(diag, 1.0, n * (a * cn - b * sn))
    off = sign * sd / den
    d_off = sign * jnp.pi * (cd * den + sd * (a * sn + b * cn)) / den**2
    # On the diagonal D(-d) = sin(pi d) / (n sin(pi d / n)) is even and smooth at d = 0.
    small = jnp.abs(d) < 1e-3
    sn_safe = jnp.where(small, 1.0, sn)
    centre = jnp.where(small, 1.0 - (jnp.pi * d) ** 2 * (1.0 - 1.0 / n**2) / 6.0, sd / (n * sn_safe))
    d_centre = jnp.where(
        small,
        -(jnp.pi**2) * d * (1.0 - 1.0 / n**2) / 3.0,
        jnp.pi * (cd * n * sn_safe - sd * cn) / (n * sn_safe) ** 2,
    )
    return jnp.where(diag, centre, off), jnp.where(diag, d_centre, d_off)


@functools.cache
def _derivative_matrix(n: int) -> np.ndarray:
    """``D`` with ``dS(d)/dd = S(d) @ D`` for the ``(n, n)`` shift matrices of
    `shift_matrix` (``n`` odd): the shifts are circulants of one group,
    ``S(d + e) = S(d) S(e)``, so ``D = dS/dd`` at ``d = 0``, ``D[i, j] = -D'(i - j)`` with
    ``D'(m) = pi (-1)^m / (n sin(pi m / n))`` the Dirichlet kernel's slope at integers."""
    k = np.arange(n)[:, None] - np.arange(n)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.pi * (-1.0) ** k / (n * np.sin(np.pi * k / n))
    return np.where(k == 0, 0.0, out)


@jax.custom_jvp
def _shift_image(pixels: Float[Array, "h w"], offset: Float[Array, "2"]) -> Float[Array, "h w"]:
    """``S_y pixels S_x^T``, the band-limited sub-pixel shift of an odd-sized stamp."""
    h, w = pixels.shape
    return _shift_terms(h, offset[0])[0] @ pixels @ _shift_terms(w, -offset[1])[0]


@_shift_image.defjvp
def _shift_image_jvp(primals, tangents):
    # With dS/dd = S D (`_derivative_matrix`) the tangent is S_y (dP + dy D_y P + dx P D_x^T) S_x^T:
    # reverse mode transposes it into S_y^T G S_x (two batched matmuls, as the pixels'
    # gradient needs anyway) and the centre's gradient is <S_y^T G S_x, D_y P> (and the
    # same with P D_x^T), products with constant matrices, instead of two more batched
    # matmuls of the gradient with dS. The transposes S^T = S(-d) are built directly and
    # the products written so that their transposes are plain (untransposed) matmuls.
    (p, d), (dp, dd) = primals, tangents
    h, w = p.shape
    sy, syt = _shift_terms(h, d[0])[0], _shift_terms(h, -d[0])[0]
    sx, sxt = _shift_terms(w, d[1])[0], _shift_terms(w, -d[1])[0]
    out = sy @ p @ sxt
    dyp = jnp.asarray(_derivative_matrix(h), p.dtype) @ p
    pdx = p @ jnp.asarray(_derivative_matrix(w).T, p.dtype)
    t = dp + dd[0] * dyp + dd[1] * pdx
    u = jnp.einsum("ji,jk->ik", syt, t)  # S_y t
    return out, jnp.einsum("ik,jk->ij", u, sx)  # (S_y t) S_x^T


class StructuredMorphology(AbstractFreeFormMorphology):
    """A free-form morphology in two parts: a smooth body (`pixels`, which the fit keeps
    monotonic when its constraints say so, and symmetric only where `symmetric`) plus
    `structure`, a positive
    free-form image held at zero outside `support`: the arms, clumps and lopsided discs
    of a resolved galaxy that a monotonic model cannot follow (scarlet's constraints
    leave them in the residual). The image is their sum, seen through the model PSF as a
    `PixelMorphology`'s is; both share the source's spectrum.

    **Arguments:**

    - `pixels`: ``(h, w)`` the body.
    - `structure`: ``(h, w)`` the structure (zero outside `support`).
    - `support`: ``(h, w)`` 1 where the structure may be nonzero, 0 elsewhere (fixed: the
      pixels where the data showed significant structure; see
      `deconvjax.fit.structure.add_structure`). Default: empty.
    - `symmetric`: whether the fit may keep the body 180-degree symmetric (when its
      constraints ask for symmetry). A data leaf, not a static flag, so that a scene's
      sources can gain structure without changing the scene's structure (and the fit's
      compiled program).

    With an empty support and ``symmetric=True`` this is a `PixelMorphology` under
    scarlet's constraints, in the form `deconvjax fit` starts from.
    """

    pixels: Float[Array, "h w"]
    structure: Float[Array, "h w"]
    support: Float[Array, "h w"]
    symmetric: Float[Array, ""]
    shape: tuple[int, int] = eqx.field(static=True)
    kind: ClassVar[str] = "structured"

    def __init__(self, pixels, structure=None, support=None, *, symmetric=False):
        body = jnp.asarray(finite(pixels, "pixels", "an (h, w) array of real numbers"), dtype=float)
        if body.ndim != 2:
            raise ValueError(f"pixels must be a 2-d (h, w) array, got shape {body.shape}")
        extra = jnp.zeros_like(body) if structure is None else jnp.asarray(
            finite(structure, "structure", "an (h, w) array of real numbers"), dtype=float)
        mask = jnp.zeros_like(body) if support is None else jnp.asarray(
            finite(support, "support", "an (h, w) array of 0 and 1"), dtype=float)
        if extra.shape != body.shape or mask.shape != body.shape:
            raise ValueError(
                f"structure and support must have the shape of pixels {body.shape}, got {extra.shape} and {mask.shape}"
            )
        self.shape = check_stamp_shape(body.shape)
        self.pixels = body
        self.structure = extra * mask
        self.support = mask
        # An explicit dtype: a weakly typed leaf would compile the fit again once it has
        # been through one of its steps (they return strongly typed arrays).
        self.symmetric = jnp.asarray(1.0 if bool(symmetric) else 0.0, dtype=float)

    def total(self) -> Float[Array, "h w"]:
        """The morphology's image at the stamp centre: body plus structure."""
        return self.pixels + self.structure

    def fourier(self, offset):
        return jnp.fft.rfft2(self.total()) * phase_ramp(self.shape, offset)

    def image(self, offset=None):
        offset = jnp.zeros(2) if offset is None else offset
        h, w = self.shape
        if h % 2 == 0 or w % 2 == 0:
            return super().image(offset)
        return _shift_image(self.total(), jnp.asarray(offset, dtype=self.pixels.dtype))

    # -- parametrisation: body and structure positive by the same map; the body
    # -- monotonic, and symmetric only where `symmetric` says; the structure zero outside
    # -- its support; their sum at unit flux.

    def to_unconstrained(self, constraints):
        if constraints.pixels != "log":
            return self
        floor = _log_floor_of(self.total())
        return eqx.tree_at(lambda m: (m.pixels, m.structure), self,
                           (log_floor(self.pixels, floor), log_floor(self.structure, floor)))

    def from_unconstrained(self, constraints):
        # The support applies here too, so that pixels outside it get no gradient (Adam
        # would otherwise move them by a full step on any leak).
        body, extra = self.pixels, self.structure
        if constraints.pixels == "log":
            body, extra = exp_clipped(body), exp_clipped(extra)
        return eqx.tree_at(lambda m: (m.pixels, m.structure), self, (body, extra * self.support))

    def step_sizes(self, steps, constraints):
        if constraints.pixels == "projection":
            body = relative_steps(self.total(), steps["pixels_projection"])
        else:
            body = jnp.full_like(self.pixels, steps["pixels"])
        # The support and the symmetry flag are data, not parameters: step 0.
        return eqx.tree_at(lambda m: (m.pixels, m.structure, m.support, m.symmetric), self,
                           (body, body * self.support, jnp.zeros_like(self.support), jnp.zeros_like(self.symmetric)))

    def project(self, constraints, *, full=True):
        body, extra = jnp.maximum(self.pixels, 0.0), jnp.maximum(self.structure, 0.0) * self.support
        if constraints.symmetric:
            body = jnp.where(self.symmetric[..., None, None] > 0.5, symmetrise(body), body)
        if constraints.monotonic:
            body = monotonise(jax.lax.optimization_barrier(body), full=full)
        scale = jnp.ones(body.shape[:-2])
        if constraints.normalise:
            _, scale = normalise(body + extra)
            body, extra = body / scale[..., None, None], extra / scale[..., None, None]
        return eqx.tree_at(lambda m: (m.pixels, m.structure), self, (body, extra)), scale

    def free_image(self):
        return self.total()

    def sparsity(self):
        return _sparsity_of(self.total())

    def effective_pixels(self, flux, noise, symmetric):
        # Symmetric only where its flag says; the structure's pixels outside its support
        # are not free.
        body, extra = np.asarray(self.pixels), np.asarray(self.structure)
        tied = bool(symmetric) & (np.asarray(self.symmetric) > 0.5)
        n_free = body[0].size + np.asarray(self.support).sum(axis=(1, 2))
        return _free_pixel_support([body, extra], flux, noise, tied, n_free)

    def source_kinds(self, n):
        # "pixel" until the source has a structure component.
        has = np.asarray(self.support).reshape(n, -1).max(axis=1) > 0
        return ["structured" if h else "pixel" for h in has]

    @classmethod
    def initial_parameters(cls, measured: MeasuredShape, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        body = gaussian_stamp(shape, cls.stamp_sigma(measured), measured.g1, measured.g2)
        zero = np.zeros_like(body)
        return {"pixels": body, "structure": zero, "support": zero, "symmetric": np.asarray(1.0)}

    @classmethod
    def from_parameters(cls, parameters, shape: tuple[int, int]) -> "StructuredMorphology":
        return cls(parameters["pixels"], parameters.get("structure"), parameters.get("support"),
                   symmetric=bool(np.asarray(parameters.get("symmetric", 0.0)) > 0.5))


def as_structured(morphology) -> StructuredMorphology | None:
    """A free-form morphology in the body-plus-structure form (the same image: an empty
    support and a symmetric body for a `PixelMorphology`; itself for a
    `StructuredMorphology`), or ``None`` for a morphology that has no such form."""
    if isinstance(morphology, StructuredMorphology):
        return morphology
    if isinstance(morphology, PixelMorphology):
        return StructuredMorphology(morphology.pixels, symmetric=True)
    return None
