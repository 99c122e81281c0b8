"""`deconvjax sample`'s default path on real galaxies in their own units vs hand rescaling
(issue 14.6), for benchmarks/real.py.

Truths: held-out COSMOS galaxies (`ScorePrior.cosmos_heldout`, brighter than F814W 25 as
in benchmarks/posterior.py), each rebinned to the prior's 32x32 stamp convention (pixel
scale ``s = 0.03 n_orig / 32`` arcsec). Views (ground-like, counts/s): the truth drawn by
GalSim under a Moffat PSF (FWHM 4 s, beta 3.5, as benchmarks/posterior.py) at pixels of
1.5 s, 48x48 (not the prior's size, not its pixel scale), white noise of rms 1/20 of the
blurred peak; the PSF is given as an effective-PSF image at the view's pixels.

Estimates: the default path (`deconvolve_images`: grid scale and flux factor measured),
the same path with a small grid of hand-chosen flux factors (the default's x 1/4 ... 4,
and 1: the data taken as the prior's own units) at the default's grid, and Tikhonov
(Laplacian) on the truth's grid with its lambda tuned on the truths (oracle). All are
compared with the truth on the truth's grid after the same Gaussian smoothing (sigma the
widest model PSF among them, so no estimate's model-PSF convention is favoured), by PSNR
(benchmarks/posterior.py's `psnr`).
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["sample_rescale_gap"]


def _views(n_galaxies, snr=20.0, n_view=48, ratio=1.5, seed=0):
    import galsim
    from astropy.io import fits

    COSMOS = _bench_posterior().COSMOS
    from deconvjax.diffusion import load_prior
    from deconvjax.diffusion.data import _cosmos_images, cosmos_stamps

    prior = load_prior()
    cat = fits.getdata(COSMOS / "real_galaxy_catalog_26_extension_example.fits")
    rows = prior.cosmos_heldout(len(cat))
    rows = [int(r) for r in rows if cat["MAG"][r] < 25.0][:n_galaxies]
    truths = cosmos_stamps(COSMOS, 32, np.array(rows)).astype(np.float64)
    sizes = [img.shape[0] for _, img in _cosmos_images(COSMOS, cat, np.array(rows))]
    rng = np.random.default_rng(seed)
    out = []
    for row, t, n_orig in zip(rows, truths, sizes):
        s = 0.03 * n_orig / 32
        gal = galsim.InterpolatedImage(galsim.Image(t[0], scale=s), x_interpolant="lanczos5")
        psf = galsim.Moffat(beta=3.5, fwhm=4 * s)
        clean = galsim.Convolve(gal, psf).drawImage(nx=n_view, ny=n_view, scale=ratio * s).array
        psf_img = psf.drawImage(nx=31, ny=31, scale=ratio * s).array
        rms = clean.max() / snr
        data = clean + rms * rng.normal(size=clean.shape)
        out.append(dict(row=row, truth=t, scale=s, data=data, psf=psf_img, rms=rms,
                        view_scale=ratio * s))
    return prior, out


def _to_truth_grid(cube, frame, truth_wcs, sigma):
    """A model cube of ``frame`` seen on the truth's 32x32 grid through a Gaussian PSF of
    ``sigma`` arcsec (flux conserved)."""
    import jax.numpy as jnp

    from deconvjax.observation import Observation
    from deconvjax.psf import GaussianPSF

    o = Observation(np.zeros((1, 32, 32)), frame=frame, psf=GaussianPSF(sigma), rms=1.0,
                    wcs=truth_wcs, allow_psf_gain=True)
    return np.asarray(o(jnp.asarray(cube, jnp.float32)), np.float64)[0]


def sample_rescale_gap(n_galaxies: int = 10, quick: bool = False, *, n_samples: int | None = None,
                       steps: int | None = None, factors=(0.25, 0.5, 2.0, 4.0), seed: int = 0) -> dict:
    """Default-path posterior-mean PSNR vs the best hand rescaling and vs oracle Tikhonov.

    ``quick``: 3 galaxies, 4 samples, 16 steps (a few minutes on 2 CPU cores). Returns
    per-galaxy figures (``galaxies``) and medians: ``sample_rescale_gap_db`` (best hand
    rescaling PSNR minus the default's), ``gain_over_tikhonov_db`` (default minus oracle
    Tikhonov), the chosen flux factors and chi2 per pixel."""
    import jax.random as jr

    psnr = _bench_posterior().psnr
    from deconvjax.classical import tikhonov
    from deconvjax.diffusion.samplers import DPMSolver2M
    from deconvjax.frame import Frame
    from deconvjax.observation import Observation
    from deconvjax.posterior.deconvolve import deconvolve_images
    from deconvjax.psf import GaussianPSF, model_psf_for
    from deconvjax.wcs import make_wcs

    if quick:
        n_galaxies, n_samples, steps = min(n_galaxies, 3), n_samples or 4, steps or 16
    n_samples, steps = n_samples or 16, steps or 48
    t0 = time.perf_counter()
    prior, views = _views(n_galaxies)
    lams = [1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    rows, tik_all = [], {lam: [] for lam in lams}
    for v in views:
        kw = dict(pixel_scales=[v["view_scale"]], n_samples=n_samples, sampler=DPMSolver2M(steps=steps))
        args = (prior, [v["data"]], [v["psf"]], [v["rms"] ** 2])
        res, setup = deconvolve_images(jr.key(seed), *args, **kw)
        truth_wcs = make_wcs((32, 32), v["scale"])
        view_wcs = make_wcs(v["data"].shape, v["view_scale"])
        # Tikhonov on the truth's grid, padded by 8 pixels for the PSF's spread.
        tframe = Frame(["b0"], (48, 48), wcs=make_wcs((48, 48), v["scale"]),
                       psf=model_psf_for([_array_psf(v)], v["scale"]))
        tobs = Observation(v["data"], frame=tframe, psf=_array_psf(v), rms=v["rms"], wcs=view_wcs)
        sig_t = float(np.ravel(tframe.psf.sigma)[0])
        sigma = max(setup.model_psf_sigma, sig_t) * 1.05
        tiny = Frame(["b0"], (32, 32), wcs=truth_wcs, psf=GaussianPSF(0.05 * v["scale"]))
        ref = _to_truth_grid(v["truth"], tiny, truth_wcs, sigma)

        def score(mean_stamp, setup=setup):
            pad = setup.embed.pad
            cube = np.pad(np.asarray(mean_stamp), ((0, 0), (pad, pad), (pad, pad)))
            return psnr(_to_truth_grid(cube, setup.frame, truth_wcs, sigma), ref)

        default = score(res.mean)
        hand = {}
        for f in [*[setup.flux_factor * a for a in factors], 1.0]:
            r2, _ = deconvolve_images(jr.key(seed), *args, grid_scale=setup.grid_scale,
                                      flux_factor=f, **kw)
            hand[f"{f:.4g}"] = score(r2.mean)
        for lam in lams:
            est = np.asarray(tikhonov(tobs, lam / v["rms"] ** 2))
            tik_all[lam].append(psnr(_to_truth_grid(est, tframe, truth_wcs, sigma), ref))
        rows.append(dict(row=v["row"], psnr_default=default, psnr_hand=hand,
                         psnr_best_hand=max(hand.values()),
                         best_hand_factor_over_default=float(max(hand, key=hand.get)) / setup.flux_factor,
                         flux_factor=setup.flux_factor, grid_scale_arcsec=setup.grid_scale,
                         truth_scale_arcsec=v["scale"],
                         chi2_per_pixel=float(np.mean(res.chi2_per_pixel)),
                         warnings=setup.warnings))
    best_lam = max(lams, key=lambda lam: np.mean(tik_all[lam]))
    for r, t in zip(rows, tik_all[best_lam]):
        r["psnr_tikhonov"] = t
        r["gain_over_tikhonov_db"] = r["psnr_default"] - t
        r["sample_rescale_gap_db"] = r["psnr_best_hand"] - r["psnr_default"]
    med = lambda k: float(np.median([r[k] for r in rows]))  # noqa: E731
    return {
        "sample_rescale_gap_db": med("sample_rescale_gap_db"),
        "gain_over_tikhonov_db": med("gain_over_tikhonov_db"),
        "psnr_default_median": med("psnr_default"),
        "psnr_best_hand_median": med("psnr_best_hand"),
        "psnr_tikhonov_median": med("psnr_tikhonov"),
        "chi2_per_pixel_median": med("chi2_per_pixel"),
        "tikhonov_lambda_times_rms2": best_lam,
        "n_galaxies": len(rows), "n_samples": n_samples, "steps": steps,
        "seconds": time.perf_counter() - t0,
        "galaxies": rows,
    }


def _bench_posterior():
    """benchmarks/posterior.py, imported as a package module or from this folder."""
    try:
        from benchmarks import posterior
    except ImportError:
        import posterior
    return posterior


def _array_psf(v):
    from deconvjax.psf import ArrayPSF

    return ArrayPSF(v["psf"] / v["psf"].sum(), pixel_scale=v["view_scale"])


if __name__ == "__main__":
    import json
    import os
    import sys

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    print(json.dumps(sample_rescale_gap(quick="--quick" in sys.argv), default=str))
