"""Measurements of a fitted scene: fluxes and their errors, centroids, sizes, per-source
chi2, flags and deblended images, gathered in one astropy `QTable` (`catalog`)."""

from __future__ import annotations

import enum

import astropy.units as u
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import QTable
from jaxtyping import Array, Float

from ..frame import Frame
from ..io.products import flux_unit
from ..model import Scene
from ..observation import Observation, as_observations
from .moments import image_moments


def source_fluxes(scene: Scene) -> np.ndarray:
    """``(source, band)`` total model flux of each source (its stamp's sum, before any
    clipping at the frame's edge), sources in the order given to the scene."""
    per_group = [np.asarray(f) for f in _stamp_fluxes(scene)]
    flux = np.concatenate(per_group, axis=0)
    inverse = np.argsort(np.concatenate([np.asarray(o) for o in scene.order]))
    return flux[inverse]


@eqx.filter_jit
def _stamp_fluxes(scene: Scene):
    return [jnp.sum(stamps, axis=(-2, -1)) for stamps, _ in scene.stamps()]


def source_centers(scene: Scene) -> np.ndarray:
    """``(source, 2)`` fitted ``(y, x)`` centres, in the order given to the scene."""
    c = np.concatenate([np.asarray(g.center) for g in scene.groups], axis=0)
    inverse = np.argsort(np.concatenate([np.asarray(o) for o in scene.order]))
    return c[inverse]


def source_kinds(scene: Scene) -> list[str]:
    """Per source: its morphology's kind (``pixel``, ``sersic``, ...); a structured
    free-form source is ``pixel`` until it has a structure component, ``structured``
    after."""
    kinds = []
    for g, o in zip(scene.groups, scene.order):
        kinds += list(zip(o, g.morphology.source_kinds(len(o))))
    return [k for _, k in sorted(kinds)]


@jax.jit
def _share(models: Float[Array, "source band y x"], data: Float[Array, "band y x"]):
    m = jnp.maximum(models, 0.0)
    total = jnp.sum(m, axis=0)
    return jnp.where(total > 0, m / jnp.where(total > 0, total, 1.0), 0.0) * data


def deblend(scene: Scene, observation: Observation) -> Float[Array, "source band y x"]:
    """Each source's share of an observation's data: ``data * model_s / sum_t model_t``
    (the scarlet convention; model values clipped at 0), ``(source, obs band, y, x)``."""
    if not isinstance(observation, Observation):
        raise TypeError(f"observation must be an Observation, got {type(observation).__name__}")
    return _deblend(scene, observation)


@eqx.filter_jit
def _deblend(scene: Scene, observation: Observation):
    models = jax.vmap(observation.apply)(scene.render_sources())
    return _share(models, observation.data)


class CatalogFlag(enum.IntFlag):
    """The bits of a catalog's ``flags`` column (0: nothing to report).

    - ``NOT_CONVERGED`` (1): the fit that made the scene did not converge, or failed
      (`FitResult.converged` / `FitResult.failed`; only set when the result is given).
    - ``NEAR_EDGE`` (2): the source's stamp crosses the frame's edge, so part of its model
      is clipped and its flux extrapolated there.
    - ``NEGATIVE_FLUX`` (4): the flux is negative in at least one band.
    - ``ERROR_UNDEFINED`` (8): a flux error is not defined in at least one band (no
      observations given, no unmasked data under the source in that band, or a singular
      Hessian: e.g. two sources on the same pixels).
    """

    NOT_CONVERGED = 1
    NEAR_EDGE = 2
    NEGATIVE_FLUX = 4
    ERROR_UNDEFINED = 8


def _with_spectra(scene: Scene, spectra) -> Scene:
    groups = tuple(eqx.tree_at(lambda g: g.spectrum, g, s) for g, s in zip(scene.groups, spectra))
    return eqx.tree_at(lambda sc: sc.groups, scene, groups)


#: Amplitudes up to which the Hessian is one `jax.hessian` call; above, its columns are
#: computed `HESSIAN_BATCH` at a time (the same forward-over-reverse products), because
#: `jax.hessian` holds one model cube per amplitude at once (GBs for a large field).
HESSIAN_DIRECT = 256
HESSIAN_BATCH = 64


@eqx.filter_jit
def _flux_hessian(scene: Scene, observations: tuple[Observation, ...], batch: int | None = None):
    """The Hessian of ``chi2 / 2`` with respect to every source's spectrum (flattened
    group by group, row by row, band by band), morphologies and centres fixed, and each
    source's flux per unit spectrum (the stamp's sum at spectrum 1). ``batch``: compute
    the Hessian's columns that many at a time (None: `jax.hessian` at once, or batches of
    `HESSIAN_BATCH` above `HESSIAN_DIRECT` amplitudes)."""
    shapes = [g.spectrum.shape for g in scene.groups]
    sizes = [int(np.prod(sh)) for sh in shapes]
    flat0 = jnp.concatenate([g.spectrum.ravel() for g in scene.groups])

    def split(flat):
        parts, start = [], 0
        for sh, n in zip(shapes, sizes):
            parts.append(flat[start:start + n].reshape(sh))
            start += n
        return parts

    def loss(flat):
        model = _with_spectra(scene, split(flat)).render()
        return 0.5 * sum(o.chi2(model) for o in observations)

    size = flat0.shape[0]
    if batch is None and size <= HESSIAN_DIRECT:
        hessian = jax.hessian(loss)(flat0)
    else:
        grad = jax.grad(loss)

        def column(e):
            return jax.jvp(grad, (flat0,), (e,))[1]

        eye = jnp.eye(size, dtype=flat0.dtype)
        hessian = jax.lax.map(column, eye, batch_size=min(batch or HESSIAN_BATCH, size))
    unit = _with_spectra(scene, [jnp.ones(sh, flat0.dtype) for sh in shapes])
    per_unit = jnp.concatenate([jnp.sum(st, axis=(-2, -1)).ravel() for st, _ in unit.stamps()])
    return hessian, per_unit


def flux_errors(scene: Scene, observations, *, batch: int | None = None) -> np.ndarray:
    """``(source, band)`` 1-sigma errors of `source_fluxes`, from the inverse Hessian of
    the fit's likelihood term (``chi2 / 2`` over all ``observations``, the sky profiled
    out where an observation fits one, as in the fit) at the scene's values, taken with
    respect to the per-source, per-band amplitudes (spectra) only: **morphologies and
    centres are held fixed**, so the errors are conditional on the fitted shapes (they
    leave out the shape-flux covariance, and the sparsity penalty and morphology prior,
    which act on shapes only). The model is linear in the amplitudes, so this is the
    exact Gaussian error of a linear least-squares flux for given templates,
    ``sqrt(diag((A^T W A)^-1))``, covariances between blended sources included (the
    Hessian is inverted whole). NaN where undefined (no unmasked data constrains the
    amplitude, or the Hessian is singular there). ``batch``: Hessian columns computed at
    once (default: all for up to `HESSIAN_DIRECT` amplitudes, else `HESSIAN_BATCH`; lower
    it where memory is short)."""
    observations = as_observations(observations)
    if not observations:
        raise ValueError("observations: give at least one Observation to measure flux errors")
    if batch is not None and int(batch) < 1:
        raise ValueError(f"batch: expected a positive number of Hessian columns, got {batch}")
    hessian, per_unit = _flux_hessian(scene, observations, None if batch is None else int(batch))
    h = np.asarray(hessian, np.float64)
    h = 0.5 * (h + h.T)
    k = np.asarray(per_unit, np.float64)
    diag = np.diag(h)
    # Amplitudes that no data constrains (masked, outside every observation, a band no
    # observation has) have a zero row: leave them out of the inversion, error undefined.
    ok = diag > 1e-12 * max(float(diag.max(initial=0.0)), np.finfo(np.float64).tiny)
    var = np.full(len(diag), np.nan)
    if ok.any():
        sub = h[np.ix_(ok, ok)]
        try:
            cov = np.linalg.inv(sub)
            var[ok] = np.diag(cov)
        except np.linalg.LinAlgError:
            pass
    with np.errstate(invalid="ignore"):
        err = np.where(np.isfinite(var) & (var > 0), np.abs(k) * np.sqrt(np.where(var > 0, var, 0.0)), np.nan)
    nb = scene.shape[0]
    err = err.reshape(-1, nb)
    inverse = np.argsort(np.concatenate([np.asarray(o) for o in scene.order]))
    return err[inverse]


@eqx.filter_jit
def _footprint_chi2(scene: Scene, observation: Observation, fraction: Float[Array, ""]):
    models = jax.vmap(observation.apply)(scene.render_sources())
    predicted = observation.predict(scene.render())
    white2 = observation.likelihood.whiten(observation.data - predicted, observation.weights) ** 2
    valid = (observation.weights > 0).astype(white2.dtype)
    image = jnp.sum(jnp.abs(models), axis=1)
    peak = jnp.max(image, axis=(-2, -1), keepdims=True)
    foot = ((image >= fraction * peak) & (peak > 0)).astype(white2.dtype)
    chi2 = jnp.einsum("syx,byx->s", foot, white2 * valid)
    n = jnp.einsum("syx,byx->s", foot, valid)
    return chi2, n


def footprint_chi2(scene: Scene, observations, fraction: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Per source, the chi2 of the whole scene's residual over the source's footprint,
    summed over bands and observations, and the number of unmasked pixel values in it.
    A source's footprint in an observation is where its model (seen through that
    observation, summed over bands) is at least ``fraction`` of its peak. The residual
    is whitened by the observation's likelihood (``(data - model) * sqrt(weight)`` for
    Gaussian noise), so ``chi2 / n`` is about 1 where the model explains the data."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction: expected a number in (0, 1), got {fraction}")
    chi2 = np.zeros(scene.n_sources)
    n = np.zeros(scene.n_sources)
    for o in as_observations(observations):
        c, k = _footprint_chi2(scene, o, jnp.asarray(fraction, jnp.float32))
        chi2 += np.asarray(c, np.float64)
        n += np.asarray(k, np.float64)
    return chi2, n


def _stamp_clipped(scene: Scene) -> np.ndarray:
    """Per source (scene order): its stamp crosses the frame's edge."""
    ny, nx = scene.shape[1:]
    out = np.zeros(scene.n_sources, bool)
    for (stamps, corners), order in zip(_stamp_corners(scene), scene.order):
        h, w = stamps
        c = np.asarray(corners)
        clipped = (c[:, 0] < 0) | (c[:, 1] < 0) | (c[:, 0] + h > ny) | (c[:, 1] + w > nx)
        out[np.asarray(order)] = clipped
    return out


def _stamp_corners(scene: Scene):
    """Per group: the stamp's ``(h, w)`` and every source's top-left corner."""
    out = []
    for g in scene.groups:
        h, w = g.morphology.shape
        corner = np.round(np.asarray(g.center)).astype(np.int64) - np.array([h // 2, w // 2])
        out.append(((h, w), corner))
    return out


def catalog(
    scene: Scene,
    frame: Frame,
    observations=None,
    *,
    result=None,
    unit: str | u.UnitBase | None = None,
    errors: bool = True,
    footprint: float = 0.01,
) -> QTable:
    """An astropy `QTable` with one row per source (in the order given to the scene).

    **Arguments:**

    - `scene`, `frame`: the fitted scene and its model frame.
    - `observations`: the fitted `Observation`(s); needed for flux errors, chi2 and
      deblended fluxes (their columns are left out without them).
    - `result`: the `FitResult` of the fit, for the ``NOT_CONVERGED`` flag.
    - `unit`: the data's flux unit: a FITS ``BUNIT`` string (`ObservationData.bunit`) or an
      astropy unit; dimensionless when None or not a unit (`deconvjax.io.flux_unit`).
      The BUNIT as given is kept in ``meta["BUNIT"]``.
    - `errors`: compute flux errors (one Hessian of size ``(source x band)^2``).
    - `footprint`: the fraction of its peak that bounds a source's footprint (chi2).

    **Columns:**

    - ``id``, ``kind``;
    - ``y``, ``x``: fitted centre (model pixels, 0-based, ``u.pix``); with a WCS,
      ``sky_centroid`` (`SkyCoord`) and ``ra``, ``dec`` (deg);
    - ``flux_<band>``: model flux (the source's stamp summed, before clipping at the edge),
      in ``unit``;
    - with observations: ``flux_err_<band>`` (`flux_errors`: inverse Hessian of ``chi2/2``
      with respect to the amplitudes, morphology and centre fixed; NaN where undefined),
      ``snr_<band>`` (flux over its error), ``chi2`` and ``npix`` (`footprint_chi2`:
      chi2 over the source's footprint and its number of unmasked pixel values),
      ``chi2_per_pixel`` and ``deblended_flux_<band>`` (the source's deblended share of
      the first observation holding that band, in ``unit``);
    - ``centroid_y``, ``centroid_x``, ``size``: first-moment centroid and ``sqrt(trace/2)``
      second-moment size of the model image summed over bands (model pixels, PSF included);
    - ``flags``: `CatalogFlag` bits (``meta["FLAGBITS"]`` spells them out).
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if not isinstance(frame, Frame):
        raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
    fu = flux_unit(unit)
    observations = None if observations is None else as_observations(observations)
    n = scene.n_sources
    t = QTable()
    t["id"] = np.arange(n, dtype=np.int64)
    t["kind"] = np.array(source_kinds(scene), dtype="U10")
    centers = source_centers(scene)
    t["y"], t["x"] = centers[:, 0] * u.pix, centers[:, 1] * u.pix
    if frame.wcs is not None:
        sky = frame.to_sky(centers)
        t["sky_centroid"] = sky
        t["ra"], t["dec"] = sky.icrs.ra.deg * u.deg, sky.icrs.dec.deg * u.deg
    flux = source_fluxes(scene)
    flags = np.zeros(n, np.int64)
    for b, name in enumerate(frame.bands):
        t[f"flux_{name}"] = flux[:, b] * fu
    if observations:
        err = flux_errors(scene, observations) if errors else np.full(flux.shape, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = flux / err
        for b, name in enumerate(frame.bands):
            t[f"flux_err_{name}"] = err[:, b] * fu
            t[f"snr_{name}"] = snr[:, b]
        flags |= np.where(np.any(~np.isfinite(err), axis=1), CatalogFlag.ERROR_UNDEFINED, 0)
        chi2, npix = footprint_chi2(scene, observations, footprint)
        t["chi2"] = chi2
        t["npix"] = npix.astype(np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            t["chi2_per_pixel"] = np.where(npix > 0, chi2 / np.where(npix > 0, npix, 1), np.nan)
    else:
        flags |= CatalogFlag.ERROR_UNDEFINED
    images = np.asarray(scene.render_sources()).sum(axis=1)
    m = image_moments(images)
    t["centroid_y"], t["centroid_x"], t["size"] = m.y * u.pix, m.x * u.pix, m.size * u.pix
    if observations:
        done = set()
        for o in observations:
            shares = None
            for j, b in enumerate(o.bands):
                if b in done:
                    continue
                if shares is None:
                    shares = np.asarray(deblend(scene, o))
                t[f"deblended_flux_{b}"] = shares[:, j].sum(axis=(-2, -1)) * fu
                done.add(b)
    flags |= np.where(_stamp_clipped(scene), CatalogFlag.NEAR_EDGE, 0)
    flags |= np.where(np.any(flux < 0, axis=1), CatalogFlag.NEGATIVE_FLUX, 0)
    if result is not None and (not bool(np.all(result.converged)) or bool(np.any(result.failed))):
        flags |= CatalogFlag.NOT_CONVERGED
    t["flags"] = flags
    if unit is not None:
        t.meta["BUNIT"] = str(unit)
    # A string, not a mapping: FITS table headers (results.fits) hold scalar cards only.
    t.meta["FLAGBITS"] = ", ".join(f"{int(f.value)} {f.name}" for f in CatalogFlag)
    return t
