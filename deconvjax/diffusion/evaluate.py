"""Statistics used to validate a galaxy prior: PSNR of denoisers, flux, size, power spectrum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["psnr", "gaussian_smooth", "best_gaussian_smoothing", "half_light_radius",
           "radial_power_spectrum", "image_statistics", "tweedie_denoise", "moment_size",
           "compare_statistics"]


def psnr(estimate, truth):
    """Per-image PSNR (dB) with the clean image's peak as the signal: ``(n, ...) -> (n,)``."""
    est, tru = np.asarray(estimate), np.asarray(truth)
    axes = tuple(range(1, tru.ndim))
    mse = np.mean((est - tru) ** 2, axis=axes)
    peak = np.max(np.abs(tru), axis=axes)
    return 10 * np.log10(peak**2 / mse)


def gaussian_smooth(images, width):
    """Periodic Gaussian smoothing of ``(n, band, y, x)`` images, kernel std ``width`` px."""
    ny, nx = images.shape[-2:]
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    kern = np.exp(-2 * (np.pi * width) ** 2 * (ky**2 + kx**2))
    return np.fft.ifft2(np.fft.fft2(np.asarray(images)) * kern).real


def best_gaussian_smoothing(noisy, truth, widths=None):
    """The Gaussian-smoothing denoiser with the oracle-best single width (highest mean PSNR;
    ``widths`` in pixels, default 0 to 3 in steps of 0.1)."""
    widths = np.linspace(0.0, 3.0, 31) if widths is None else widths
    scores = [np.mean(psnr(gaussian_smooth(noisy, w), truth)) for w in widths]
    w = float(widths[int(np.argmax(scores))])
    return gaussian_smooth(noisy, w), w


def half_light_radius(images):
    """Radius (px) of the circle about the brightest pixel holding half the flux within 12 px."""
    imgs = np.asarray(images).sum(axis=1)
    ny, nx = imgs.shape[-2:]
    yy, xx = np.mgrid[:ny, :nx]
    out = []
    rmax = min(ny, nx) * 0.375
    for im in imgs:
        cy, cx = np.unravel_index(np.argmax(im), im.shape)
        r = np.hypot(yy - cy, xx - cx).ravel()
        o = np.argsort(r)
        cf = np.cumsum(im.ravel()[o])
        tot = cf[r[o] <= rmax][-1]
        out.append(r[o][min(np.searchsorted(cf, 0.5 * tot), len(o) - 1)] if tot > 0 else np.nan)
    return np.array(out)


def moment_size(images):
    """Second-moment size ``sqrt((Q_yy + Q_xx) / 2)`` (px) of the positive part of each image
    (band-summed), about its flux-weighted centroid; for a Gaussian blob this is its sigma."""
    imgs = np.clip(np.asarray(images, np.float64).sum(axis=1), 0.0, None)
    ny, nx = imgs.shape[-2:]
    yy, xx = np.mgrid[:ny, :nx]
    f = imgs.sum(axis=(1, 2))
    safe = np.where(f > 0, f, 1.0)
    cy = (imgs * yy).sum(axis=(1, 2)) / safe
    cx = (imgs * xx).sum(axis=(1, 2)) / safe
    q = (imgs * ((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2)).sum(axis=(1, 2))
    return np.where(f > 0, np.sqrt(0.5 * q / safe), np.nan)


def radial_power_spectrum(images, nbins=8, reduce="mean"):
    """Azimuthally averaged power spectrum ``(nbins,)`` of ``(n, band, y, x)`` images: the
    mean over images (``reduce="mean"``, dominated by the brightest) or the per-bin median
    of the images' own spectra (``reduce="median"``, robust to a heavy flux tail)."""
    imgs = np.asarray(images)
    p = (np.abs(np.fft.fft2(imgs)) ** 2).mean(axis=1)  # (n, y, x), band-averaged
    ny, nx = imgs.shape[-2:]
    k = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.fftfreq(nx)[None, :])
    bins = np.minimum((k / 0.5 * nbins).astype(int), nbins - 1).ravel()
    counts = np.bincount(bins, None, nbins)
    onehot = (bins[:, None] == np.arange(nbins)[None]) / counts[None]
    per_image = p.reshape(len(p), -1) @ onehot  # (n, nbins)
    if reduce == "mean":
        return per_image.mean(axis=0)
    if reduce == "median":
        return np.median(per_image, axis=0)
    raise ValueError(f"reduce: expected 'mean' or 'median', got {reduce!r}")


def image_statistics(images):
    """Summary numbers: flux and half-light-radius quantiles and the power spectrum."""
    imgs = np.asarray(images)
    flux = imgs.sum(axis=(1, 2, 3))
    hlr = half_light_radius(imgs)
    size = moment_size(imgs)
    return {
        "flux_q": np.percentile(flux, [16, 50, 84]).round(4).tolist(),
        "hlr_q": np.nanpercentile(hlr, [16, 50, 84]).round(3).tolist(),
        "size_q": np.nanpercentile(size, [16, 50, 84]).round(3).tolist(),
        "power": radial_power_spectrum(imgs).tolist(),
    }


def compare_statistics(samples, reference) -> dict:
    """Samples vs a reference set: quantiles of flux, half-light radius and second-moment
    size of both, and the per-|k|-bin power-spectrum ratio samples / reference."""
    ss, sr = image_statistics(samples), image_statistics(reference)
    ratio = np.asarray(ss["power"]) / np.asarray(sr["power"])
    out = {}
    for k in ("flux_q", "hlr_q", "size_q"):
        out[k.replace("_q", "_q16_50_84_samples")] = ss[k]
        out[k.replace("_q", "_q16_50_84_reference")] = sr[k]
    out["power_ratio"] = np.round(ratio, 3).tolist()
    # The mean power spectrum is dominated by the brightest images; the per-bin median, of
    # the raw and of the unit-flux images (shape, concentration, texture and noise at equal
    # flux), is robust to the flux distribution's tail.
    def unit_flux(x):
        x = np.asarray(x, np.float64)
        return x / np.clip(np.abs(x.sum(axis=(1, 2, 3), keepdims=True)), 1e-12, None)

    med = (radial_power_spectrum(samples, reduce="median")
           / radial_power_spectrum(reference, reduce="median"))
    out["power_ratio_median"] = np.round(med, 3).tolist()
    rn = (radial_power_spectrum(unit_flux(samples), reduce="median")
          / radial_power_spectrum(unit_flux(reference), reduce="median"))
    out["power_ratio_unit_flux_median"] = np.round(rn, 3).tolist()
    out["power_log_ratio_rms"] = round(float(np.sqrt(np.mean(np.log(ratio) ** 2))), 3)
    out["power_log_ratio_rms_median"] = round(float(np.sqrt(np.mean(np.log(med) ** 2))), 3)
    return out


def tweedie_denoise(denoiser, noisy, sigma, batch=64):
    """Apply an unbatched denoiser to ``(n, band, y, x)`` in batches (one jitted call each)."""
    f = jax.jit(jax.vmap(denoiser, in_axes=(0, None)))
    outs = [f(jnp.asarray(noisy[i:i + batch]), jnp.float32(sigma))
            for i in range(0, len(noisy), batch)]
    return np.concatenate([np.asarray(o) for o in outs])
