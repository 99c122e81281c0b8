"""The same field seen several times: from space and from the ground, or over several epochs.

Both views share one intrinsic source catalog (positions on the sky, morphologies, SEDs, knot
realisations, COSMOS indices) and the same sky centre; each has its own TAN WCS with its own
pixel scale and an image covering the same patch of sky. Truth tables of both views share
``id``, ``ra`` and ``dec``; ``y``, ``x`` are each view's own pixels.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .blends import (
    COSMOS_CENTER,
    SimulatedField,
    as_rng,
    check_shape,
    draw_catalog,
    render_catalog,
)
from .surveys import Survey, get_survey


def epoch_survey(survey: Survey, n_epochs: int, fwhm_factor) -> Survey:
    """``survey`` split into one of ``n_epochs`` equal-depth epochs, seeing scaled per band.

    Each epoch gets ``exposure_time / n_epochs`` and ``n_exposures / n_epochs`` (at least 1),
    so the co-add of all epochs has the preset's depth.
    """
    fwhm_factor = np.broadcast_to(np.asarray(fwhm_factor, float), (len(survey.bands),))
    bands = tuple(
        dataclasses.replace(
            b,
            exposure_time=b.exposure_time / n_epochs,
            n_exposures=max(1, int(round(b.n_exposures / n_epochs))),
            psf_fwhm=float(b.psf_fwhm * f),
        )
        for b, f in zip(survey.bands, fwhm_factor, strict=True)
    )
    return dataclasses.replace(survey, bands=bands)


@dataclasses.dataclass
class PairedField:
    """A space view and a ground view of one field (`SimulatedField` each)."""

    space: SimulatedField
    ground: SimulatedField

    def __iter__(self):
        return iter((self.space, self.ground))


def simulate_paired(
    space: str | Survey = "hst",
    ground: str | Survey = "lsst",
    *,
    seed: int | np.random.Generator = 0,
    ground_shape: tuple[int, int] = (48, 48),
    n_sources: int = 4,
    space_bands=None,
    ground_bands=None,
    min_separation: float = 0.6,
    max_separation: float = 2.5,
    star_fraction: float = 0.1,
    real_fraction: float = 0.0,
    mag_range=(20.0, 25.0),
    center=COSMOS_CENTER,
    source_noise: bool = True,
    knots: bool = True,
    cosmos_path=None,
    correlated_noise: bool = False,
) -> PairedField:
    """Simulate a field in a space survey and a ground survey with consistent WCS.

    **Arguments:**

    - `space`, `ground`: presets (e.g. "hst" or "euclid" with "lsst" or "hsc").
    - `seed`: int or numpy Generator; the same seed gives the same pair.
    - `ground_shape`: (ny, nx) pixels of the ground image; the space image covers the same
      sky, ``round(ground_shape * ground_scale / space_scale)`` pixels.
    - `correlated_noise`: HST space view with drizzle-correlated background noise.
      Other arguments as in `deconvjax.sims.simulate_field`.
    """
    rng, seed_int = as_rng(seed)
    sp = get_survey(space, space_bands)
    gr = get_survey(ground, ground_bands)
    gy, gx = check_shape(ground_shape)
    extent = (gy * gr.pixel_scale, gx * gr.pixel_scale)
    sshape = (int(round(extent[0] / sp.pixel_scale)), int(round(extent[1] / sp.pixel_scale)))
    cat = draw_catalog(rng, n_sources, extent, star_fraction=star_fraction,
                       real_fraction=real_fraction, min_separation=min_separation,
                       max_separation=max_separation, mag_range=mag_range,
                       cosmos_path=cosmos_path, knots=knots,
                       psf_margin=max(sp.psf_margin(), gr.psf_margin()))
    # Independent noise streams per view, both fixed by the seed.
    r_space, r_ground = rng.spawn(2)
    fs = render_catalog(r_space, sp, cat, sshape, center, source_noise=source_noise,
                        cosmos_path=cosmos_path, seed=seed_int,
                        correlated_noise=correlated_noise)
    fg = render_catalog(r_ground, gr, cat, (gy, gx), center, source_noise=source_noise,
                        cosmos_path=cosmos_path, seed=seed_int)
    return PairedField(space=fs, ground=fg)


def simulate_epochs(
    survey: str | Survey = "lsst",
    n_epochs: int = 3,
    *,
    seed: int | np.random.Generator = 0,
    shape: tuple[int, int] = (64, 64),
    n_sources: int = 4,
    bands=None,
    seeing_scatter: float = 0.15,
    min_separation: float = 0.6,
    max_separation: float = 2.5,
    star_fraction: float = 0.1,
    real_fraction: float = 0.0,
    mag_range=(20.0, 25.0),
    center=COSMOS_CENTER,
    source_noise: bool = True,
    knots: bool = True,
    cosmos_path=None,
) -> list[SimulatedField]:
    """One field observed in ``n_epochs`` epochs of a ground survey.

    The epochs share the source catalog, WCS and pixel grid; each has its own seeing (the
    preset FWHM times a lognormal factor of scatter ``seeing_scatter``, drawn per epoch and
    band), its own noise, and ``1 / n_epochs`` of the preset depth (so fluxes in electrons are
    ``1 / n_epochs`` of the single-image preset's).
    """
    if not isinstance(n_epochs, (int, np.integer)) or n_epochs < 1:
        raise ValueError(f"n_epochs: expected an int >= 1, got {n_epochs!r}")
    if seeing_scatter < 0:
        raise ValueError(f"seeing_scatter: expected >= 0, got {seeing_scatter}")
    rng, seed_int = as_rng(seed)
    sv = get_survey(survey, bands)
    ny, nx = check_shape(shape)
    extent = (ny * sv.pixel_scale, nx * sv.pixel_scale)
    worst = float(np.exp(2.0 * seeing_scatter))  # a 2-sigma bad-seeing epoch
    cat = draw_catalog(rng, n_sources, extent, star_fraction=star_fraction,
                       real_fraction=real_fraction, min_separation=min_separation,
                       max_separation=max_separation, mag_range=mag_range,
                       cosmos_path=cosmos_path, knots=knots,
                       psf_margin=worst * sv.psf_margin())
    factors = np.exp(seeing_scatter * rng.standard_normal((n_epochs, len(sv.bands))))
    if sv.space:
        factors = np.ones_like(factors)  # space PSFs are stable
    out = []
    for e, r in enumerate(rng.spawn(n_epochs)):
        ev = epoch_survey(sv, n_epochs, factors[e])
        f = render_catalog(r, ev, cat, (ny, nx), center, source_noise=source_noise,
                           cosmos_path=cosmos_path, seed=seed_int)
        f.truth.meta["epoch"] = e
        out.append(f)
    return out
