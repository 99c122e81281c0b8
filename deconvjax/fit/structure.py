"""Structure where the constraints cannot follow the data: arms, clumps and lopsided discs.

scarlet's free-form sources are symmetric and monotonic. That is what makes them deblend
well, and what makes them fail on a resolved irregular galaxy: on bright clumpy COSMOS
galaxies their residuals reach chi2 per pixel 1.5-2.3, with 3-5% of pixels beyond 3 sigma.
Dropping the constraints does not help: a free-form positive model then fits the noise
everywhere in its stamp (chi2 per pixel 0.2-0.4).

`add_structure` looks at the residual of a fitted scene and, where it is significant,
gives the free-form source that owns those pixels a `StructuredMorphology`: its body
stays monotonic (no longer symmetric) and a positive structure image is added, free only
on the pixels where the residual was significant (dilated). The source stays one source
(one catalog row, one deblended image); the extra freedom is spent only where the data
asked for it, so the fit does not chase the noise elsewhere. Refit the scene afterwards.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..frame import Frame
from ..model import Scene, Source, StructuredMorphology, as_structured
from ..observation import Observation, as_observations


def _same_grid(obs: Observation, frame: Frame) -> bool:
    return obs.coords is None and tuple(obs.data.shape[-2:]) == tuple(frame.shape)


def _mad_std(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def residual_significance(obs: Observation, residual, smooth: float = 1.5) -> np.ndarray:
    """``(y, x)`` the whitened ``residual`` ``(band, y, x)`` of ``obs`` (data less the
    prediction, fitted background included), summed over bands, smoothed by a Gaussian of
    ``smooth`` pixels and divided by its own robust noise (MAD over the unmasked pixels): a
    map in sigma of where the model misses structure (> 0) or puts too much light (< 0)."""
    white = np.asarray(obs.likelihood.whiten(residual, obs.weights))
    valid = np.asarray(obs.weights) > 0
    white = np.where(valid, white, 0.0).sum(axis=0) / np.sqrt(white.shape[0])
    sm = ndimage.gaussian_filter(white, smooth, mode="constant")
    seen = valid.any(axis=0)
    noise = _mad_std(sm[seen]) if seen.any() else 0.0
    return np.where(seen, sm / noise, 0.0) if noise > 0 else np.zeros_like(sm)


def with_structure_slots(scene: Scene, frame: Frame) -> Scene:
    """``scene`` with every `PixelMorphology` source as a `StructuredMorphology` of the
    same image, an empty support and a symmetric body: the same model under the same
    constraints, in the form that `add_structure` changes without changing the scene's
    structure, so that the refit runs the fit's compiled program again instead of
    compiling another one (in a first process the compilation is most of the time)."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    sources = scene.sources()
    for k, src in enumerate(sources):
        structured = as_structured(src.morphology)
        if structured is not None:
            sources[k] = Source(src.spectrum, structured, src.center)
    return Scene(frame, sources)


def add_structure(
    scene: Scene,
    frame: Frame,
    observations,
    *,
    nsigma: float = 3.0,
    min_pixels: int = 10,
    smooth: float = 1.5,
    grow: int = 2,
) -> tuple[Scene, list[int]]:
    """Give the free-form sources under significant residuals a structure component.

    **Arguments:**

    - `scene`: a fitted scene.
    - `frame`: its frame.
    - `observations`: the observations it was fitted to; the first on the frame's own
      pixel grid (no resampling) is used to find the residual structure.
    - `nsigma`: a pixel is significant where the smoothed residual (`residual_significance`)
      is beyond ``nsigma`` in absolute value (too much light is structure too: the body
      gave a symmetric or monotonic copy of light that is not there).
    - `min_pixels`: the least number of connected significant pixels that count.
    - `smooth`: the smoothing (Gaussian sigma, pixels) of the residual.
    - `grow`: dilation (pixels) of the significant regions into the support.

    **Returns:** ``(scene, indices)``: the scene with `StructuredMorphology` for the sources
    listed in ``indices`` (their body the old pixels, their structure the positive residual
    on the support), the others unchanged; ``indices`` is empty when nothing was
    significant or no observation is on the frame's grid.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if not isinstance(frame, Frame):
        raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
    if not nsigma > 0:
        raise ValueError(f"nsigma must be positive, got {nsigma}")
    if int(min_pixels) < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    on_grid = [o for o in as_observations(observations) if _same_grid(o, frame)]
    if not on_grid:
        return scene, []
    obs = on_grid[0]
    residual = np.asarray(obs.data) - np.asarray(obs.predict(scene.render()))  # host: no eager-op programs
    sig = residual_significance(obs, residual, smooth)
    labels, n = ndimage.label(np.abs(sig) > nsigma)
    if n == 0:
        return scene, []
    sizes = ndimage.sum_labels(np.ones_like(sig), labels, index=np.arange(1, n + 1))
    region = np.isin(labels, 1 + np.flatnonzero(sizes >= int(min_pixels)))
    if not region.any():
        return scene, []
    region = ndimage.binary_dilation(region, iterations=int(grow)) if grow > 0 else region
    # Each pixel belongs to the source whose model is brightest there (band sum).
    per_source = np.asarray(scene.render_sources()).sum(axis=1)  # (source, y, x)
    owner = np.where(per_source.max(axis=0) > 0, per_source.argmax(axis=0), -1)
    residual = np.asarray(residual) * (np.asarray(obs.weights) > 0)  # (band, y, x)
    obs_bands = [frame.bands.index(b) for b in obs.bands]

    sources = scene.sources()
    changed = []
    ny, nx = frame.shape
    for k, src in enumerate(sources):
        m = as_structured(src.morphology)
        if m is None:  # no body-plus-structure form (profiles, starlets)
            continue
        mine = region & (owner == k)
        if mine.sum() < int(min_pixels):
            continue
        h, w = m.shape
        cy, cx = (int(v) for v in np.round(np.asarray(src.center)))
        y0, x0 = cy - h // 2, cx - w // 2
        ys, xs = slice(max(y0, 0), min(y0 + h, ny)), slice(max(x0, 0), min(x0 + w, nx))
        inner = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
        support = np.zeros((h, w))
        support[inner] = mine[ys, xs]
        if support.sum() < int(min_pixels):
            continue
        # The structure's starting image: the positive residual in the source's units (its
        # spectrum times a unit morphology), least squares over the observed bands.
        spectrum = np.asarray(src.spectrum)[obs_bands]
        stamp = np.zeros((len(obs_bands), h, w))
        stamp[(slice(None),) + inner] = residual[:, ys, xs]
        extra = np.maximum(np.tensordot(spectrum, stamp, axes=1) / max(float(spectrum @ spectrum), 1e-30), 0.0)
        body = np.asarray(m.pixels)
        support = np.maximum(support, np.asarray(m.support))
        extra = extra + np.asarray(m.structure)
        # A floor inside the support: the log map of the fit needs positive values.
        extra = (extra + 1e-3 * float(body.max())) * support
        total = float(body.sum() + extra.sum())
        morph = StructuredMorphology(body / total, extra / total, support)
        sources[k] = Source(np.asarray(src.spectrum) * total, morph, np.asarray(src.center))
        changed.append(k)
    if not changed:
        return scene, []
    return Scene(frame, sources), changed
