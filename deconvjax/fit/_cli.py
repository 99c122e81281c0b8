"""`deconvjax fit`: fit and deblend real FITS images."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .._cli_common import (
    FWHM_PER_SIGMA,
    FitsSpec,
    hdu_option,
    mask_option,
    model_psf_fwhm_option,
    noise_options,
    progress_option,
    read_cli_images,
)


def _read_catalog(path: Path, frame):
    """Model-frame positions of a --catalog file (any table astropy reads, SExtractor's
    ASCII_HEAD catalogs too), in the conventions `deconvjax.fit.positions_from` accepts."""
    from astropy.table import Table

    from .init import positions_from

    try:
        table = Table.read(path)
    except Exception as err:  # astropy raises many kinds for unreadable tables
        try:
            table = Table.read(path, format="ascii.sextractor")
        except Exception:
            raise click.BadParameter(f"{path}: cannot read a table ({err})", param_hint="--catalog") from None
    try:
        return positions_from(frame, table, str(path))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--catalog") from None


def _sources_filling_the_image(scene, frame) -> list[int]:
    """Sources whose stamp (sized from their detection segment) reaches past all four
    edges of the frame."""
    out = []
    ny, nx = frame.shape
    for g, order in zip(scene.groups, scene.order):
        h, w = g.morphology.shape
        corner = np.round(np.asarray(g.center)) - np.array([h // 2, w // 2])
        covers = (corner[:, 0] <= 0) & (corner[:, 1] <= 0) & (corner[:, 0] + h >= ny) & (corner[:, 1] + w >= nx)
        out += [order[i] for i in np.flatnonzero(covers)]
    return sorted(out)


def _load(images, psf, weights, variance, rms, bands, masks=(), hdu=None):
    """The data of the command's arguments (`deconvjax._cli_common.read_cli_images`).
    Without a noise map the noise is estimated (`read_images` records how in
    ``noise_estimate``; the command reports it, so the library's warning is not repeated);
    bad input is a BadParameter naming its option."""
    import warnings

    from ..io import is_observation_file

    images = [Path(p) for p in images]
    if len(images) == 1 and not psf and is_observation_file(images[0]):
        extra = [o for o, v in (("--weights", weights), ("--variance", variance), ("--rms", rms),
                                ("--mask", masks), ("--hdu", hdu)) if v]
        if extra:
            raise click.UsageError(f"{images[0]} is a deconvjax observation file (its own PSF, noise and mask): "
                                   f"leave out {', '.join(extra)}")
        return read_cli_images(images, bands=tuple(bands.split(",")) if bands else None)
    if not psf:
        raise click.UsageError("--psf is required (one PSF image per band, a PSF cube, or one for all bands)")
    band_names = tuple(bands.split(",")) if bands else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no noise map given", category=UserWarning)
        return read_cli_images(images, psf=psf, weights=weights, variance=variance, rms=rms, masks=masks,
                               hdu=hdu, bands=band_names)


@click.command("fit")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--psf", multiple=True, type=FitsSpec(),
              help="PSF image(s): one per band, a cube, or one for all bands (repeat the option; FILE[HDU] "
                   "picks an extension).")
@noise_options(per="one per band, a cube, or one for all bands",
               default="; without any, the noise is estimated from the images")
@mask_option()
@hdu_option
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Source table (ECSV, FITS, SExtractor ASCII_HEAD) with y, x or photutils "
                   "ycentroid, xcentroid (0-based pixels), SExtractor Y_IMAGE, X_IMAGE (1-based), or "
                   "ra, dec / sky_centroid / ALPHA_J2000, DELTA_J2000 (degrees); default: detect.")
@click.option("--bands", default=None, help="Comma-separated band names (default: FILTER/BAND keywords).")
@click.option("--kind", type=click.Choice(["pixel", "sersic", "gaussian", "point"]), default="pixel",
              show_default=True, help="Source model: free-form pixels (scarlet style) or a profile.")
@click.option("--monotonic/--no-monotonic", default=True, show_default=True,
              help="Free-form sources decrease outwards from their centre (scarlet's constraint).")
@click.option("--symmetric/--no-symmetric", default=True, show_default=True,
              help="Free-form sources are 180-degree symmetric (scarlet's constraint).")
@click.option("--structure/--no-structure", default=True, show_default=True,
              help="Where the residual of the constrained fit is significant, give the free-form source under it a "
                   "structure component (arms, clumps) free only there, and refit.")
@click.option("--sparsity", type=float, default=0.0, show_default=True,
              help="L1 penalty on max-normalised free-form morphologies (chi2 units per pixel).")
@click.option("--nsigma", type=float, default=5.0, show_default=True,
              help="Detection threshold: sigma above the estimated background (PSF-smoothed image).")
@click.option("--deblend-contrast", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.005, show_default=True,
              help="Least fraction of a footprint's flux a deblended component must hold (higher: fewer splits).")
@click.option("--max-iter", type=click.IntRange(min=0), default=300, show_default=True,
              help="Most optimiser steps of each fit.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Relative-change convergence test.")
@model_psf_fwhm_option("the widest Gaussian every PSF can be matched to")
@click.option("--allow-psf-gain", is_flag=True,
              help="Accept a model PSF wider than an observed PSF at some frequencies (amplifies noise).")
@click.option("--sky", type=click.Choice(["plane", "constant", "none"]), default="plane", show_default=True,
              help="Sky background fitted with the sources, per band: constant plus gradient, constant, or none.")
@click.option("--subtract-background", is_flag=True,
              help="Subtract a photutils Background2D map from the images before fitting.")
@click.option("--noise-model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A learned noise model (`deconvjax train-noise`) for images of this size and band count: the fit "
                   "follows its score (SLIC) instead of Gaussian noise; the reported chi2 is its Gaussian fit's.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (created).")
@progress_option
def fit_command(images, psf, weights, variance, rms, masks, hdu, catalog, bands, kind, monotonic, symmetric, structure, sparsity,
                nsigma,
                deblend_contrast, max_iter, rtol, model_psf_fwhm, allow_psf_gain, sky, subtract_background, noise_model,
                out_dir, progress):
    """Fit a scene to IMAGES (one FITS image per band, or a cube) and deblend it.

    Without --weights, --variance or --rms the noise is estimated from the images (a
    sigma-clipped background rms per band, plus the sources' Poisson noise where BUNIT,
    EXPTIME and GAIN allow) and the command says so. Sources are detected and segmented
    (photutils) unless --catalog gives them. --mask flags bad pixels, --hdu picks the
    images' extension (index or EXTNAME) and FILE[HDU] any other file's, e.g.
    --weights drz.fits[WHT].

    Writes model.fits, residual.fits, sources.fits (deblended per-source images),
    segmentation.fits (the detection's segment of each source), catalog.ecsv,
    results.fits, scene.eqx and panel.png into --out; the FITS headers record how
    the noise was set (NOISESRC).
    """
    import warnings

    from ..model import PlaneBackground
    from ..psf import GaussianPSF
    from .constraints import Constraints
    from .init import init_scene
    from .optimise import fit
    from .pipeline import write_products
    from .solver import AdamSolver

    data = _load(images, psf, weights, variance, rms, bands, masks, hdu)
    if data.noise_estimate is not None:
        click.echo(f"warning: {data.noise_estimate.summary()}; give --variance, --weights or --rms to set it",
                   err=True)
    if subtract_background:
        from ..io.noise import subtract_background2d

        data, levels = subtract_background2d(data)
        click.echo("subtracted a Background2D sky (median per band: " + ", ".join(f"{v:.4g}" for v in levels) + ")")
    try:
        frame = data.frame(psf=None if model_psf_fwhm is None else GaussianPSF(model_psf_fwhm / FWHM_PER_SIGMA))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--psf") from None
    click.echo(f"model PSF: Gaussian FWHM {float(frame.psf.sigma[0]) * FWHM_PER_SIGMA:.4g} arcsec "
               f"({float(frame.psf.sigma[0]) / frame.pixel_scale:.3g} model pixels sigma)")
    background = {"plane": PlaneBackground(1), "constant": PlaneBackground(0), "none": None}[sky]
    extra = {}
    if noise_model is not None:
        from ..likelihood.learned import NoiseModelLikelihood, load_noise_model

        try:
            likelihood = NoiseModelLikelihood(load_noise_model(noise_model))
            likelihood.check_shape(np.shape(data.images), "IMAGES")
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--noise-model") from None
        extra["likelihood"] = likelihood
        click.echo(f"noise: learned noise model {noise_model} (scale {likelihood.noise_model.scale:.4g})")
    try:
        obs = data.to_observation(frame, background=background, allow_psf_gain=allow_psf_gain, **extra)
    except ValueError as err:
        hint = "--model-psf-fwhm" if str(err).startswith("psf:") else "--psf"
        raise click.BadParameter(str(err), param_hint=hint) from None
    positions = None if catalog is None else _read_catalog(catalog, frame)
    try:
        scene, detection = init_scene(frame, obs, positions, kind=kind, nsigma=nsigma, contrast=deblend_contrast,
                                      return_detection=True)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    if catalog is None:
        click.echo(f"detected {scene.n_sources} sources {nsigma:g} sigma above the background")
    try:
        constraints = Constraints(monotonic=monotonic, symmetric=symmetric, sparsity=sparsity)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--sparsity") from None
    if structure:
        from .structure import with_structure_slots

        scene = with_structure_slots(scene, frame)
    with warnings.catch_warnings():
        if structure:
            # A constrained fit that misses structure is refitted below, and what is
            # said about the noise is said of the refit.
            warnings.filterwarnings("ignore", message="fit: chi2/pixel", category=UserWarning)
        fitted, result = fit(scene, obs, AdamSolver(rtol=rtol), max_iter=max_iter, constraints=constraints,
                             progress=progress)
    if structure and not result.failed:
        from .structure import add_structure

        structured, changed = add_structure(fitted, frame, obs)
        if changed:
            click.echo(f"constrained fit: chi2/pixel {result.chi2_per_pixel:.3f}, "
                       f"{100 * result.frac_beyond_3sigma:.2f}% of pixels beyond 3 sigma; significant residual "
                       f"structure under source(s) {', '.join(map(str, changed))}: adding structure components, refitting")
            fitted, result = fit(structured, obs, AdamSolver(rtol=rtol), max_iter=max_iter, constraints=constraints,
                                 progress=progress)
    written = write_products(out_dir, fitted, frame, obs, result, title=f"{Path(images[0]).name}",
                             segmentation=detection.segmentation, header_cards=data.noise_cards(), bunit=data.bunit)
    click.echo(
        f"fitted {fitted.n_sources} sources in {result.iterations} steps (converged={result.converged}, "
        f"failed={result.failed}): chi2/pixel {result.chi2_per_pixel:.3f}, reduced chi2 {result.chi2_per_dof:.3f} "
        f"({result.n_eff:.0f} effective parameters), {100 * result.frac_beyond_3sigma:.2f}% of pixels beyond 3 sigma"
    )
    for p in written:
        click.echo(f"wrote {p}")
    if not result.reached_noise:
        click.echo(
            "warning: the model does not reach the noise (expected chi2/pixel ~1, ~0.3% of pixels beyond 3 sigma): "
            f"look at {Path(out_dir) / 'residual.fits'} for missed sources, a wrong PSF, sky or noise map",
            err=True,
        )
    if background is not None:
        for k in _sources_filling_the_image(fitted, frame):
            click.echo(
                f"warning: source {k} fills the image (its stamp reaches past every edge): its outer wings and the "
                "fitted sky are degenerate, and the sky may hold some of its flux (see background.fits). Use a larger "
                "cutout, or subtract a sky measured elsewhere and fit with --sky none",
                err=True,
            )
    if result.failed or not np.isfinite(result.loss):
        raise SystemExit(1)
