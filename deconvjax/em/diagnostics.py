"""What EM reports each lap: the morphology statistics of a set of galaxy images (flux,
half-light radius, ellipticity, asymmetry, radial power spectrum), their summary and change
between laps, a distance between two sets of them, and a montage of images.

The statistics are per image, so two sets (a prior's samples and held-out truths, or two
laps' samples) compare by the energy distance of their standardised statistic vectors,
which is zero only when the distributions agree (Szekely & Rizzo 2013).
"""

from __future__ import annotations

import os

import numpy as np
from jaxtyping import Float

from ..diffusion.evaluate import half_light_radius, radial_power_spectrum

__all__ = ["morphology_statistics", "summarise_statistics", "energy_distance", "statistics_distance",
           "mstep_fidelity", "MSTEP_FLUX_TOLERANCE", "estep_fidelity",
           "ESTEP_CHI2_TOLERANCE", "SHAPE_WEIGHT_SIGMA", "save_montage"]

#: The per-image statistics `statistics_distance` compares (log flux and log size, so that
#: scale differences count as much at every flux).
DISTANCE_KEYS = ("log_flux", "log_hlr", "ellipticity", "asymmetry")


#: The circular Gaussian weight (sigma, pixels) of the ellipticity and asymmetry. Unweighted
#: moments of a whole stamp are ruled by its faint pixels: a posterior or prior sample carries
#: low-level texture at frequencies the data do not constrain, and over a 32x32 stamp its
#: positive part outweighs a galaxy of 1 px half-light radius, so samples whose weighted shapes
#: matched the truths' (median |e| 0.19 against 0.20) measured |e| 0.04 unweighted
#: (benchmarks/RESULTS.md, eleventh session). GalSim's adaptive moments (HSM) failed on a third
#: of those sub-arcsecond galaxies; a fixed weight never fails on a positive image.
SHAPE_WEIGHT_SIGMA = 2.0


def _weighted_shapes(images: np.ndarray, sigma_w: float) -> tuple[np.ndarray, np.ndarray]:
    """``|e|`` of the second moments and the rotational asymmetry of each ``(y, x)`` image
    of ``images`` ``(n, y, x)``, both under a circular Gaussian weight of ``sigma_w`` px.

    The moments' weight follows the weighted centroid (a few fixed-point steps from the
    brightest pixel of the image smoothed by the weight); the asymmetry ``sum w |I - I_180|
    / (2 sum w |I|)`` rotates about that brightest pixel, with the weight centred there.
    NaN where the weighted flux or trace is not positive."""
    from scipy.ndimage import gaussian_filter

    n, ny, nx = images.shape
    yy, xx = np.mgrid[:ny, :nx].astype(np.float64)
    ell = np.full(n, np.nan)
    asym = np.full(n, np.nan)
    for i, im in enumerate(images):
        py, px = np.unravel_index(np.argmax(gaussian_filter(im, sigma_w, mode="constant")), im.shape)
        cy, cx = float(py), float(px)
        for _ in range(5):
            w = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_w**2)) * im
            total = w.sum()
            if not total > 0:
                break
            cy, cx = (w * yy).sum() / total, (w * xx).sum() / total
        else:
            dy, dx = yy - cy, xx - cx
            qyy, qxx, qyx = (w * dy**2).sum() / total, (w * dx**2).sum() / total, (w * dy * dx).sum() / total
            trace = qyy + qxx
            if trace > 0:
                ell[i] = np.hypot(qxx - qyy, 2 * qyx) / trace
        # Rotate about the brightest smoothed pixel within the largest window centred on it.
        r = min(py, px, ny - 1 - py, nx - 1 - px)
        win = im[py - r : py + r + 1, px - r : px + r + 1]
        wy, wx = np.mgrid[-r : r + 1, -r : r + 1]
        weight = np.exp(-(wy**2 + wx**2) / (2 * sigma_w**2))
        denom = 2 * (weight * np.abs(win)).sum()
        if denom > 0:
            asym[i] = (weight * np.abs(win - win[::-1, ::-1])).sum() / denom
    return ell, asym


def morphology_statistics(images: Float[np.ndarray, "n band y x"]) -> dict[str, np.ndarray]:
    """Per image (bands summed): ``flux`` (sum), ``hlr`` (half-light radius, px),
    ``ellipticity`` (``|e|`` of the second moments) and ``asymmetry`` (``sum w |I - I_180| /
    (2 sum w |I|)`` about the brightest pixel), both under a Gaussian weight of
    `SHAPE_WEIGHT_SIGMA` px, the logs of flux and radius where positive, and the mean
    ``power`` spectrum (radial) of the set."""
    imgs = np.asarray(images, dtype=np.float64)
    if imgs.ndim != 4:
        raise ValueError(f"images: expected (n, band, y, x), got shape {imgs.shape}")
    summed = imgs.sum(axis=1)
    flux = summed.sum(axis=(1, 2))
    hlr = half_light_radius(imgs)
    ell, asym = _weighted_shapes(summed, SHAPE_WEIGHT_SIGMA)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_flux = np.where(flux > 0, np.log(np.where(flux > 0, flux, 1.0)), np.nan)
        log_hlr = np.where(hlr > 0, np.log(np.where(hlr > 0, hlr, 1.0)), np.nan)
    return {
        "flux": flux,
        "hlr": hlr,
        "ellipticity": ell,
        "asymmetry": np.asarray(asym),
        "log_flux": log_flux,
        "log_hlr": log_hlr,
        # Bins no finer than the coarsest frequency step of small images (none empty).
        "power": np.asarray(radial_power_spectrum(summed[:, None], nbins=max(2, min(8, min(summed.shape[1:]) // 4)))),
    }


def summarise_statistics(stats: dict[str, np.ndarray]) -> dict:
    """Median and 16/84 percentiles of each per-image statistic, and the power spectrum."""
    out = {}
    for k in ("flux", "hlr", "ellipticity", "asymmetry"):
        v = np.asarray(stats[k], dtype=np.float64)
        v = v[np.isfinite(v)]
        out[f"{k}_q16_50_84"] = [float(x) for x in np.percentile(v, [16, 50, 84])] if v.size else [np.nan] * 3
    out["power"] = [float(x) for x in np.asarray(stats["power"]).ravel()]
    return out


def energy_distance(a: Float[np.ndarray, "n d"], b: Float[np.ndarray, "m d"]) -> float:
    """The energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between two samples of
    vectors (rows), with the V-statistic estimates; 0 for identical distributions."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)

    def mean_dist(x, y):
        return float(np.mean(np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))))

    return 2 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)


def statistics_distance(samples: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """The energy distance between two sets' `DISTANCE_KEYS` statistics, each standardised
    by the reference's spread (images with a non-finite statistic are left out)."""
    ref = np.stack([np.asarray(reference[k], np.float64) for k in DISTANCE_KEYS], axis=1)
    smp = np.stack([np.asarray(samples[k], np.float64) for k in DISTANCE_KEYS], axis=1)
    ref, smp = ref[np.all(np.isfinite(ref), axis=1)], smp[np.all(np.isfinite(smp), axis=1)]
    if len(ref) < 2 or len(smp) < 2:
        raise ValueError("statistics_distance: fewer than two images with finite statistics")
    scale = np.std(ref, axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return energy_distance(smp / scale, ref / scale)


#: An M-step network's samples should have a median flux within this factor of its
#: training images' (for 64 samples of the broad flux distribution of galaxies the median
#: itself scatters by ~20%).
MSTEP_FLUX_TOLERANCE = 1.5


def mstep_fidelity(samples: dict[str, np.ndarray], training: dict[str, np.ndarray], *,
                   tolerance: float = MSTEP_FLUX_TOLERANCE) -> dict:
    """How well a network's samples reproduce the images it was trained on, from the
    `morphology_statistics` of both: ``mstep_flux_ratio`` (median flux of the samples over
    the training images'), ``mstep_statistics_distance`` (`statistics_distance`, the
    training images as reference) and, when the ratio is outside ``[1/tolerance,
    tolerance]``, ``mstep_warning`` saying so.

    In EM the next E-step samples under this network, so its error becomes the next
    lap's training data: measured in benchmarks/RESULTS.md, a (8, 16) U-Net trained 300
    steps per lap generated 4x the flux of its training samples and the held-out PSNR
    fell lap after lap."""
    if not tolerance > 1.0:
        raise ValueError(f"tolerance: expected a factor above 1, got {tolerance!r}")
    ratio = float(np.median(samples["flux"]) / np.median(training["flux"]))
    out = {"mstep_flux_ratio": ratio, "mstep_statistics_distance": float(statistics_distance(samples, training))}
    if not (1.0 / tolerance <= ratio <= tolerance):
        out["mstep_warning"] = (
            f"the M-step's network does not reproduce the posterior samples it was trained on (median flux "
            f"of its samples {ratio:.2f} times theirs); later laps build on this error and degrade the prior. "
            "Train longer (EMConfig.train.steps and mstep_rounds; `deconvjax em --steps-per-lap`, "
            "--mstep-rounds) or a larger network (--channels)."
        )
    return out


#: The E-step's samples should fit their cutouts to the noise: mean chi2 per pixel at most this.
#: Measured (benchmarks/RESULTS.md, eleventh session) on 200 LSST-like 32x32 cutouts under a
#: network trained on the clean truths: DPM-Solver++(2M) with 24 steps gave 1.097 and samples
#: 28% too bright, 32 steps 1.051 (+5%), 48 steps 1.013, 64 steps 1.007 (flux unbiased).
ESTEP_CHI2_TOLERANCE = 1.03


def estep_fidelity(chi2_per_pixel: Float[np.ndarray, " n"], *, tolerance: float = ESTEP_CHI2_TOLERANCE) -> dict:
    """How well a lap's posterior samples fit their cutouts, from each cutout's mean chi2 per
    pixel: ``estep_chi2_per_pixel`` (the mean over cutouts) and, above ``tolerance``,
    ``estep_warning``. Exact posterior samples give about 1 (the residual's noise plus the
    posterior spread seen through the forward model); a sampler with too few steps for a
    sharp prior leaves samples that miss the data, and the M-step then learns their bias."""
    if not tolerance > 1.0:
        raise ValueError(f"tolerance: expected a chi2 per pixel above 1, got {tolerance!r}")
    chi2 = float(np.nanmean(np.asarray(chi2_per_pixel, np.float64)))
    out = {"estep_chi2_per_pixel": chi2}
    if not chi2 <= tolerance:
        out["estep_warning"] = (
            f"the E-step's posterior samples fit their cutouts worse than the noise allows (mean chi2 per pixel "
            f"{chi2:.3f} > {tolerance}): the sampler takes too few steps for this prior (EMConfig.sampler_steps; "
            "`deconvjax em --sampler-steps`), the noise is underestimated, or the cutouts hold what the prior "
            "cannot draw (stars, artefacts). The M-step learns whatever bias the samples carry."
        )
    return out


def save_montage(images: Float[np.ndarray, "n band y x"], path: str | os.PathLike, *, title: str = "",
                 columns: int = 8) -> None:
    """A grid of images (band sum, each on its own arcsinh stretch) as a PNG, written
    atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ..plot import save_figure

    imgs = np.asarray(images, np.float64).sum(axis=1)
    n = len(imgs)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, im in zip(axes.ravel(), imgs):
        peak = max(float(np.max(np.abs(im))), 1e-30)
        ax.imshow(np.arcsinh(im / (0.05 * peak)), origin="lower", cmap="gray")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    plt.close(fig)
