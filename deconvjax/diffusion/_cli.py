"""``deconvjax train-prior``: train a diffusion prior on galaxy stamps (click command)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .._cli_common import progress_option

__all__ = ["train_prior", "enable_compilation_cache"]


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache in a per-user cache folder.

    Compiling the U-Net training step takes 15-150 s on a CPU; the cache makes the second
    run start at once. Done here (CLI/benchmarks), never on library import.
    """
    import jax

    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    path = os.path.join(base, "deconvjax", "jax-cache")
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _channels(ctx, param, value):
    try:
        ch = tuple(int(c) for c in value.split(","))
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 16,32,64") from None
    if not ch or any(c < 1 for c in ch):
        raise click.BadParameter("expected positive channel counts")
    return ch


@click.command("train-prior")
@click.option("--data", "data", multiple=True, type=click.Path(exists=True),
              help="Training images: a COSMOS RealGalaxyCatalog folder (recognised by its "
                   "real_galaxy_catalog*.fits), a folder of FITS files or one FITS file "
                   "holding (y,x), (n,y,x) or (n,band,y,x) arrays. Repeatable.")
@click.option("--out", "out", required=True, type=click.Path(),
              help="Prior checkpoint to write (OUT.state and OUT.log.jsonl go beside it).")
@click.option("--simulate", default=0, show_default=True,
              help="Add this many GalSim bulge+disk galaxies (single band).")
@click.option("--cosmos-holdout", default=0, show_default=True,
              help="Leave out the last N COSMOS galaxies (held out for evaluation).")
@click.option("--cosmos-holdout-every", default=0, show_default=True,
              help="Leave out every K-th COSMOS galaxy (catalog rows K-1, 2K-1, ...): a "
                   "held-out set that spans the catalog's magnitudes, which the catalog "
                   "order does not mix (its last rows are all faint).")
@click.option("--cosmos-repeat", default=1, show_default=True,
              help="Repeat COSMOS stamps N times in the training set (weights real galaxies "
                   "against simulated ones).")
@click.option("--size", default=32, show_default=True, help="Image size (pixels).")
@click.option("--channels", default="16,32,64", callback=_channels, show_default=True,
              help="U-Net widths per level (depth = number of levels).")
@click.option("--res-blocks", default=1, show_default=True, help="ResNet blocks per level.")
@click.option("--steps", default=5000, show_default=True, help="Optimiser steps in total.")
@click.option("--batch-size", default=32, show_default=True, help="Training images per optimiser step.")
@click.option("--lr", default=2e-3, show_default=True, help="Peak learning rate.")
@click.option("--checkpoint-every", default=500, show_default=True,
              help="Write the resumable state every this many steps.")
@click.option("--max-minutes", default=None, type=float,
              help="Stop (checkpointed, resumable) after this much wall time.")
@click.option("--seed", default=0, show_default=True, help="Seed of the initial weights, batches and simulations.")
@click.option("--no-resume", is_flag=True, help="Start afresh even if OUT.state exists.")
@progress_option
def train_prior(data, out, simulate, cosmos_holdout, cosmos_holdout_every, cosmos_repeat, size,
                channels, res_blocks, steps, batch_size, lr, checkpoint_every, max_minutes, seed, no_resume,
                progress):
    """Train a diffusion (score) prior on galaxy stamps and write a checkpoint.

    Images are normalised by one global flux scale (90th percentile of peak pixel values).
    Interrupt at any time and rerun the same command to resume.
    """
    enable_compilation_cache()
    import numpy as np

    from .data import (
        cosmos_heldout_indices,
        cosmos_stamps,
        is_cosmos_dir,
        load_training_images,
        simulate_galaxies,
    )
    from .train import TrainConfig
    from .train import train_prior as _train

    if not data and simulate <= 0:
        raise click.UsageError("give --data and/or --simulate N")
    parts = []
    for d in data:
        if is_cosmos_dir(d):
            imgs = cosmos_stamps(d, size)
            held = cosmos_heldout_indices(len(imgs), cosmos_holdout, cosmos_holdout_every)
            imgs = np.delete(imgs, held, axis=0)
            imgs = np.concatenate([imgs] * max(1, cosmos_repeat))
        else:
            imgs = load_training_images(d, size)
        click.echo(f"{d}: {len(imgs)} images of shape {imgs.shape[1:]}")
        parts.append(imgs)
    if simulate > 0:
        t = time.perf_counter()
        parts.append(simulate_galaxies(seed, simulate, size))
        click.echo(f"simulated {simulate} galaxies in {time.perf_counter() - t:.1f} s")
    bands = {p.shape[1] for p in parts}
    if len(bands) != 1:
        raise click.UsageError(f"inputs have different band counts {sorted(bands)}")
    images = np.concatenate(parts)
    cfg = TrainConfig(image_size=size, bands=images.shape[1], channels=channels,
                      num_res_blocks=res_blocks, steps=steps, batch_size=batch_size,
                      learning_rate=lr, checkpoint_every=checkpoint_every, seed=seed)
    info = {"data": [str(Path(d)) for d in data], "simulate": simulate,
            "cosmos_holdout": cosmos_holdout, "cosmos_holdout_every": cosmos_holdout_every,
            "cosmos_repeat": cosmos_repeat,
            "n_images": int(len(images))}
    t = time.perf_counter()
    prior = _train(images, out, cfg, resume=not no_resume, extra_info=info, progress=progress,
                   max_seconds=None if max_minutes is None else 60 * max_minutes)
    click.echo(f"wrote {out} (flux_scale={prior.flux_scale:.4g}, "
               f"{time.perf_counter() - t:.0f} s this run)")
