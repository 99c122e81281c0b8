"""``deconvjax sample``: posterior samples of a galaxy from FITS images (click command).

The images, PSFs and noise maps are read by `deconvjax.io.read_images`, the reader every
command shares; `deconvjax.posterior.adapt.prior_observations` then places the prior's
stamp on them."""

from __future__ import annotations

import time
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
from ..diffusion.samplers.names import DEFAULT_SAMPLER_NAME, SAMPLER_NAMES

__all__ = ["sample", "write_outputs", "posterior_panel"]

def _read(path: str, psf, noise: dict, mask, hdu
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, object, float | None, str | None]:
    """One image of the command through `deconvjax.io.read_images`: ``(data, psf,
    variance, wcs, pixel_scale, bunit)``. The noise is ``noise`` (``{"variance": 1e-4}``, a map,
    ...), else a VARIANCE / WEIGHT / RMS extension of the image file; the PSF is left at its
    size (`prior_observations` crops or pads it, with a notice). NaN or inf pixels and
    ``mask``ed ones come back as NaN (`prior_observations` masks them with a warning);
    masked pixels have infinite variance. The pixel scale is the header's (PIXSCALE, ...)
    for an image without a WCS."""
    import warnings

    from .._cli_common import read_cli_images

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            d = read_cli_images([path], psf=[psf], masks=[mask] if mask is not None else (), hdu=hdu,
                                noise_extensions=True, estimate_noise_if_missing=False, crop_psf=False,
                                **{k: [v] for k, v in noise.items()})
    except click.BadParameter as err:
        if "no noise map" in err.message:
            raise click.BadParameter(
                f"{path}: no noise information (give --variance, --weights or --rms, or a VARIANCE / WEIGHT / "
                "RMS extension in the file)", param_hint="--variance") from None
        raise
    data = np.where(d.mask, np.nan, d.images).astype(np.float64)
    with np.errstate(divide="ignore"):
        var = np.where(d.weights > 0, 1.0 / np.where(d.weights > 0, d.weights, 1.0), np.inf)
    return data, d.psf_images, var, d.wcs, None if d.wcs is not None else d.pixel_scale, d.bunit


def _common_bunit(bunits) -> str | None:
    """The images' BUNIT where those that have one agree (the posterior is in their unit);
    None (no BUNIT written) where none has one or they differ."""
    known = {b for b in bunits if b}
    return known.pop() if len(known) == 1 else None


def _per_image(values, n: int, option: str) -> list:
    """A repeated option's values, one per image: as many as the images, or one for all."""
    values = list(values)
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise click.BadParameter(f"give one {option} per image ({n}), or one for all, got {len(values)}",
                                 param_hint=option)
    return values


def posterior_panel(observation, samples, mean, std, residual, path, n_show: int = 3):
    """PNG panel: observation | a few samples | mean | std | residual
    (`deconvjax.plot.plot_posterior`)."""
    from types import SimpleNamespace

    from ..plot import plot_posterior, save_figure

    result = SimpleNamespace(samples=np.asarray(samples), mean=mean, std=std, residuals=(residual,))
    save_figure(plot_posterior(result, data=observation, n_samples=n_show), path, dpi=110)


def write_outputs(out: Path, result, first_observation, header_extra: dict,
                  stamp_header=None, *, bunit: str | None = None, residual_wcs=None) -> list[Path]:
    """samples.fits (n, band, y, x), mean.fits, std.fits, residuals.fits, panel.png
    (`deconvjax.posterior.products.write_posterior`).

    ``header_extra``: keywords for every file (values, or ``(value, comment)``);
    ``stamp_header``: an astropy Header (the output stamp's WCS) for the model-space files;
    ``bunit``: the data's unit; ``residual_wcs``: each image's WCS, for the residuals."""
    from astropy.wcs import WCS

    from .products import write_posterior

    wcs = None if stamp_header is None else WCS(stamp_header)
    return write_posterior(out, result, wcs=wcs, bunit=bunit, residual_wcs=residual_wcs, header=header_extra,
                           panel_data=np.asarray(first_observation.data))


def _float_or_auto(name):
    def convert(ctx, param, value):
        if value is None or str(value).lower() == "auto":
            return None
        try:
            v = float(value)
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected a positive number or 'auto'",
                                     param_hint=name) from None
        if not (np.isfinite(v) and v > 0):
            raise click.BadParameter(f"{value!r}: expected a positive number or 'auto'",
                                     param_hint=name)
        return v
    return convert


def _load_noise_model(path: str):
    """`deconvjax.likelihood.learned.load_noise_model`, its failures as a --noise-model error."""
    try:
        from ..likelihood.learned import load_noise_model
    except ImportError as err:
        raise click.BadParameter(f"learned noise models are not available in this installation: {err}",
                                 param_hint="--noise-model") from err
    try:
        return load_noise_model(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise click.BadParameter(f"cannot load noise model {path!r}: {err}", param_hint="--noise-model") from err


@click.command("sample")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--psf", "psfs", multiple=True, required=True, type=FitsSpec(),
              help="PSF image (FITS), one per image, in the same order, at the image's pixel "
                   "scale; any size (cropped with a notice, or padded).")
@noise_options(per="one per image, or one for all images",
               default="; default: a VARIANCE, WEIGHT or RMS extension of each image file")
@mask_option(per="one per image, or one for all images")
@hdu_option
@click.option("--pixel-scale", "pixel_scales", multiple=True, type=click.FloatRange(min=0, min_open=True),
              help="Arcsec per pixel, one per image (default: from the image's WCS; without "
                   "either, sizes are in pixels of the first image).")
@click.option("--grid-scale", default="auto", show_default=True, callback=_float_or_auto("--grid-scale"),
              help="Arcsec per pixel of the prior's stamp; 'auto': chosen from the galaxy's "
                   "PSF-corrected size so that it fills the stamp as the prior's training galaxies did.")
@click.option("--flux-factor", default="auto", show_default=True, callback=_float_or_auto("--flux-factor"),
              help="Data units per unit of the prior's flux (x flux_scale); 'auto': the galaxy's "
                   "measured flux over the training galaxies' median; 1 takes the data to be in "
                   "the prior's own units.")
@click.option("--prior", "prior_path", default="shipped", show_default=True,
              help="Prior checkpoint (deconvjax train-prior), or 'shipped'.")
@click.option("--n-samples", default=64, show_default=True, type=click.IntRange(1),
              help="Posterior samples to draw.")
@click.option("--method", type=click.Choice(["mmps", "convolved", "dps"]), default="mmps",
              show_default=True, help="Guidance method.")
@click.option("--noise-model", "noise_model_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A learned noise model (deconvjax.likelihood.learned: a score network trained on "
                   "noise cutouts, SLIC) for the images' noise, in place of the white Gaussian of "
                   "their noise maps (which then only mask pixels). It must describe images of the "
                   "input's size and bands. Sampled with GaussianFitMMPS: MMPS with the model's "
                   "Gaussian fit (its noise power spectrum), exact for Gaussian noise, where the "
                   "model's full score in SLIC's convolved-likelihood form was found biased even on "
                   "Gaussian problems. Overrides --method.")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default=DEFAULT_SAMPLER_NAME,
              show_default=True,
              help="dpm2m (DPMSolver2M) / edm (EDMHeun) / edm_euler / ancestral: fixed steps on "
                   "the EDM schedule from a host loop, the fast choices for U-Net priors; "
                   "pf_ode (AdaptiveODE), ode_fixed (FixedStepODE), sde / sde_shark "
                   "(ReverseSDE), pc (PredictorCorrector).")
@click.option("--sampler-steps", default=None, type=click.IntRange(1),
              help="Steps of the fixed-step samplers (default: the sampler's own, as in Python: "
                   "48 for dpm2m, 18 for edm and edm_euler, 64 for the others; pf_ode is "
                   "adaptive).")
@click.option("--cg-iters", default=None, type=click.IntRange(0),
              help="CG iterations of the guidance's solve. Default: chosen from the prior as "
                   "MMPS() does, 1 for learned priors such as the shipped one (more do worse: "
                   "their Jacobian is not symmetric), a converged solve for exact Gaussian "
                   "ones; 2 for --method convolved.")
@deprecated_alias("--steps", "--sampler-steps", "sampler_steps", type=click.IntRange(1))
@click.option("--batch-size", default=None, type=click.IntRange(1), help="Samples per solve.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sampler's random numbers.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (created).")
@progress_option
def sample(images, psfs, weights, variance, rms, masks, hdu, pixel_scales, grid_scale, flux_factor, prior_path,
           n_samples, method, noise_model_path, sampler, sampler_steps, cg_iters, batch_size, seed, out_dir,
           progress):
    """Posterior samples of a galaxy from one or several IMAGES (FITS) of any size, pixel
    scale and flux unit.

    The prior's stamp (32x32 for the shipped prior) is placed on the galaxy at a pixel
    scale chosen from its PSF-corrected size, and the prior is scaled to its measured
    flux (both reported, and recorded in the headers: PIXSCALE, FLUXSCL). Writes
    OUT/samples.fits (n, band, y, x), mean.fits, std.fits (the stamp, with its WCS, in
    the data's units), residuals.fits (data - A mean, on each image's pixels) and
    panel.png (observation, samples, mean, std, residual).
    """
    import jax.random as jr

    from ..diffusion.prior import load_prior
    from ..diffusion.samplers.names import sampler_from_name
    from .adapt import prior_observations
    from .base import PosteriorDenoiser
    from .convolved import ConvolvedLikelihood
    from .deconvolve import crop_result, summarise
    from .dps import DPS
    from .mmps import MMPS
    from .sampling import sample_posterior
    from .slic import GaussianFitMMPS

    if len(psfs) != len(images):
        raise click.BadParameter(f"give one --psf per image ({len(images)}), got {len(psfs)}",
                                 param_hint="--psf")
    given = [(name, option, values) for name, option, values in
             (("weight", "--weights", weights), ("variance", "--variance", variance), ("rms", "--rms", rms))
             if values]
    if len(given) > 1:
        raise click.UsageError("give at most one of --weights, --variance, --rms")
    noise_given = ([{given[0][0]: v} for v in _per_image(given[0][2], len(images), given[0][1])] if given
              else [{}] * len(images))
    mask_list = _per_image(masks, len(images), "--mask")
    steps = alias_value(sampler_steps, "sampler_steps")
    if pixel_scales and len(pixel_scales) != len(images):
        raise click.BadParameter(f"give one --pixel-scale per image ({len(images)}), got "
                                 f"{len(pixel_scales)}", param_hint="--pixel-scale")
    try:
        prior = load_prior(None if prior_path == "shipped" else prior_path)
    except (OSError, FileNotFoundError, ValueError, KeyError) as err:
        raise click.BadParameter(f"cannot load prior {prior_path!r}: {err}", param_hint="--prior") from err
    noise_model = None
    if noise_model_path is not None:
        noise_model = _load_noise_model(noise_model_path)
        method = "mmps_noise_fit"
    datas, psf_images, noises, wcss, header_scales, bunits = [], [], [], [], [], []
    for i, p in enumerate(images):
        data, psf, var, wcs, scale, bunit = _read(p, psfs[i], noise_given[i], mask_list[i], hdu)
        bunits.append(bunit)
        datas.append(data)
        psf_images.append(psf)
        noises.append(var)
        wcss.append(wcs)
        header_scales.append(scale)
    image_wcss = list(wcss)  # the residuals' WCS, each on its own image's pixels
    if any(w is None for w in wcss):
        wcss = None  # all or none: images without a WCS share their centres
    scales = list(pixel_scales) if pixel_scales else (
        header_scales if wcss is None and all(s is not None for s in header_scales) else None)
    try:
        setup = prior_observations(prior, datas, psf_images, noises,
                                   pixel_scales=scales, wcss=wcss, grid_scale=grid_scale,
                                   flux_factor=flux_factor)
        cg = {} if cg_iters is None else {"cg_iters": cg_iters}
        if noise_model is not None:
            # One model for every image: each must be on the model's grid.
            for i, o in enumerate(setup.observations):
                noise_model.check_shape(o.shape, name=f"image {i} ({images[i]})")
            guidance = GaussianFitMMPS(noise_model if len(setup.observations) == 1
                                       else (noise_model,) * len(setup.observations), **cg)
        else:
            guidance = {"mmps": MMPS(**cg), "convolved": ConvolvedLikelihood(**cg), "dps": DPS()}[method]
        post = PosteriorDenoiser(prior, setup.observations, method=guidance, embed=setup.embed)
        sampler_obj = sampler_from_name(sampler, steps)
    except (ValueError, TypeError) as err:
        raise click.UsageError(str(err)) from err
    for note in setup.notes:
        click.echo(note)
    for w in setup.warnings:
        click.echo(f"warning: {w}")
    t0 = time.perf_counter()
    x, nfe = sample_posterior(jr.key(seed), post, prior.sde, n_samples, sampler_obj,
                              batch_size=batch_size, progress=progress)
    result = crop_result(summarise(post, x, nfe), setup.embed)
    dt = time.perf_counter() - t0
    stamp = setup.frame.wcs.deepcopy()
    stamp.wcs.crpix = [c - setup.embed.pad for c in stamp.wcs.crpix]
    written = write_outputs(Path(out_dir), result, setup.observations[0],
                            {"METHOD": method, "SAMPLER": sampler, "NSAMPLE": n_samples,
                             "NFE": int(nfe), "SEED": seed, **setup.header()},
                            stamp_header=stamp.to_header(), bunit=_common_bunit(bunits), residual_wcs=image_wcss)
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"{n_samples} samples in {dt:.1f} s ({dt / n_samples:.2f} s/sample, NFE {int(nfe)}); "
               f"chi2/pixel {float(result.chi2_per_pixel.mean()):.3f}")
