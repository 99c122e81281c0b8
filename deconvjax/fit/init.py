"""Initialisation: detect and segment sources (`deconvjax.fit.detection`), measure their
sizes and shapes from moments, and solve for their spectra jointly (a linear least-squares
problem given the morphologies), which keeps close pairs from claiming each other's
light."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from ..frame import Frame
from ..model import MeasuredShape, Scene, Source, morphology_class, morphology_kinds
from ..observation import Observation, as_observations
from .detection import STAMP_SIZES as STAMP_SIZES
from .detection import Detection, find_sources, psf_width
from .detection import detect as detect
from .detection import detection_image as detection_image
from .moments import image_moments

#: A morphology kind: ``"pixel"``, ``"sersic"``, ``"gaussian"``, ``"point"``,
#: ``"starlet"``, ``"structured"``, or any morphology's `kind` (`morphology_kinds`).
Kind = str


def check_kind(kind: str, name: str = "kind") -> type:
    """The morphology class of ``kind``; a `ValueError` naming ``name`` lists the kinds."""
    try:
        return morphology_class(kind)
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be one of {sorted(morphology_kinds())}, got {kind!r}") from None


#: Pixel position columns of input catalogs, tried in this order: ``(y, x, offset)``,
#: ``offset`` subtracted to make them 0-based (SExtractor counts from 1).
PIXEL_COLUMNS = (("y", "x", 0.0), ("ycentroid", "xcentroid", 0.0), ("Y_IMAGE", "X_IMAGE", 1.0))
#: Sky position columns (degrees, or quantities with an angle unit), tried after the pixel
#: ones; a ``sky_centroid`` SkyCoord column (photutils, deconvjax catalogs) comes first.
SKY_COLUMNS = (("ra", "dec"), ("ALPHA_J2000", "DELTA_J2000"))


def _accepted_columns() -> str:
    return "; ".join(
        ["y, x (pixels, 0-based)", "ycentroid, xcentroid (photutils, 0-based)", "Y_IMAGE, X_IMAGE (SExtractor, 1-based)",
         "sky_centroid (SkyCoord)", "ra, dec (degrees)", "ALPHA_J2000, DELTA_J2000 (SExtractor, degrees)"]
    )


def _values(column, unit=None) -> np.ndarray:
    """float64 values of a table column, a Quantity converted to ``unit`` where given
    (pixels and degrees are what the catalogs below hold)."""
    if hasattr(column, "unit") and column.unit is not None and unit is not None and hasattr(column, "to_value"):
        return np.asarray(column.to_value(unit), np.float64)
    if hasattr(column, "value") and hasattr(column, "unit"):
        column = column.value
    return np.asarray(column, np.float64)


def positions_from(frame: Frame, catalog, argument: str = "catalog") -> np.ndarray:
    """Model-frame ``(y, x)`` positions (0-based pixels) from a catalog: an ``(n, 2)`` pixel
    array, a SkyCoord, or a Table in one of these conventions, tried in this order:

    - deconvjax: ``y``, ``x`` (0-based pixels);
    - photutils: ``ycentroid``, ``xcentroid`` (0-based pixels);
    - SExtractor: ``Y_IMAGE``, ``X_IMAGE`` (1-based pixels: 1 is subtracted);
    - a ``sky_centroid`` SkyCoord column (photutils, deconvjax catalogs);
    - ``ra``, ``dec`` or SExtractor's ``ALPHA_J2000``, ``DELTA_J2000`` (degrees).

    Pixel columns come first (they are exact on the image the catalog was made on); sky
    positions go through the frame's WCS. A table with none of these columns is a
    `ValueError` naming ``argument`` and listing them."""
    if isinstance(catalog, Table):
        names = set(catalog.colnames)
        pos = None
        for ycol, xcol, offset in PIXEL_COLUMNS:
            if {ycol, xcol} <= names:
                pos = np.stack([_values(catalog[ycol]) - offset, _values(catalog[xcol]) - offset], axis=1)
                break
        if pos is None:
            import astropy.units as u

            if "sky_centroid" in names and isinstance(catalog["sky_centroid"], SkyCoord):
                sky = catalog["sky_centroid"]
            else:
                sky = next((SkyCoord(_values(catalog[a], u.deg), _values(catalog[d], u.deg), unit="deg")
                            for a, d in SKY_COLUMNS if {a, d} <= names), None)
            if sky is None:
                raise ValueError(
                    f"{argument}: no known position columns; accepted: {_accepted_columns()}. "
                    f"Got columns {catalog.colnames}"
                )
            if frame.wcs is None:
                raise ValueError(f"{argument} gives sky positions but the frame has no WCS: give pixel columns "
                                 "(y, x; xcentroid, ycentroid; X_IMAGE, Y_IMAGE) or images with a WCS")
            pos = frame.positions(sky)
    else:
        pos = frame.positions(catalog)
    if len(pos) and not np.all(np.isfinite(pos)):
        raise ValueError(f"{argument}: positions contain NaN or inf")
    return np.asarray(pos, dtype=np.float64).reshape(-1, 2)


def psf_sigma2(psf_kernel: np.ndarray) -> float | np.ndarray:
    """Mean second moment per axis of a ``(..., h, w)`` kernel, pixels^2 (one per leading
    index: many cutouts' kernels at once)."""
    k = np.clip(psf_kernel, 0, None)
    # Second moments along each axis only need the kernel's marginals.
    ky, kx = k.sum(axis=-1), k.sum(axis=-2)
    s = ky.sum(axis=-1)
    y, x = np.arange(ky.shape[-1]), np.arange(kx.shape[-1])
    cy, cx = (ky * y).sum(axis=-1) / s, (kx * x).sum(axis=-1) / s
    out = ((ky * (y - cy[..., None]) ** 2).sum(axis=-1) + (kx * (x - cx[..., None]) ** 2).sum(axis=-1)) / s / 2
    return float(out) if np.ndim(out) == 0 else out


def _shape_from_moments(q, sigma2_sub, max_g=0.5):
    """Intrinsic round sigma and reduced shear (GalSim convention) from observed moments
    minus an isotropic PSF second moment."""
    qyy, qyx, qxx = q[0] - sigma2_sub, q[1], q[2] - sigma2_sub
    trace = qyy + qxx
    if not trace > 0.18:  # unresolved: a small round source
        return 0.3, 0.0, 0.0
    det = max(qyy * qxx - qyx**2, 1e-6)
    sigma = det**0.25
    # Distortion e = (Qxx - Qyy, 2 Qxy) / (Qxx + Qyy) ; g = e / (1 + sqrt(1 - |e|^2)).
    e1, e2 = (qxx - qyy) / trace, 2 * qyx / trace
    e = np.hypot(e1, e2)
    if e >= 1:
        return float(sigma), 0.0, 0.0
    g = e / (1 + np.sqrt(1 - e**2))
    scale = min(g, max_g) / e if e > 0 else 0.0
    return float(sigma), float(e1 * scale), float(e2 * scale)


def _stamp_size(sigma: float, sizes=STAMP_SIZES) -> int:
    need = 2 * int(np.ceil(6.0 * sigma)) + 1
    for s in sizes:
        if s >= need:
            return s
    return sizes[-1]


def reference_observation(observations, frame):
    """The first observation on the model grid, for moments and detection."""
    for o in observations:
        if o.coords is None and o.frame_shape == frame.shape:
            return o
    return None


def _stamp_sigma_size(cls, measured: MeasuredShape, stamp_size) -> int:
    if stamp_size:
        return int(stamp_size)
    return _stamp_size(cls.stamp_sigma(measured))


def _unit_morphologies(frame, kind, sigmas, shears, stamp_size, min_sizes=None, max_sizes=None):
    model_sigma2 = psf_sigma2(frame.psf_kernel((31, 31), pixel_integrated=True))
    morphs = []
    for s, (sig, (g1, g2)) in enumerate(zip(sigmas, shears)):
        cls = morphology_class(kind[s])
        size = _stamp_sigma_size(cls, MeasuredShape(sig, g1, g2, model_sigma2), stamp_size)
        if not stamp_size and max_sizes is not None and int(max_sizes[s]) > 0:
            size = min(size, int(max_sizes[s]))
            sig = min(sig, size / 6.0)  # the starting Gaussian fits in its stamp
        if not stamp_size and min_sizes is not None:
            size = max(size, int(min_sizes[s]))
        measured = MeasuredShape(sig, g1, g2, model_sigma2)
        morphs.append(cls.from_parameters(cls.initial_parameters(measured, (size, size)), (size, size)))
    return morphs


def solve_spectra(scene: Scene, observations, *, floor: float | None = None) -> np.ndarray:
    """Least-squares spectra of the scene's sources given their morphologies: the model is
    linear in the spectra, so each band is an ``n x n`` solve over all observations.
    Negative solutions are clipped to a small positive ``floor`` (default: a tenth of the
    median per-pixel noise). Returns ``(source, band)`` float64, sources in scene order."""
    observations = as_observations(observations)
    n, nb = scene.n_sources, scene.shape[0]
    mat = np.zeros((nb, n, n))
    rhs = np.zeros((nb, n))
    noise = np.zeros(nb)
    for o in observations:
        # On the host from here: indexing device arrays would compile a program per index.
        m, r = (np.asarray(a, dtype=np.float64) for a in _normal_equations_jit(scene, o))
        weights = np.asarray(o.weights)
        for j, b in enumerate(o.band_index):
            mat[b] += m[j]
            rhs[b] += r[j]
            w = weights[j]
            if np.any(w > 0):
                noise[b] = max(noise[b], float(np.median(1 / np.sqrt(w[w > 0]))))
    return solve_normal_equations(mat, rhs, noise, floor)


def solve_normal_equations(mat, rhs, noise, floor=None) -> np.ndarray:
    """Solve the per-band normal equations ``(band, n, n)``; clip to a positive floor."""
    nb, n, _ = mat.shape
    spectra = np.zeros((n, nb))
    for b in range(nb):
        diag = np.diag(mat[b]).copy()
        ridge = 1e-6 * (diag.max() if diag.size and diag.max() > 0 else 1.0)
        try:
            spectra[:, b] = np.linalg.solve(mat[b] + ridge * np.eye(n), rhs[b])
        except np.linalg.LinAlgError:
            spectra[:, b] = rhs[b] / np.maximum(diag, ridge)
    fl = 0.1 * np.maximum(noise, 1e-6) if floor is None else np.full(nb, float(floor))
    spectra = np.where(np.isfinite(spectra), spectra, 0.0)
    return np.maximum(spectra, fl[None, :])


def normal_equations(scene: Scene, obs: Observation):
    """Per observation band, ``M = A^T W A`` and ``r = A^T W d``, ``A`` the sources with
    unit spectra seen through the observation."""
    if obs.coords is None:
        # With unit spectra every band of a source is the same image: render each source
        # in one band, transform it once, and apply each band's matching kernel (a third
        # of the transforms and memory of pushing every band through the operator).
        groups = tuple(eqx.tree_at(lambda s: s.spectrum, g, jnp.ones_like(g.spectrum[..., :1])) for g in scene.groups)
        unit = eqx.tree_at(lambda s: s.groups, scene, groups)
        ny, nx = obs.frame_shape
        x = jnp.fft.rfft2(unit.render_sources()[:, 0], s=obs.fft_shape)
        a = jnp.fft.irfft2(x[:, None] * obs.kernel_fft[None], s=obs.fft_shape)[..., :ny, :nx]
    else:
        groups = tuple(eqx.tree_at(lambda s: s.spectrum, g, jnp.ones_like(g.spectrum)) for g in scene.groups)
        unit = eqx.tree_at(lambda s: s.groups, scene, groups)
        a = jax.vmap(obs)(unit.render_sources())  # (source, obs band, y, x)
    m = jnp.einsum("sbyx,tbyx,byx->bst", a, a, obs.weights)
    r = jnp.einsum("sbyx,byx->bs", a, obs.weights * obs.data)
    return m, r


_normal_equations_jit = eqx.filter_jit(normal_equations)


def init_scene(
    frame: Frame,
    observations: Observation | Sequence[Observation],
    positions=None,
    *,
    kind: Kind | Sequence[Kind] = "pixel",
    stamp_size: int | None = None,
    nsigma: float = 5.0,
    min_distance: int = 2,
    max_sources: int | None = None,
    contrast: float = 0.005,
    return_detection: bool = False,
) -> Scene | tuple[Scene, Detection]:
    """Build an initial scene from the data.

    **Arguments:**

    - `frame`: the model `Frame`.
    - `observations`: the data (moments and detection use the first observation on the
      model grid; spectra are solved over all of them).
    - `positions`: source centres: ``(n, 2)`` model pixels ``(y, x)``, a SkyCoord, or a
      Table in deconvjax, photutils or SExtractor conventions (`positions_from`). ``None`` detects them
      (`deconvjax.fit.detection.find_sources`: ``nsigma`` above the background,
      ``min_distance``, ``max_sources``, deblending ``contrast``).
    - `kind`: a morphology kind (`deconvjax.model.morphology_kinds`): ``"pixel"``
      (free-form, scarlet style), ``"starlet"`` (free-form in the starlet basis),
      ``"structured"``, ``"sersic"``, ``"gaussian"`` or ``"point"``; or one per source:
      parametric and free-form sources mix in a scene.
    - `stamp_size`: one odd stamp size for every source (fixes the scene's structure, as
      batched fits of many cutouts need); default: from each source's size and segment.
    - `return_detection`: also return the `Detection` (positions, segmentation map,
      per-source stamp sizes; for given positions, their division of the footprints).

    Sizes and shears come from Gaussian-weighted second moments on each source's Voronoi
    cell of the data, minus the observation's PSF; each stamp is at least as large as
    the source's segment (a big halo gets a big stamp). Spectra are the joint
    least-squares solution given those morphologies (clipped positive).
    """
    if not isinstance(frame, Frame):
        raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
    observations = as_observations(observations)
    if not observations:
        raise ValueError("observations must hold at least one Observation")
    # Observations with a sky background: initialise on the data less a first estimate
    # of it, or the sky would go into the sources' sizes and fluxes (the fit then
    # refines the background together with the sources).
    observations = tuple(_less_initial_background(o) for o in observations)
    ref = reference_observation(observations, frame)
    if ref is None:
        raise ValueError(
            "init_scene needs one observation on the model frame's pixel grid (for detection "
            "and moments); build the frame from that observation"
        )
    if stamp_size is not None and (int(stamp_size) < 3 or int(stamp_size) % 2 == 0):
        raise ValueError(f"stamp_size must be an odd int >= 3, got {stamp_size}")
    data = np.asarray(ref.data, dtype=np.float64)
    weights = np.asarray(ref.weights, dtype=np.float64)
    det_kwargs = {"nsigma": nsigma, "min_distance": min_distance, "contrast": contrast,
                  "source_sigma": psf_width(_observed_psf(frame, ref))}
    detection = None
    if positions is None:
        detection = find_sources(data, weights, max_sources=max_sources, **det_kwargs)
        positions = detection.positions
        if len(positions) == 0:
            raise ValueError(
                f"no source detected {nsigma:g} sigma above the background (noise: the observation's "
                "weights); lower nsigma or give positions"
            )
    else:
        positions = positions_from(frame, positions, "positions")
    n = len(positions)
    if n == 0:
        raise ValueError("positions must hold at least one source")
    ny, nx = frame.shape
    outside = (positions[:, 0] < -0.5) | (positions[:, 0] > ny - 0.5) | (positions[:, 1] < -0.5) | (positions[:, 1] > nx - 0.5)
    if outside.any():
        raise ValueError(f"positions {np.nonzero(outside)[0].tolist()} lie outside the frame of shape {frame.shape}")
    kinds = [kind] * n if isinstance(kind, str) else list(kind)
    if len(kinds) != n:
        raise ValueError(f"kind must be one kind or one per source ({n}), got {kind!r}")
    for k in kinds:
        check_kind(k)
    if detection is None and (stamp_size is None or return_detection):
        # Given positions: the footprints divided among them size their stamps.
        detection = find_sources(data, weights, positions=positions, **det_kwargs)

    min_sizes = None if stamp_size is not None else detection.stamp_sizes
    max_sizes = None if stamp_size is not None else detection.max_sizes
    morphs = initial_morphologies(frame, ref, positions, kinds, stamp_size, min_sizes=min_sizes, max_sizes=max_sizes)
    sources = [Source(np.ones(frame.n_bands), m, positions[s]) for s, m in enumerate(morphs)]
    spectra = solve_spectra(Scene(frame, sources), observations)
    sources = [Source(spectra[s], m, positions[s]) for s, m in enumerate(morphs)]
    scene = Scene(frame, sources)
    return (scene, detection) if return_detection else scene


# One compiled program for the basis: called eagerly, its handful of jnp operations would
# each compile (and, with the persistent cache, each be looked up) on their own.
_background_basis = eqx.filter_jit(lambda background, shape: background.basis(shape))


def _less_initial_background(obs: Observation, n_iter: int = 5) -> Observation:
    """``obs`` with a first estimate of its background (`PlaneBackground`) subtracted
    from its data: weighted least squares of the plane per band over the pixels that
    are not sources, found by clipping whitened residuals beyond 3 sigma (grown by 2
    pixels to take in the sources' wings); ``obs`` itself without a background."""
    if obs.background is None:
        return obs
    from scipy import ndimage

    data = np.asarray(obs.data, dtype=np.float64)
    weights = np.asarray(obs.weights, dtype=np.float64)
    basis = np.asarray(_background_basis(obs.background, data.shape[-2:]), dtype=np.float64).reshape(-1, data[0].size)
    sky = np.zeros_like(data)
    for b in range(data.shape[0]):
        use = weights[b] > 0
        for _ in range(n_iter):
            w = np.where(use, weights[b], 0.0).ravel()
            gram = (basis * w) @ basis.T
            coef = np.linalg.lstsq(gram, (basis * w) @ data[b].ravel(), rcond=None)[0]
            sky[b] = (coef @ basis).reshape(data[b].shape)
            white = (data[b] - sky[b]) * np.sqrt(weights[b])
            sources = ndimage.binary_dilation(white > 3.0, iterations=2)
            new = (weights[b] > 0) & ~sources
            if new.sum() < basis.shape[0] or np.array_equal(new, use):
                break
            use = new
    return eqx.tree_at(lambda o: o.data, obs, jnp.asarray((data - sky).astype(np.float32)))


def _observed_psf(frame: Frame, ref: Observation) -> np.ndarray:
    """``ref``'s PSF images ``(band, h, w)`` (wrapped around: centred at a corner): the
    model PSF through the difference kernel."""
    model = np.asarray(frame.psf_kernel((31, 31), pixel_integrated=True), dtype=np.float64)
    model = model.reshape(-1, *model.shape[-2:])[0]
    fy, fx = ref.fft_shape
    pad = np.zeros((fy, fx))
    h, w = min(model.shape[0], fy), min(model.shape[1], fx)
    pad[:h, :w] = model[:h, :w]
    return np.fft.irfft2(np.fft.rfft2(pad)[None] * np.asarray(ref.kernel_fft), s=ref.fft_shape)


def _observedpsf_sigma2(frame: Frame, ref: Observation) -> float:
    """Second moment per axis (pixels^2) of ``ref``'s PSF: the model PSF's plus the
    difference kernel's (second moments add under convolution)."""
    model_sigma2 = psf_sigma2(frame.psf_kernel((31, 31), pixel_integrated=True))
    psf_k = np.fft.irfft2(np.asarray(ref.kernel_fft), s=ref.fft_shape)
    return float(model_sigma2 + kernel_sigma2(psf_k))


def initial_morphologies(
    frame: Frame, ref: Observation, positions: np.ndarray, kinds, stamp_size=None, *, min_sizes=None,
    max_sizes=None,
) -> list:
    """Unit-flux morphologies from moments of ``ref`` (an observation on the model grid):
    Gaussian-weighted moments of the S/N-weighted band sum on each source's Voronoi cell,
    minus the PSF's second moments. ``min_sizes``: per source, the least stamp size
    (e.g. `Detection.stamp_sizes`, 0 for none); ``max_sizes``: per source, the largest
    (`Detection.max_sizes`, 0 for no limit: the moments of a satellite include its host's
    halo); ``stamp_size`` overrides them."""
    sigmas, shears = moment_shapes(
        np.asarray(ref.data, dtype=np.float64), np.asarray(ref.weights, dtype=np.float64), positions,
        _observedpsf_sigma2(frame, ref),
    )
    return _unit_morphologies(frame, kinds, sigmas, shears, stamp_size, min_sizes, max_sizes)


def moment_shapes(data, weights, positions, psf_obs2) -> tuple[list, list]:
    """Intrinsic sizes and shears of the sources at ``positions`` from the moments of
    one cutout's ``(band, y, x)`` data; ``psf_obs2`` is the observed PSF's second moment
    (model PSF and difference kernel: their second moments add)."""
    det_num = (weights * data).sum(0)
    det_w = (weights > 0).any(0).astype(float)
    m = image_moments(det_num / np.maximum(weights.sum(0), 1e-30) * det_w, det_w, positions, window_sigma=3.0)
    q, ok = m.q, m.ok
    sigmas, shears = [], []
    for s in range(len(positions)):
        if ok[s]:
            sig, g1, g2 = _shape_from_moments(q[s], psf_obs2)
        else:
            sig, g1, g2 = 1.0, 0.0, 0.0
        sigmas.append(float(np.clip(sig, 0.3, 15.0)))
        shears.append((g1, g2))
    return sigmas, shears


def kernel_sigma2(k: np.ndarray) -> float | np.ndarray:
    """Second moment per axis of the (wrapped-around) difference kernel ``(..., band, h,
    w)``, averaged over bands."""
    k = k if k.ndim >= 3 else k[None]
    out = np.mean(psf_sigma2(np.fft.fftshift(k, axes=(-2, -1))), axis=-1)
    return float(out) if np.ndim(out) == 0 else out
