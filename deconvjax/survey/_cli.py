"""`deconvjax fit-survey`: fit every cutout of a survey, shard by shard, on Dask."""

from __future__ import annotations

from pathlib import Path

import click

from .._cli_common import FWHM_PER_SIGMA, deprecated_alias, model_psf_fwhm_option, progress_option


def chi2_warn_option(f):
    return click.option(
        "--chi2-warn", type=click.FloatRange(min=1.0, min_open=True), default=2.0, show_default=True,
        help="Warn about cutouts whose chi2 per pixel exceeds this (their model does not describe the data).",
    )(f)


#: Cutout ids named in a warning; the rest are counted.
_IDS_SHOWN = 10


@click.command("fit-survey")
@click.argument("cutouts", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: catalog/ (one Parquet file per shard), shards.json, survey.json.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Dask workers of a local cluster (0: run in this process).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler (tcp://host:8786).")
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Cutouts per shard (a rerun into the same --out must keep it).")
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Cutouts per compiled fit call (a bucket's last batch is padded to it).")
@click.option("--max-iter", type=click.IntRange(min=0), default=200, show_default=True,
              help="Most optimiser steps of each fit.")
@click.option("--rtol", type=float, default=1e-4, show_default=True, help="Relative-change convergence test.")
@click.option("--stamp-size", type=int, default=21, show_default=True, help="Odd side of each source's stamp.")
@model_psf_fwhm_option("the widest Gaussian the first cutouts' PSFs can be matched to; one for the whole survey")
@deprecated_alias("--model-psf-sigma", "--model-psf-fwhm (FWHM = 2.3548 sigma)", "model_psf_fwhm",
                  type=click.FloatRange(min=0.0, min_open=True), convert=lambda sigma: sigma * FWHM_PER_SIGMA)
@click.option("--devices", is_flag=True, help="Spread each batch over every device of the process (NamedSharding).")
@click.option("--seed", type=int, default=0, show_default=True, help="Recorded in every row.")
@click.option("--cache-dir", default=None,
              help="Shared compilation cache folder (default: $DECONVJAX_CACHE_DIR or ~/.cache/deconvjax/jax; 'off').")
@chi2_warn_option
@progress_option
def fit_survey(cutouts, out_dir, workers, scheduler, shard_size, batch, max_iter, rtol, stamp_size, model_psf_fwhm,
               devices, seed, cache_dir, chi2_warn, progress):
    """Fit every cutout of CUTOUTS (a manifest, or a `deconvjax simulate` folder) on Dask.

    Writes one Parquet file per shard under OUT/catalog (read them as one table with
    pyarrow.dataset or deconvjax.survey.read_catalog). Rerunning the same command skips
    the finished shards.
    """
    from .._cli_common import alias_value
    from . import FitTask

    model_psf_fwhm = alias_value(model_psf_fwhm, "model_psf_fwhm")
    model_psf_sigma = None if model_psf_fwhm is None else model_psf_fwhm / FWHM_PER_SIGMA
    try:
        task = FitTask(max_iter=max_iter, rtol=rtol, stamp_size=stamp_size, batch=batch, shard=devices,
                       model_psf_sigma=model_psf_sigma)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    run_and_report(cutouts, out_dir, task, chi2_warn=chi2_warn, workers=workers, scheduler=scheduler,
                   shard_size=shard_size, seed=seed, cache_dir=cache_dir, progress=progress)


def run_and_report(cutouts, out_dir, task, *, chi2_warn: float = 2.0, **run_options) -> dict:
    """`run_survey` for a command: input errors name CUTOUTS, run errors end the command
    with their message, a one-line summary is printed, and a warning on stderr names the
    cutouts whose rows should not be trusted as they stand (`catalog_quality`). Shared by
    `fit-survey` and `sample-survey`."""
    from . import SurveyError, SurveyInputError, catalog_quality, run_survey

    try:
        result = run_survey(cutouts, out_dir, task, **run_options)
    except SurveyInputError as err:
        raise click.BadParameter(str(err), param_hint="CUTOUTS") from None
    except (SurveyError, OSError) as err:
        raise click.ClickException(str(err)) from None
    n_rows = sum(r.get("rows", 0) for r in result["shards"].values())
    click.echo(f"{result['ran']} shard(s) run, {len(result['shards'])} done; {n_rows} rows in {out_dir / 'catalog'}")
    if n_rows:
        quality = catalog_quality(out_dir, chi2_limit=chi2_warn)
        problems = (("high_chi2", f"chi2 per pixel above {chi2_warn:g} (the model does not describe the data: "
                                  "a star, an artefact, a missing source or a wrong noise level)"),
                    ("failed", "failed fits"), ("not_converged", "fits that did not converge"))
        for key, what in problems:
            ids = quality[key]
            if ids:
                shown = ", ".join(ids[:_IDS_SHOWN]) + (f" and {len(ids) - _IDS_SHOWN} more" if len(ids) > _IDS_SHOWN
                                                       else "")
                click.secho(f"Warning: {len(ids)} of {quality['n_cutouts']} cutouts: {what}: {shown}. "
                            "Their rows are in the catalog; do not use their fluxes as measurements.",
                            fg="yellow", err=True)
    return result
