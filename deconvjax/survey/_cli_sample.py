"""`deconvjax sample-survey`: posterior samples of every cutout of a survey, shard by
shard, on Dask (a module of its own: `deconvjax fit-survey` does not import the diffusion
package)."""

from __future__ import annotations

from pathlib import Path

import click

from .._cli_common import progress_option
from ..diffusion.samplers.names import DEFAULT_SAMPLER_NAME, SAMPLER_NAMES
from ._cli import chi2_warn_option


@click.command("sample-survey")
@click.argument("cutouts", type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder: catalog/ (one Parquet file per shard), images/ (one .npz of posterior mean "
                   "and std images per shard), shards.json, survey.json.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Dask workers of a local cluster (0: run in this process).")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler (tcp://host:8786).")
@click.option("--shard-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Cutouts per shard (a rerun into the same --out must keep it).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Cutouts sampled together in one batched solve (larger on a GPU).")
@click.option("--n-samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="Posterior samples per cutout.")
@click.option("--prior", "prior_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Prior checkpoint (default: the galaxy prior shipped with deconvjax, 32x32 px, one band).")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default=DEFAULT_SAMPLER_NAME, show_default=True,
              help="The diffusion sampler (as `deconvjax sample --sampler`).")
@click.option("--sampler-steps", type=click.IntRange(min=1), default=None,
              help="Steps of the fixed-step samplers (default: the sampler's own).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Run key: cutout i (manifest row) is sampled with fold_in(key(seed), i).")
@click.option("--cache-dir", default=None,
              help="Shared compilation cache folder (default: $DECONVJAX_CACHE_DIR or ~/.cache/deconvjax/jax; 'off').")
@chi2_warn_option
@progress_option
def sample_survey(cutouts, out_dir, workers, scheduler, shard_size, batch, n_samples, prior_path, sampler, sampler_steps,
                  seed, cache_dir, chi2_warn, progress):
    """Posterior samples of every cutout of CUTOUTS (a manifest, or a `deconvjax simulate`
    folder) with a diffusion prior, each through its own PSF and noise, on Dask.

    Writes one Parquet file per shard under OUT/catalog (one row per cutout and band:
    posterior-mean flux and its std, chi2 per pixel of the mean) and the posterior mean
    and std images under OUT/images, at the E-step's model resolution (a Gaussian PSF of
    sigma 0.5 pixel of each cutout). Rerunning the same command skips the finished shards.
    """
    from ..diffusion.samplers.names import sampler_from_name
    from ._cli import run_and_report
    from .sample import SampleTask

    try:
        task = SampleTask(prior=None if prior_path is None else str(prior_path),
                          sampler=sampler_from_name(sampler, sampler_steps), n_samples=n_samples,
                          chunk=batch)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    run_and_report(cutouts, out_dir, task, chi2_warn=chi2_warn, workers=workers, scheduler=scheduler,
                   shard_size=shard_size, seed=seed, cache_dir=cache_dir, progress=progress)
