"""Constraints: the maps between a scene's parameters and the unconstrained values the
optimiser moves, and the projections (symmetry, monotonicity) scarlet users know.

Every parameter of a batched group is optimised in an unconstrained space:

- spectra: ``log`` (positive; Adam steps are then relative flux steps, as scarlet2's
  ``relative_step``);
- free-form pixels: ``log`` (positive, the default, as scarlet2's ``constraints.positive``)
  or the identity followed by a projection onto ``>= 0`` after every step
  (``pixels="projection"``, scarlet's proximal style);
- sizes (``sigma``, ``r_e``): ``log``; Sersic ``n``: a logistic map onto ``(n_min, n_max)``;
- shear ``(g1, g2)``: ``g = g_max tanh(|u|) u / |u|``, so ``|g| < g_max`` always;
- centres: unconstrained.

Free-form morphologies are renormalised to unit sum after every step, their sum moved into
the spectrum, so a pixel source's spectrum is its flux per band (as for the parametric
morphologies, which have unit flux).

A `StructuredMorphology` (a resolved galaxy's monotonic body plus its positive structure
within a fixed support) has both parts positive by the same map; its body is kept
monotonic, and symmetric where its own `symmetric` leaf says so (a galaxy with structure
is not), its structure is zero outside the support.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..model import GaussianMorphology, PixelMorphology, SersicMorphology, Source, StructuredMorphology

N_MIN, N_MAX = 0.5, 6.0
G_MAX = 0.9
_TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Constraints and regularisation of free-form (`PixelMorphology`) sources.

    **Arguments:**

    - `pixels`: ``"log"`` (positive by an exponential map, the default) or
      ``"projection"`` (clipped at 0 after every step; allows exact zeros).
    - `symmetric`: make each morphology 180-degree symmetric about its centre pixel after
      every step (scarlet's symmetry constraint). On by default, as in scarlet.
    - `monotonic`: make each morphology non-increasing outwards from its centre pixel along
      rays after every step (scarlet's monotonicity constraint). On by default: it is
      what lets free-form sources deblend (benchmarks/vs_scarlet2.py prints the flux
      errors with and without it; figures in benchmarks/RESULTS.md).
    - `sparsity`: weight of an L1 penalty on each max-normalised morphology (in units of
      chi2 per pixel): favours compact sources, as scarlet's L1 sparsity.
    - `normalise`: keep free-form morphologies at unit sum, their sum in the spectrum.
    """

    pixels: Literal["log", "projection"] = "log"
    symmetric: bool = True
    monotonic: bool = True
    sparsity: float = 0.0
    normalise: bool = True

    def __post_init__(self):
        if self.pixels not in ("log", "projection"):
            raise ValueError(f"pixels must be 'log' or 'projection', got {self.pixels!r}")
        if not self.sparsity >= 0:
            raise ValueError(f"sparsity must be >= 0, got {self.sparsity}")


# ----------------------------------------------------------------------------------------
# Elementwise maps
# ----------------------------------------------------------------------------------------


def _log(x, floor):
    return jnp.log(jnp.maximum(x, floor))


def _shear_to_u(g1, g2):
    g = jnp.sqrt(g1**2 + g2**2)
    ratio = jnp.minimum(g / G_MAX, 0.999)
    # arctanh(r) / r, finite at r = 0 (its limit is 1).
    scale = jnp.where(ratio > 1e-6, jnp.arctanh(ratio) / jnp.maximum(ratio, 1e-6), 1.0) / G_MAX
    return g1 * scale, g2 * scale


def _u_to_shear(u1, u2):
    r2 = u1**2 + u2**2
    r = jnp.sqrt(r2 + 1e-24)
    # tanh(r) / r, finite and smooth at r = 0.
    scale = jnp.where(r > 1e-4, jnp.tanh(r) / r, 1.0 - r2 / 3.0)
    return G_MAX * u1 * scale, G_MAX * u2 * scale


def _logit_n(n):
    t = jnp.clip((n - N_MIN) / (N_MAX - N_MIN), 1e-4, 1 - 1e-4)
    return jnp.log(t) - jnp.log1p(-t)


def _sigmoid_n(u):
    return N_MIN + (N_MAX - N_MIN) * jax.nn.sigmoid(u)


def to_unconstrained(group: Source, constraints: Constraints) -> Source:
    """A batched group's parameters mapped to the optimiser's unconstrained space."""
    m = group.morphology
    spec_floor = 1e-12
    if isinstance(m, PixelMorphology):
        if constraints.pixels == "log":
            floor = 1e-8 * jnp.max(m.pixels, axis=(-2, -1), keepdims=True) + _TINY
            m = eqx.tree_at(lambda x: x.pixels, m, _log(m.pixels, floor))
    elif isinstance(m, StructuredMorphology):
        if constraints.pixels == "log":
            floor = 1e-8 * jnp.max(m.total(), axis=(-2, -1), keepdims=True) + _TINY
            m = eqx.tree_at(lambda x: (x.pixels, x.structure), m, (_log(m.pixels, floor), _log(m.structure, floor)))
    elif isinstance(m, GaussianMorphology):
        u1, u2 = _shear_to_u(m.g1, m.g2)
        m = eqx.tree_at(lambda x: (x.sigma, x.g1, x.g2), m, (_log(m.sigma, 1e-3), u1, u2))
    elif isinstance(m, SersicMorphology):
        u1, u2 = _shear_to_u(m.g1, m.g2)
        m = eqx.tree_at(
            lambda x: (x.n, x.r_e, x.g1, x.g2), m, (_logit_n(m.n), _log(m.r_e, 1e-3), u1, u2)
        )
    return eqx.tree_at(lambda s: (s.spectrum, s.morphology), group, (_log(group.spectrum, spec_floor), m))


def from_unconstrained(group: Source, constraints: Constraints) -> Source:
    """The inverse of `to_unconstrained`."""
    m = group.morphology
    if isinstance(m, PixelMorphology):
        if constraints.pixels == "log":
            # Clipping the exponent keeps a runaway step finite instead of inf.
            m = eqx.tree_at(lambda x: x.pixels, m, jnp.exp(jnp.clip(m.pixels, -80.0, 80.0)))
    elif isinstance(m, StructuredMorphology):
        # The support applies here too, so that pixels outside it get no gradient (Adam
        # would otherwise move them by a full step on any leak).
        body, extra = m.pixels, m.structure
        if constraints.pixels == "log":
            body, extra = jnp.exp(jnp.clip(body, -80.0, 80.0)), jnp.exp(jnp.clip(extra, -80.0, 80.0))
        m = eqx.tree_at(lambda x: (x.pixels, x.structure), m, (body, extra * m.support))
    elif isinstance(m, GaussianMorphology):
        g1, g2 = _u_to_shear(m.g1, m.g2)
        m = eqx.tree_at(lambda x: (x.sigma, x.g1, x.g2), m, (jnp.exp(jnp.clip(m.sigma, -7.0, 7.0)), g1, g2))
    elif isinstance(m, SersicMorphology):
        g1, g2 = _u_to_shear(m.g1, m.g2)
        m = eqx.tree_at(
            lambda x: (x.n, x.r_e, x.g1, x.g2),
            m,
            (_sigmoid_n(m.n), jnp.exp(jnp.clip(m.r_e, -7.0, 7.0)), g1, g2),
        )
    spectrum = jnp.exp(jnp.clip(group.spectrum, -80.0, 80.0))
    return eqx.tree_at(lambda s: (s.spectrum, s.morphology), group, (spectrum, m))


# ----------------------------------------------------------------------------------------
# Projections of free-form morphologies (batched: pixels (source, h, w))
# ----------------------------------------------------------------------------------------


def symmetrise(pixels: Float[Array, "source h w"]) -> Float[Array, "source h w"]:
    """180-degree symmetry about the centre pixel ``(h // 2, w // 2)``: the mean of the
    image and its rotation. For even sizes the part without a mirror pixel is kept."""
    h, w = pixels.shape[-2:]
    cy, cx = h // 2, w // 2
    ny, nx = min(cy, h - 1 - cy), min(cx, w - 1 - cx)
    if (2 * ny + 1, 2 * nx + 1) == (h, w):
        # Odd sizes: every pixel has its mirror (no copy into a core region).
        return 0.5 * (pixels + pixels[..., ::-1, ::-1])
    core = pixels[..., cy - ny : cy + ny + 1, cx - nx : cx + nx + 1]
    core = 0.5 * (core + core[..., ::-1, ::-1])
    return pixels.at[..., cy - ny : cy + ny + 1, cx - nx : cx + nx + 1].set(core)


def _ancestors(shape: tuple[int, int]) -> np.ndarray:
    """For each pixel of a stamp, the chain of pixels inwards along the ray to the centre
    pixel (each step to the neighbour nearest the point one pixel closer), padded with the
    centre: ``(h * w, depth)`` flat indices, the pixel itself first."""
    h, w = shape
    cy, cx = h // 2, w // 2
    yy, xx = np.mgrid[:h, :w]
    dy, dx = yy - cy, xx - cx
    r = np.hypot(dy, dx)
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(r > 0, np.minimum(1.0 / r, 1.0), 0.0)
    py = np.clip(np.rint(yy - dy * step), 0, h - 1).astype(np.int64)
    px = np.clip(np.rint(xx - dx * step), 0, w - 1).astype(np.int64)
    parent = (py * w + px).ravel()
    chain = [np.arange(h * w)]
    while True:
        nxt = parent[chain[-1]]
        if np.array_equal(nxt, chain[-1]):
            break
        chain.append(nxt)
    return np.stack(chain, axis=1).astype(np.int32)


def _parents(shape: tuple[int, int]) -> np.ndarray:
    """Each pixel's inward neighbour (the centre is its own)."""
    anc = _ancestors(shape)
    return anc[:, min(1, anc.shape[1] - 1)]


def monotonise(pixels: Float[Array, "source h w"], *, full: bool = True) -> Float[Array, "source h w"]:
    """Project each image onto 'non-increasing outwards from the centre pixel': each
    pixel is lowered to the smallest value on its chain of inward neighbours (the
    nearest-neighbour monotonicity of scarlet), as one gather and a min, no loop.

    With ``full=False`` each pixel only looks one step inwards (one sweep, ~20x cheaper):
    applied after every optimiser step, repeated sweeps reach the same monotonic fixed
    point, so the fit uses it inside the loop and the full projection once at the end."""
    shape = pixels.shape[-2:]
    flat = pixels.reshape(*pixels.shape[:-2], -1)
    if full:
        anc = jnp.asarray(_ancestors(shape))
        out = jnp.min(flat[..., anc], axis=-1)
        return out.reshape(pixels.shape)
    # Each pixel's inward neighbour is one of its 8 neighbours: pick it from 8 shifted
    # copies with constant masks. Elementwise and fusible, unlike a gather, which is
    # slow on CPU (under vmap over cutouts it cost more than the rest of the step).
    h, w = shape
    parents = _parents(shape).reshape(h, w)
    yy, xx = np.mgrid[:h, :w]
    # Zero padding: the masks never pick a neighbour outside the stamp, and a constant
    # pad fuses into the selection (edge padding is a concatenation of slices).
    padded = jnp.pad(pixels, [(0, 0)] * (pixels.ndim - 2) + [(1, 1), (1, 1)])
    parent = pixels
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            mask = parents == (yy + dy).clip(0, h - 1) * w + (xx + dx).clip(0, w - 1)
            mask &= (yy + dy >= 0) & (yy + dy < h) & (xx + dx >= 0) & (xx + dx < w)
            if not mask.any():
                continue
            shifted = padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            parent = jnp.where(jnp.asarray(mask), shifted, parent)
    return jnp.minimum(pixels, parent)


def project(group: Source, constraints: Constraints, *, full: bool = True) -> Source:
    """Apply positivity (projection mode), symmetry, monotonicity (one inward sweep with
    ``full=False``, see `monotonise`) and unit-sum renormalisation to a constrained
    batched group; other groups pass through."""
    m = group.morphology
    if isinstance(m, StructuredMorphology):
        return _project_structured(group, constraints, full)
    if not isinstance(m, PixelMorphology):
        return group
    p = m.pixels
    if constraints.pixels == "projection":
        p = jnp.maximum(p, 0.0)
    if constraints.symmetric:
        p = symmetrise(p)
    if constraints.monotonic:
        # Materialise the input first: otherwise XLA fuses everything upstream (the
        # optimiser update, the exponential, the symmetrisation) into each of the
        # shifted reads of the sweep, recomputing it ~9 times per pixel (slower to run
        # and to compile).
        p = monotonise(jax.lax.optimization_barrier(p), full=full)
    spectrum = group.spectrum
    if constraints.normalise:
        total = jnp.sum(p, axis=(-2, -1))
        ok = total > _TINY
        p = jnp.where(ok[:, None, None], p / jnp.where(ok, total, 1.0)[:, None, None], p)
        spectrum = jnp.where(ok[:, None], spectrum * jnp.where(ok, total, 1.0)[:, None], spectrum)
    return eqx.tree_at(lambda s: (s.spectrum, s.morphology.pixels), group, (spectrum, p))


def _project_structured(group: Source, constraints: Constraints, full: bool) -> Source:
    m = group.morphology
    body, extra = jnp.maximum(m.pixels, 0.0), jnp.maximum(m.structure, 0.0) * m.support
    if constraints.symmetric:
        body = jnp.where(m.symmetric[:, None, None] > 0.5, symmetrise(body), body)
    if constraints.monotonic:
        body = monotonise(jax.lax.optimization_barrier(body), full=full)
    spectrum = group.spectrum
    if constraints.normalise:
        total = jnp.sum(body + extra, axis=(-2, -1))
        ok = total > _TINY
        scale = jnp.where(ok, total, 1.0)[:, None, None]
        body, extra = jnp.where(ok[:, None, None], body / scale, body), jnp.where(ok[:, None, None], extra / scale, extra)
        spectrum = jnp.where(ok[:, None], spectrum * scale[:, :, 0], spectrum)
    return eqx.tree_at(lambda s: (s.spectrum, s.morphology.pixels, s.morphology.structure), group,
                       (spectrum, body, extra))


def free_form_image(m) -> Float[Array, "source h w"] | None:
    """The image of a batched free-form morphology (`PixelMorphology` or
    `StructuredMorphology`), or None for a parametric one."""
    if isinstance(m, PixelMorphology):
        return m.pixels
    if isinstance(m, StructuredMorphology):
        return m.total()
    return None


def sparsity_penalty(group: Source) -> Float[Array, ""]:
    """Sum over sources of ``sum(pixels) / max(pixels)``: the L1 norm of each
    max-normalised free-form morphology (its effective number of pixels)."""
    image = free_form_image(group.morphology)
    if image is None:
        return jnp.zeros(())
    p = jnp.maximum(image, 0.0)
    return jnp.sum(jnp.sum(p, axis=(-2, -1)) / (jnp.max(p, axis=(-2, -1)) + _TINY))
