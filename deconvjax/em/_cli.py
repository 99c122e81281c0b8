"""`deconvjax em`: learn a galaxy prior from survey cutouts alone (EM), resumable."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .._cli_common import (
    FitsSpec,
    alias_value,
    deprecated_alias,
    hdu_option,
    mask_option,
    noise_options,
    progress_option,
)


def _stamp_noise(noise: dict, index) -> dict:
    """The noise of a ``simulate --stamps`` folder: a number given (``--rms``,
    ``--variance`` or ``--weights``), else the stamps' index (the survey preset's
    background)."""
    if not noise:
        return {"rms": np.asarray(index["noise_sigma"], float)[None, :, None, None]}
    (name, value), = noise.items()
    option = {"weight": "--weights", "variance": "--variance", "rms": "--rms"}[name]
    if not isinstance(value, float):
        raise click.BadParameter("a folder of stamps takes a number (the same noise for every stamp)",
                                 param_hint=option)
    return {"variance": 1.0 / value} if name == "weight" else {name: value}


def _read_cutouts(paths, psf, noise: dict, masks, hdu, catalog, blends: bool, max_cutouts: int | None):
    """The `Cutouts` of the command's inputs: folders written by ``deconvjax simulate``
    (fields with truth: blends at their truth centres) or ``deconvjax simulate --stamps``
    (isolated stamps, the folder's PSF), or FITS cutouts (one file each, with ``--psf``
    and a noise option unless the file holds them, ``--mask`` and ``--hdu`` as `deconvjax
    fit` takes them, ``--catalog`` for blends)."""
    from .._cli_common import read_cli_images
    from ..io import is_observation_file, read_field
    from ..sims.stamps import read_stamp_index
    from .cutouts import Cutouts

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "index.json").exists():
            for option, value in (("--mask", masks), ("--hdu", hdu), ("--psf", psf)):
                if value:
                    raise click.BadParameter(f"{p} is a folder of stamps (with its PSF and no mask): {option} "
                                             "applies to FITS cutouts", param_hint=option)
            index = read_stamp_index(p)
            images = np.concatenate([np.load(p / s["images"]) for s in index["shards"]])
            if max_cutouts:
                images = images[:max_cutouts]
            if not (p / "psf.npy").exists():
                raise click.BadParameter(f"{p} has no psf.npy (stamps written without a PSF)", param_hint="CUTOUTS")
            psf_images = np.broadcast_to(np.load(p / "psf.npy"), (len(images), *np.load(p / "psf.npy").shape))
            stamp_noise = _stamp_noise(noise, index)
            if not noise:
                click.echo(f"{p}: noise rms from the stamps' index (the survey preset's background, "
                           f"{index['noise_sigma']}); give --rms or --variance if the stamps differ")
            return Cutouts.from_arrays(images, psf_images, **stamp_noise)
        if p.is_dir():
            files += sorted(p.glob("field_*.fits"))
        else:
            files.append(p)
    if not files:
        raise click.BadParameter("no cutouts found", param_hint="CUTOUTS")
    if max_cutouts:
        files = files[:max_cutouts]
    if all(is_observation_file(f) for f in files) and not (masks or hdu):
        try:
            fields = [read_field(f) for f in files]
            return Cutouts.from_fields(fields, blends=blends)
        except (ValueError, KeyError):
            pass  # observation files without truth: read as observations below
    masks = list(masks)
    if masks and len(masks) not in (1, len(files)):
        raise click.BadParameter(f"give one --mask for all cutouts, or one per cutout ({len(files)}), "
                                 f"got {len(masks)}", param_hint="--mask")
    obs = []
    for k, f in enumerate(files):
        mask = () if not masks else [masks[0] if len(masks) == 1 else masks[k]]
        if is_observation_file(f) and not psf:
            obs.append(read_cli_images([f], masks=mask, hdu=hdu) if (mask or hdu is not None)
                       else read_cli_images([f]))
        else:
            obs.append(read_cli_images([f], psf=[psf] if psf else (), masks=mask, hdu=hdu,
                                       estimate_noise_if_missing=False,
                                       **{name: [value] for name, value in noise.items()}))
    centres = None
    if catalog is not None:
        from astropy.table import Table

        table = Table.read(catalog)
        for col in ("cutout", "y", "x"):
            if col not in table.colnames:
                raise click.BadParameter(f"the catalog needs columns cutout, y, x; got {table.colnames}",
                                         param_hint="--catalog")
        centres = [np.stack([np.asarray(table["y"][table["cutout"] == i], float),
                             np.asarray(table["x"][table["cutout"] == i], float)], -1) for i in range(len(obs))]
    return Cutouts.from_observations(obs, centers=centres)


@click.command("em")
@click.argument("cutouts", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder of the run (rerun the same command to resume).")
@click.option("--prior", "start", default="gaussian", show_default=True,
              help="Starting prior: gaussian (fitted to the cutouts), shipped, or a checkpoint path.")
@click.option("--laps", default=4, show_default=True, help="EM laps.")
@click.option("--steps-per-lap", default=2000, show_default=True, help="M-step training steps per lap.")
@click.option("--chunk", default=64, show_default=True, help="Cutouts per E-step chunk.")
@click.option("--n-samples", default=1, show_default=True, help="Posterior samples per cutout per lap.")
@click.option("--sampler-steps", default=64, show_default=True,  # EMConfig.sampler_steps
              help="E-step sampler steps (DPM-Solver++(2M)); fewer bias the samples of a sharp prior.")
@click.option("--psf", type=FitsSpec(), help="PSF image for FITS cutouts without one (FILE[HDU] picks an extension).")
@noise_options(per="one for all cutouts without noise information (a folder of stamps: a number)")
@mask_option(per="one for all FITS cutouts, or one per cutout in order")
@hdu_option
@click.option("--catalog", type=click.Path(exists=True, dir_okay=False),
              help="Table of source centres (columns cutout, y, x; pixels, 0-based) in FITS cutouts with blends.")
@deprecated_alias("--centers", "--catalog", "catalog", type=click.Path(exists=True, dir_okay=False))
@click.option("--isolated", is_flag=True, help="Treat simulated fields as isolated galaxies at their centre.")
@click.option("--max-cutouts", type=click.IntRange(min=1), help="Use at most this many cutouts.")
@click.option("--channels", default="16,32,64", show_default=True,
              help="U-Net channels per level of the first network after a Gaussian start.")
@click.option("--mstep-rounds", default=3, show_default=True, type=click.IntRange(min=1),
              help="At most this many M-step trainings of --steps-per-lap per lap, until the network's samples "
                   "reproduce its training images (1: one, with a warning when they do not).")
@click.option("--seed", default=0, show_default=True, help="Seed of the E-step samples and of training.")
@progress_option
def em(cutouts, out_dir, start, laps, steps_per_lap, chunk, n_samples, sampler_steps, psf, weights, variance, rms,
       masks, hdu, catalog, isolated, max_cutouts, channels, mstep_rounds, seed, progress):
    """Learn a galaxy prior from CUTOUTS alone by expectation-maximisation."""
    import dataclasses

    from ..diffusion.prior import load_prior
    from ..diffusion.train import TrainConfig
    from .run import EM_TRAIN_NOISE, EMConfig, run_em

    given = [(n, v) for n, v in (("weight", weights), ("variance", variance), ("rms", rms)) if v]
    if len(given) > 1:
        raise click.UsageError("give at most one of --weights, --variance, --rms")
    for name, values in given:
        if len(values) > 1:
            raise click.BadParameter("give one value or map for all cutouts", param_hint=f"--{name}s"
                                     if name == "weight" else f"--{name}")
    noise = {name: values[0] for name, values in given}
    catalog = alias_value(catalog, "catalog")
    try:
        batch = _read_cutouts(cutouts, psf, noise, masks, hdu, catalog, not isolated, max_cutouts)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    bands, h, w = batch.shape
    if start == "gaussian":
        if batch.is_blend and batch.n_max > 1:
            raise click.UsageError("--prior gaussian fits isolated galaxies; these cutouts are blends: "
                                   "start from --prior shipped or a checkpoint")
        try:
            levels = tuple(int(c) for c in channels.split(","))
        except ValueError:
            raise click.BadParameter(f"expected comma-separated ints, got {channels!r}", param_hint="--channels") from None
        # Noise levels around the images' own scale (EDM): measured in benchmarks/RESULTS.md,
        # the default spread over the whole range left EM's M-step networks brighter than
        # their training samples, and the laps lost to their start.
        train = TrainConfig(image_size=h, bands=bands, channels=levels, steps=steps_per_lap, **EM_TRAIN_NOISE)
    else:
        prior = load_prior(None if start == "shipped" else start)
        net = prior.denoiser.net
        train = TrainConfig(image_size=prior.image_size, bands=prior.bands, channels=tuple(net.channels),
                            num_res_blocks=net.num_res_blocks, emb_dim=net.emb_dim, steps=steps_per_lap,
                            sigma_min=float(prior.sde.sigma_min_), sigma_max=float(prior.sde.sigma_max_))
    config = EMConfig(laps=laps, chunk=chunk, n_samples=n_samples, train=train, sampler_steps=sampler_steps,
                      mstep_rounds=mstep_rounds, seed=seed)
    click.echo(f"EM on {len(batch)} cutouts of {bands}x{h}x{w} ({'blends' if batch.is_blend else 'isolated'}), "
               f"{laps} laps, out {out_dir}")
    try:
        result = run_em(batch, out_dir, dataclasses.replace(config), start=start, progress=progress)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    last = result.history[-1]
    click.echo(f"lap {last['lap']}: E-step chi2/pixel {last['estep_chi2_per_pixel']:.3f}, "
               f"prior median hlr {last['prior_hlr_q16_50_84'][1]:.2f} px; prior {result.out}/lap_{last['lap']:03d}/prior.eqx")
