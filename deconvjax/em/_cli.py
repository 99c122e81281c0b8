"""`deconvjax em`: learn a galaxy prior from survey cutouts alone (EM), resumable."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np


def _read_cutouts(paths, psf, variance, rms, centers, blends: bool, max_cutouts: int | None):
    """The `Cutouts` of the command's inputs: folders written by ``deconvjax simulate``
    (fields with truth: blends at their truth centres) or ``deconvjax simulate --stamps``
    (isolated stamps, the folder's PSF), or FITS cutouts (one file each, with ``--psf``
    and a noise option unless the file holds them, ``--centers`` for blends)."""
    from ..io import is_observation_file, read_field, read_images
    from ..sims.stamps import read_stamp_index
    from .cutouts import Cutouts

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / "index.json").exists():
            index = read_stamp_index(p)
            images = np.concatenate([np.load(p / s["images"]) for s in index["shards"]])
            if max_cutouts:
                images = images[:max_cutouts]
            if not (p / "psf.npy").exists():
                raise click.BadParameter(f"{p} has no psf.npy (stamps written without a PSF)", param_hint="CUTOUTS")
            psf_images = np.broadcast_to(np.load(p / "psf.npy"), (len(images), *np.load(p / "psf.npy").shape))
            noise = rms if rms is not None else (None if variance is not None else
                                                 np.asarray(index["noise_sigma"], float)[None, :, None, None])
            if noise is not None and rms is None:
                click.echo(f"{p}: noise rms from the stamps' index (the survey preset's background, "
                           f"{index['noise_sigma']}); give --rms or --variance if the stamps differ")
            return Cutouts.from_arrays(images, psf_images, rms=noise, variance=variance)
        if p.is_dir():
            files += sorted(p.glob("field_*.fits"))
        else:
            files.append(p)
    if not files:
        raise click.BadParameter("no cutouts found", param_hint="CUTOUTS")
    if max_cutouts:
        files = files[:max_cutouts]
    if all(is_observation_file(f) for f in files):
        try:
            fields = [read_field(f) for f in files]
            return Cutouts.from_fields(fields, blends=blends)
        except (ValueError, KeyError):
            pass  # observation files without truth: read as observations below
    obs = [read_images(str(f), psf=psf, variance=variance, rms=rms, estimate_noise_if_missing=False)
           if not is_observation_file(f) else read_images(str(f)) for f in files]
    centres = None
    if centers is not None:
        from astropy.table import Table

        table = Table.read(centers)
        for col in ("cutout", "y", "x"):
            if col not in table.colnames:
                raise click.BadParameter(f"the catalog needs columns cutout, y, x; got {table.colnames}",
                                         param_hint="--centers")
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
@click.option("--sampler-steps", default=32, show_default=True, help="E-step sampler steps (DPM-Solver++(2M)).")
@click.option("--psf", type=click.Path(exists=True), help="PSF image for FITS cutouts without one.")
@click.option("--variance", help="Noise variance (a number or a FITS map) for cutouts without noise information.")
@click.option("--rms", type=float, help="Noise rms for cutouts without noise information.")
@click.option("--centers", type=click.Path(exists=True),
              help="Catalog (cutout, y, x) of source centres in FITS cutouts with blends.")
@click.option("--isolated", is_flag=True, help="Treat simulated fields as isolated galaxies at their centre.")
@click.option("--max-cutouts", type=int, help="Use at most this many cutouts.")
@click.option("--channels", default="16,32,64", show_default=True,
              help="U-Net channels per level of the first network after a Gaussian start.")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-progress", is_flag=True)
def em(cutouts, out_dir, start, laps, steps_per_lap, chunk, n_samples, sampler_steps, psf, variance, rms, centers,
       isolated, max_cutouts, channels, seed, no_progress):
    """Learn a galaxy prior from CUTOUTS alone by expectation-maximisation."""
    import dataclasses

    from ..diffusion.prior import load_prior
    from ..diffusion.train import TrainConfig
    from .run import EMConfig, run_em

    try:
        variance = float(variance) if variance is not None else None
    except ValueError:
        pass  # a map
    try:
        batch = _read_cutouts(cutouts, psf, variance, rms, centers, not isolated, max_cutouts)
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
        train = TrainConfig(image_size=h, bands=bands, channels=levels, steps=steps_per_lap)
    else:
        prior = load_prior(None if start == "shipped" else start)
        net = prior.denoiser.net
        train = TrainConfig(image_size=prior.image_size, bands=prior.bands, channels=tuple(net.channels),
                            num_res_blocks=net.num_res_blocks, emb_dim=net.emb_dim, steps=steps_per_lap,
                            sigma_min=float(prior.sde.sigma_min_), sigma_max=float(prior.sde.sigma_max_))
    config = EMConfig(laps=laps, chunk=chunk, n_samples=n_samples, train=train, sampler_steps=sampler_steps,
                      seed=seed)
    click.echo(f"EM on {len(batch)} cutouts of {bands}x{h}x{w} ({'blends' if batch.is_blend else 'isolated'}), "
               f"{laps} laps, out {out_dir}")
    try:
        result = run_em(batch, out_dir, dataclasses.replace(config), start=start, progress=not no_progress)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    last = result.history[-1]
    click.echo(f"lap {last['lap']}: E-step chi2/pixel {last['estep_chi2_per_pixel']:.3f}, "
               f"prior median hlr {last['prior_hlr_q16_50_84'][1]:.2f} px; prior {result.out}/lap_{last['lap']:03d}/prior.eqx")
