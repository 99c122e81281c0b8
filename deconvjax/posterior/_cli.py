"""``deconvjax sample``: posterior samples of a galaxy from FITS images (click command).

The images, PSFs and noise maps are read by `deconvjax.io.read_images`, the reader every
command shares; `deconvjax.posterior.adapt.prior_observations` then places the prior's
stamp on them."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from ..diffusion.samplers.names import DEFAULT_SAMPLER_NAME, SAMPLER_NAMES

__all__ = ["sample", "write_outputs", "posterior_panel"]

def _noise_arg(value: str):
    """A number, or the path of an existing file (a variance map, read with the images by
    `deconvjax.io.read_images`)."""
    try:
        v = float(value)
    except ValueError:
        if not Path(value).is_file():
            raise click.BadParameter(f"{value!r} is neither a number nor an existing FITS file",
                                     param_hint="--variance") from None
        return value
    if not (np.isfinite(v) and v > 0):
        raise click.BadParameter(f"{value!r}: a variance must be positive and finite",
                                 param_hint="--variance")
    return v


def _read(path: str, psf: str, variance) -> tuple[np.ndarray, np.ndarray, np.ndarray, object, float | None, str | None]:
    """One image of the command through `deconvjax.io.read_images`: ``(data, psf,
    variance, wcs, pixel_scale, bunit)``. The noise is ``variance`` (a number or a file), else a
    VARIANCE / WEIGHT / RMS extension of the image file; the PSF is left at its size
    (`prior_observations` crops or pads it, with a notice). NaN or inf pixels come back as
    NaN (`prior_observations` masks them with a warning); masked pixels have infinite
    variance. The pixel scale is the header's (PIXSCALE, ...) for an image without a WCS."""
    import warnings

    from ..io import NoiseMapError, read_images

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            d = read_images(path, psf=psf, variance=variance, noise_extensions=True,
                            estimate_noise_if_missing=False, crop_psf=False)
    except NoiseMapError as err:
        message = str(err)
        if "no noise map" in message:
            message = (f"{path}: no noise information (give --variance, or a VARIANCE / WEIGHT / RMS "
                       "extension in the file)")
        raise click.BadParameter(message, param_hint="--variance") from None
    except ValueError as err:
        hint = "--psf" if str(err).startswith(str(psf)) else "IMAGES"
        raise click.BadParameter(str(err), param_hint=hint) from None
    data = np.where(d.mask, np.nan, d.images).astype(np.float64)
    with np.errstate(divide="ignore"):
        var = np.where(d.weights > 0, 1.0 / np.where(d.weights > 0, d.weights, 1.0), np.inf)
    return data, d.psf_images, var, d.wcs, None if d.wcs is not None else d.pixel_scale, d.bunit


def _common_bunit(bunits) -> str | None:
    """The images' BUNIT where those that have one agree (the posterior is in their unit);
    None (no BUNIT written) where none has one or they differ."""
    known = {b for b in bunits if b}
    return known.pop() if len(known) == 1 else None


def _check_variances(ctx, param, values):
    """Validate --variance values as the command line is parsed (one-line click errors)."""
    return tuple(_noise_arg(v) for v in values)


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


@click.command("sample")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--psf", "psfs", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="PSF image (FITS), one per image, in the same order, at the image's pixel "
                   "scale; any size (cropped with a notice, or padded).")
@click.option("--variance", "variances", multiple=True, callback=_check_variances,
              help="Noise variance per image: a number or a FITS file. Default: a VARIANCE, "
                   "WEIGHT or RMS extension of the image file.")
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
@click.option("--n-samples", default=64, show_default=True, type=click.IntRange(1))
@click.option("--method", type=click.Choice(["mmps", "convolved", "dps"]), default="mmps",
              show_default=True, help="Guidance method.")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), default=DEFAULT_SAMPLER_NAME,
              show_default=True,
              help="dpm2m (DPMSolver2M) / edm (EDMHeun) / edm_euler / ancestral: fixed steps on "
                   "the EDM schedule from a host loop, the fast choices for U-Net priors; "
                   "pf_ode (AdaptiveODE), ode_fixed (FixedStepODE), sde / sde_shark "
                   "(ReverseSDE), pc (PredictorCorrector).")
@click.option("--steps", default=None, type=click.IntRange(1),
              help="Steps of the fixed-step samplers (default: the sampler's own, as in Python: "
                   "48 for dpm2m, 18 for edm and edm_euler, 64 for the others; pf_ode is "
                   "adaptive).")
@click.option("--cg-iters", default=None, type=click.IntRange(0),
              help="CG iterations of the guidance's solve. Default: chosen from the prior as "
                   "MMPS() does, 1 for learned priors such as the shipped one (more do worse: "
                   "their Jacobian is not symmetric), a converged solve for exact Gaussian "
                   "ones; 2 for --method convolved.")
@click.option("--batch-size", default=None, type=click.IntRange(1), help="Samples per solve.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--no-progress", is_flag=True)
def sample(images, psfs, variances, pixel_scales, grid_scale, flux_factor, prior_path, n_samples,
           method, sampler, steps, cg_iters, batch_size, seed, out_dir, no_progress):
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

    if len(psfs) != len(images):
        raise click.BadParameter(f"give one --psf per image ({len(images)}), got {len(psfs)}",
                                 param_hint="--psf")
    if variances and len(variances) != len(images):
        raise click.BadParameter(f"give one --variance per image ({len(images)}), got "
                                 f"{len(variances)}", param_hint="--variance")
    if pixel_scales and len(pixel_scales) != len(images):
        raise click.BadParameter(f"give one --pixel-scale per image ({len(images)}), got "
                                 f"{len(pixel_scales)}", param_hint="--pixel-scale")
    try:
        prior = load_prior(None if prior_path == "shipped" else prior_path)
    except (OSError, FileNotFoundError, ValueError, KeyError) as err:
        raise click.BadParameter(f"cannot load prior {prior_path!r}: {err}", param_hint="--prior") from err
    datas, psf_images, noises, wcss, header_scales, bunits = [], [], [], [], [], []
    for i, p in enumerate(images):
        data, psf, var, wcs, scale, bunit = _read(p, psfs[i], variances[i] if variances else None)
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
                              batch_size=batch_size, progress=not no_progress)
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
