"""How morphologies are parametrised for fitting: the `Constraints` of free-form
sources, the maps between constrained values and the unconstrained ones an optimiser
moves, and scarlet's projections (symmetry, monotonicity).

Each morphology uses these in its own `to_unconstrained`, `from_unconstrained`,
`step_sizes` and `project` (see `deconvjax.model.base.AbstractMorphology`): the fit only
calls those methods, so a new morphology brings its own parametrisation.

The maps (all elementwise, so they act on batched morphologies too):

- positive values (spectra, free-form pixels, sizes): ``log``;
- Sersic ``n``: a logistic map onto ``(N_MIN, N_MAX)``;
- shear ``(g1, g2)``: ``g = G_MAX tanh(|u|) u / |u|``, so ``|g| < G_MAX`` always.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

N_MIN, N_MAX = 0.5, 6.0
G_MAX = 0.9
TINY = 1e-30
#: The parameter kinds an optimiser gives step sizes to (`step_sizes` of each
#: morphology reads the ones it uses). ``spectrum`` and ``pixels`` (log) and ``size``
#: (log sigma, log r_e) are relative steps, ``center`` is in model pixels,
#: ``pixels_projection`` is a fraction of each source's brightest pixel (free-form
#: values moved without a log map), ``n`` is logistic, ``shear`` is in arctanh units of |g|.
STEP_KINDS = ("spectrum", "center", "pixels", "pixels_projection", "size", "n", "shear")

StepSizes = Mapping[str, Float[Array, ""]]


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



def log_floor(x, floor):
    return jnp.log(jnp.maximum(x, floor))


def shear_to_u(g1, g2):
    g = jnp.sqrt(g1**2 + g2**2)
    ratio = jnp.minimum(g / G_MAX, 0.999)
    # arctanh(r) / r, finite at r = 0 (its limit is 1).
    scale = jnp.where(ratio > 1e-6, jnp.arctanh(ratio) / jnp.maximum(ratio, 1e-6), 1.0) / G_MAX
    return g1 * scale, g2 * scale


def u_to_shear(u1, u2):
    r2 = u1**2 + u2**2
    r = jnp.sqrt(r2 + 1e-24)
    # tanh(r) / r, finite and smooth at r = 0.
    scale = jnp.where(r > 1e-4, jnp.tanh(r) / r, 1.0 - r2 / 3.0)
    return G_MAX * u1 * scale, G_MAX * u2 * scale


def logit_n(n):
    t = jnp.clip((n - N_MIN) / (N_MAX - N_MIN), 1e-4, 1 - 1e-4)
    return jnp.log(t) - jnp.log1p(-t)


def sigmoid_n(u):
    return N_MIN + (N_MAX - N_MIN) * jax.nn.sigmoid(u)


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


def exp_clipped(u, bound: float = 80.0):
    """``exp(u)`` with the exponent clipped: a runaway step stays finite instead of inf."""
    return jnp.exp(jnp.clip(u, -bound, bound))


def normalise(images: Float[Array, "*source h w"]) -> tuple[Float[Array, "*source h w"], Float[Array, " *source"]]:
    """Images scaled to unit sum, and the sums (1 where an image sums to nothing), which
    the fit moves into the source's spectrum."""
    total = jnp.sum(images, axis=(-2, -1))
    ok = total > TINY
    scale = jnp.where(ok, total, 1.0)
    return images / scale[..., None, None], scale


def relative_steps(image: Float[Array, "*source h w"], step: Float[Array, ""]) -> Float[Array, "*source h w"]:
    """A step for every pixel of each image: ``step`` times the image's largest absolute
    value (for values moved without a log map, which has relative steps built in)."""
    scale = jnp.max(jnp.abs(image), axis=(-2, -1), keepdims=True)
    return step * jnp.broadcast_to(scale, image.shape)
