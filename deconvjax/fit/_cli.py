"""`deconvjax fit`: fit and deblend real FITS images."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np


def _read_catalog(path: Path):
    from astropy.table import Table

    try:
        return Table.read(path)
    except Exception as err:  # astropy raises many kinds for unreadable tables
        raise click.BadParameter(f"{path}: cannot read a table ({err})", param_hint="--catalog") from None


def _load(images, psf, weights, variance, rms, bands):
    from astropy.io import fits

    from ..io import read_arrays, read_images

    images = [Path(p) for p in images]
    if len(images) == 1 and not psf:
        with fits.open(images[0]) as hdul:
            is_dj = hdul[0].header.get("DJFORMAT") == "deconvjax-observation"
        if is_dj:
            return read_arrays(images[0])
    if not psf:
        raise click.UsageError("--psf is required (one PSF image per band, a PSF cube, or one for all bands)")
    given = [(n, v) for n, v in (("weight", weights), ("variance", variance), ("rms", rms)) if v]
    if len(given) > 1:
        raise click.UsageError("give at most one of --weights, --variance, --rms")
    kwargs = {}
    if given:
        name, maps = given[0]
        kwargs[name] = [str(p) for p in maps] if len(maps) > 1 else str(maps[0])
    spec = [str(p) for p in images] if len(images) > 1 else str(images[0])
    psf_spec = [str(p) for p in psf] if len(psf) > 1 else str(psf[0])
    band_names = tuple(bands.split(",")) if bands else None
    return read_images(spec, psf=psf_spec, bands=band_names, **kwargs)


@click.command("fit")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--psf", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PSF image(s): one per band, a cube, or one for all bands (repeat the option).")
@click.option("--weights", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Inverse-variance map(s), one per band or a cube.")
@click.option("--variance", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Variance map(s), one per band or a cube.")
@click.option("--rms", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="RMS (sigma) map(s), one per band or a cube.")
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Source table with y, x (pixels) or ra, dec (degrees) columns; default: detect.")
@click.option("--bands", default=None, help="Comma-separated band names (default: FILTER/BAND keywords).")
@click.option("--kind", type=click.Choice(["pixel", "sersic", "gaussian", "point"]), default="pixel",
              show_default=True, help="Source model: free-form pixels (scarlet style) or a profile.")
@click.option("--monotonic/--no-monotonic", default=True, show_default=True,
              help="Free-form sources decrease outwards from their centre (scarlet's constraint).")
@click.option("--symmetric/--no-symmetric", default=True, show_default=True,
              help="Free-form sources are 180-degree symmetric (scarlet's constraint).")
@click.option("--sparsity", type=float, default=0.0, show_default=True,
              help="L1 penalty on max-normalised free-form morphologies (chi2 units per pixel).")
@click.option("--nsigma", type=float, default=5.0, show_default=True, help="Detection threshold.")
@click.option("--max-iter", type=click.IntRange(min=0), default=300, show_default=True)
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Relative-change convergence test.")
@click.option("--model-psf", type=float, default=None,
              help="Model PSF sigma in arcsec (default: 1 model pixel).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (created).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def fit_command(images, psf, weights, variance, rms, catalog, bands, kind, monotonic, symmetric, sparsity, nsigma,
                max_iter, rtol, model_psf, out_dir, progress):
    """Fit a scene to IMAGES (one FITS image per band, or a cube) and deblend it.

    Writes model.fits, residual.fits, sources.fits (deblended per-source images),
    catalog.ecsv, results.fits, scene.eqx/json and panel.png into --out.
    """
    from ..psf import GaussianPSF
    from .constraints import Constraints
    from .init import init_scene
    from .optimise import fit
    from .pipeline import write_products

    try:
        data = _load(images, psf, weights, variance, rms, bands)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="IMAGES/--psf/--weights") from None
    frame = data.frame(psf=None if model_psf is None else GaussianPSF(model_psf))
    try:
        obs = data.to_observation(frame)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--psf") from None
    positions = None if catalog is None else _read_catalog(catalog)
    try:
        scene = init_scene(frame, obs, positions, kind=kind, nsigma=nsigma)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    try:
        constraints = Constraints(monotonic=monotonic, symmetric=symmetric, sparsity=sparsity)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--sparsity") from None
    fitted, result = fit(scene, obs, max_iter=max_iter, rtol=rtol, constraints=constraints, progress=progress)
    written = write_products(out_dir, fitted, frame, obs, result, title=f"{Path(images[0]).name}")
    click.echo(
        f"fitted {fitted.n_sources} sources in {result.iterations} steps: chi2/dof "
        f"{result.chi2_per_dof:.3f}, converged={result.converged}, failed={result.failed}"
    )
    for p in written:
        click.echo(f"wrote {p}")
    if result.failed or not np.isfinite(result.loss):
        raise SystemExit(1)
