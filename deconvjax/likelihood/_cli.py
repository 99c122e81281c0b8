"""``deconvjax train-noise``: learn a noise likelihood (SLIC) from noise cutouts."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .._cli_common import progress_option

__all__ = ["train_noise"]


@click.command("train-noise")
@click.argument("images", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--mask", "masks", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Bad-pixel mask FITS (nonzero: bad), one per IMAGE or one for all; tiles touching it are "
                   "left out.")
@click.option("--cosmos", "cosmos_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Blank-sky cutouts from the COSMOS stamps in this RealGalaxyCatalog folder (pixels far from "
                   "each galaxy).")
@click.option("--correlation", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Simulate correlated Gaussian noise from this correlation-function FITS image (e.g. COSMOS' "
                   "acs_I_unrot_sci_20_cf.fits) with GalSim.")
@click.option("--simulate-mix", is_flag=True,
              help="Simulate a non-Gaussian detector noise mix: Poisson at low counts, cosmic rays, hot pixels.")
@click.option("--n", "n_cutouts", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Cutouts to simulate (--correlation, --simulate-mix) or the most to keep (images, --cosmos).")
@click.option("--size", type=click.IntRange(min=4), default=32, show_default=True,
              help="Cutout size in pixels: the image size the noise model is for (a multiple of 2 per U-Net level).")
@click.option("--variance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Pixel variance of simulated correlated noise (default: the correlation function's own).")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Optimiser steps in total (a resumed run continues to this count).")
@click.option("--channels", default="16,32", show_default=True,
              help="U-Net widths per level, comma-separated (depth = number of levels).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Noise-model file to write (OUT.state and OUT.log.jsonl go beside it).")
@click.option("--seed", default=0, show_default=True, help="Seed of the cutouts, initial weights and batches.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT.state when it exists (--no-resume starts afresh).")
@progress_option
def train_noise(images, masks, cosmos_dir, correlation, simulate_mix, n_cutouts, size, variance, steps, channels,
                out, seed, resume, progress):
    """Learn a noise likelihood (SLIC) from blank-sky cutouts and write a noise model.

    The cutouts come from IMAGES (FITS; tiles touching a detected source, a --mask pixel
    or a NaN are left out, each image's sky median subtracted), from --cosmos stamps, or
    are simulated (--correlation, --simulate-mix); give exactly one source. A score
    network is trained on them by denoising score matching; use the result with
    `deconvjax fit --noise-model OUT`. Interrupt at any time and rerun to resume.
    """
    import numpy as np

    from ..diffusion._cli import enable_compilation_cache
    from .learned import noise_train_config, train_noise_model
    from .noise_data import (
        blank_cutouts,
        correlated_noise_cutouts,
        cosmos_blank_cutouts,
        non_gaussian_noise_cutouts,
    )

    given = [bool(images), cosmos_dir is not None, correlation is not None, simulate_mix]
    if sum(given) != 1:
        raise click.UsageError("give exactly one source of noise: IMAGES, --cosmos, --correlation or --simulate-mix")
    try:
        ch = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 16,32", param_hint="--channels") from None
    if size % (2 ** (len(ch) - 1)):
        raise click.BadParameter(f"{size} is not a multiple of {2 ** (len(ch) - 1)} ({len(ch)} U-Net levels)",
                                 param_hint="--size")
    if masks and len(masks) not in (1, len(images)):
        raise click.BadParameter(f"expected one mask or one per image ({len(images)}), got {len(masks)}",
                                 param_hint="--mask")
    enable_compilation_cache()
    t = time.perf_counter()
    try:
        if images:
            from astropy.io import fits

            parts = []
            for i, path in enumerate(images):
                mask = None
                if masks:
                    mask = fits.getdata(masks[0] if len(masks) == 1 else masks[i]) != 0
                parts.append(blank_cutouts(path, mask, size=size, seed=seed + i))
            cutouts = np.concatenate(parts)
            if len(cutouts) > n_cutouts:
                cutouts = cutouts[np.random.default_rng(seed).permutation(len(cutouts))[:n_cutouts]]
        elif cosmos_dir is not None:
            cutouts = cosmos_blank_cutouts(cosmos_dir, size=size, n_per_stamp=max(1, n_cutouts // 100), seed=seed)
            cutouts = cutouts[:n_cutouts]
        elif correlation is not None:
            cutouts = correlated_noise_cutouts(correlation, n=n_cutouts, size=size, variance=variance, seed=seed)
        else:
            cutouts = non_gaussian_noise_cutouts(n=n_cutouts, size=size, seed=seed)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--size") from None
    click.echo(f"{len(cutouts)} noise cutouts of shape {cutouts.shape[1:]} (pixel std {cutouts.std():.4g}) "
               f"in {time.perf_counter() - t:.1f} s")
    config = noise_train_config(size, cutouts.shape[1], steps=steps, channels=ch)
    t = time.perf_counter()
    try:
        model = train_noise_model(cutouts, out, config=config, seed=seed, progress=progress, resume=resume)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {out} (noise model for {model.shape}, scale {model.scale:.4g}, "
               f"{time.perf_counter() - t:.0f} s this run)")
