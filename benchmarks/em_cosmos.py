"""EM benchmark, COSMOS part: does EM on a survey's own cutouts of real galaxies improve
on the shipped prior?

Galaxies: the 100 HST COSMOS F814W stamps of the 100-galaxy sample (--cosmos-dir or $DECONVJAX_COSMOS), resampled to the
shipped prior's 32x32 grid (`cosmos_stamps`, counts/s, the stamp's own HST noise kept).
The shipped prior (`deconvjax.diffusion.load_prior`) declares which rows it was trained on
(`ScorePrior.cosmos_heldout`: every 5th row is held out): EM sees views of the 80 others,
the evaluation uses the 20 held-out rows only.

Convention (truths and the E-step's model PSF): the E-step (`deconvjax.em.estep`) takes
the prior variable as the cutout's own pixel grid seen through a narrow Gaussian model PSF
(sigma ``model_psf_sigma`` = 0.5 px) and reaches each cutout's PSF image by a matching
kernel. Here the COSMOS stamp itself plays the prior variable, as it did when the shipped
prior was trained on these stamps and as in benchmarks/posterior.py (where the model
frame's Gaussian PSF is matched to the view's Moffat): a view is the stamp put through the
E-step's own forward model (`deconvjax.em.estep.cutout_observation`: the matching kernel
from the 0.5 px Gaussian to the cutout's Moffat PSF image), plus noise. So the truth of a
view is the (transformed, rescaled) stamp, with no further smoothing, and its own noise
variance is the stamp's (`cosmos_noise_variance`) times the flux factor squared. Smoothing
the stamps by the model PSF instead would also smooth their noise by an amount that
`cosmos_noise_variance` does not give.

Views (training, ``--n-train`` of them): a training row drawn at random; a random
90-degree rotation and flip; a small shear (``|g| <= --max-shear``, an area-preserving
affine map by cubic interpolation, `scipy.ndimage.affine_transform`, the flux lost at the
edges put back); a random flux: the stamp rescaled so that its peak is log-uniform over
``--peak-range`` times the shipped prior's ``flux_scale`` (the prior's unit, the 90th
percentile of its training peaks; the COSMOS stamps' own peaks are 0.04-0.5 of it); a
Moffat PSF (beta 3.5) of FWHM uniform over ``--fwhm-range`` pixels, 25x25 PSF image; white
Gaussian noise of rms ``--noise-over-truth`` (default 2) times the rescaled stamp's own
noise rms, so that the view's noise dominates the stamp's HST noise, which is treated as
part of the signal (the blurred copy of it in the view is smaller still). The peak SNR of
a view is then set by its galaxy's HST peak SNR, not by the flux factor.

Held-out views: ``--eval-views`` per held-out row, each with a random rotation and flip
(exact, so the truth's noise variance is unchanged), a random flux, PSF and noise as the
training views, and no shear.

EM: `deconvjax.em.run_em` from ``--start shipped`` (default: the question is whether EM on
the survey's cutouts improves on the shipped prior) or ``gaussian``; its M-steps train the
shipped prior's own network configuration (so a shipped start is warm-started from the
shipped weights), ``--steps-per-lap`` steps per lap at learning rate ``--lr`` (below the
shipped training's 2e-3: a fine-tune of a trained network), E-steps with ``DPMSolver2M`` of
``--sampler-steps`` steps and one sample per cutout.

Evaluation, per prior (the shipped prior, the EM start when it is not the shipped one, and
the EM prior after every lap): the posterior mean of ``--eval-samples`` samples per held-out
view (`estep`, MMPS, ``DPMSolver2M`` of ``--eval-steps`` steps), scored by the
noise-corrected PSNR (benchmarks/_cosmos_metrics.py): ``10 log10(1 / mean_g[(MSE_g -
s2_g) / peak_g^2])``, MSE against the truth stamp, ``s2`` its own noise variance in the
same pixels, peak the truth's data range, the normalised excess averaged over views
before the logarithm (not clipped per view: see `noise_corrected_excess`). Also reported:
the same on the held-out rows brighter than F814W 25 (``*_bright``; the fainter half's
truths are noisier), the plain PSNR (data range as peak), the held-out chi2 per pixel, and
oracle-tuned Tikhonov (Laplacian regulariser, lambda chosen on the truths) on the same views
as a classical reference.

Key: ``cosmos_em_gain_over_shipped_db`` = noise-corrected PSNR of EM's last lap minus the
shipped prior's, on all held-out views.

Modes: ``--quick`` (about 6 minutes on the 2-core CPU to itself, 16 at load 4-5): 300
training cutouts, 2 laps of 300 M-step steps, 24 E-step sampler steps, 2 views per
held-out row, 4 samples of 24 steps each (few: the comparison between priors is on the
same sampler noise, but the mean of 4 samples is a noisy posterior mean); the full mode
(default): 3000 training cutouts, 4 laps of 1500 steps, 24 E-step sampler steps, 4 views
per held-out row, 8 samples of 32 steps each. Any setting can be given on its own.

Output: ``--out`` (default: a temporary folder) holds the views, the EM run (rerunning the
same command resumes it) and each prior's evaluation; rerunning reuses them all.
Figures: benchmarks/RESULTS.md ("EM benchmark, COSMOS part").

Run: JAX_PLATFORMS=cpu python benchmarks/em_cosmos.py [--quick] [--out DIR]
The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from deconvjax.classical import tikhonov  # noqa: E402
from deconvjax.diffusion.data import cosmos_noise_variance, cosmos_stamps  # noqa: E402
from deconvjax.diffusion.prior import load_prior  # noqa: E402
from deconvjax.diffusion.samplers import DPMSolver2M  # noqa: E402
from deconvjax.diffusion.train import TrainConfig  # noqa: E402
from deconvjax.em import Cutouts, EMConfig, estep, run_em  # noqa: E402
from deconvjax.em.estep import cutout_observation  # noqa: E402
from deconvjax.em.start import load_gaussian_prior  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cosmos_metrics import json_safe, noise_corrected_excess, noise_corrected_psnr  # noqa: E402
from _cosmos_path import add_cosmos_argument, default_cosmos, require_sample  # noqa: E402

COSMOS = default_cosmos()  # main() sets it from --cosmos-dir
SIZE = 32
PSF_SIZE = 25
MODEL_PSF_SIGMA = 0.5  # px: the E-step's model PSF (deconvjax.em.estep default)
TIKHONOV_GRID = (1e-3, 1e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0, 100.0)  # lambda x rms^2 (views at low SNR)

FULL = dict(n_train=3000, laps=4, steps_per_lap=1500, sampler_steps=64, eval_views=4, eval_samples=8,
            eval_steps=32, chunk=50)
# The E-step takes EMConfig's 64 sampler steps in quick mode too: with 12 the samples fit the
# views worse (chi2 per pixel 1.3), with 24 still 1.04, and EM learns their errors
# (RESULTS.md; `deconvjax.em.diagnostics.ESTEP_CHI2_TOLERANCE`).
QUICK = dict(n_train=300, laps=2, steps_per_lap=300, sampler_steps=64, eval_views=2, eval_samples=4,
             eval_steps=24, chunk=50)


# -- views ------------------------------------------------------------------------------------


def shear_stamp(image: np.ndarray, g1: float, g2: float) -> np.ndarray:
    """``(h, w)`` image sheared by the area-preserving map of reduced shear ``(g1, g2)``
    about its centre (cubic interpolation); the flux lost at the edges is put back by
    rescaling, so the total flux is unchanged."""
    from scipy.ndimage import affine_transform

    g2_ = g1 * g1 + g2 * g2
    if g2_ >= 1:
        raise ValueError(f"g1, g2: expected |g| < 1, got ({g1}, {g2})")
    # Forward shear on (x, y) is [[1+g1, g2], [g2, 1-g1]] / sqrt(1-|g|^2) (determinant 1);
    # affine_transform maps output to input coordinates, (y, x) order: the inverse.
    fwd = np.array([[1 - g1, g2], [g2, 1 + g1]]) / np.sqrt(1 - g2_)  # (y, x) order
    inv = np.linalg.inv(fwd)
    c = (np.array(image.shape) - 1) / 2
    out = affine_transform(image, inv, offset=c - inv @ c, order=3, mode="constant", cval=0.0)
    before, after = float(image.sum()), float(out.sum())
    return out * (before / after) if after > 0 and before > 0 else out


def moffat_image(fwhm: float) -> np.ndarray:
    """A unit-sum ``PSF_SIZE`` square Moffat (beta 3.5) image of FWHM ``fwhm`` pixels, with
    the pixel response (GalSim, as benchmarks/em.py's PSF images)."""
    import galsim

    img = galsim.Moffat(beta=3.5, fwhm=float(fwhm)).drawImage(nx=PSF_SIZE, ny=PSF_SIZE, scale=1.0).array
    return np.asarray(img, np.float64) / float(img.sum())


@eqx.filter_jit
def _forward(obs, x):
    return obs(x)


def make_views(stamps: np.ndarray, noise_var: np.ndarray, rows: np.ndarray, n: int, *, flux_scale: float,
               peak_range, fwhm_range, max_shear: float, noise_over_truth: float, seed: int) -> dict:
    """``n`` views of the ``rows`` of ``stamps`` (module docstring): a row at random (or
    each row in turn when ``n`` is a multiple of ``len(rows)``), rotation, flip, shear,
    flux, PSF, noise. Returns the data, PSF images, per-view noise variance, the truths
    and their own noise variance, and the row of each view."""
    rng = np.random.default_rng(seed)
    rows = np.asarray(rows)
    which = np.tile(rows, n // len(rows)) if n % len(rows) == 0 else rng.choice(rows, n)
    lo, hi = np.log(peak_range[0] * flux_scale), np.log(peak_range[1] * flux_scale)
    truths, truth_var, psfs, var = [], [], [], []
    for r in which:
        img = np.rot90(stamps[r, 0], int(rng.integers(4)))
        img = img[:, ::-1] if rng.uniform() < 0.5 else img
        if max_shear > 0:
            g, phi = max_shear * np.sqrt(rng.uniform()), rng.uniform(0, np.pi)
            img = shear_stamp(np.ascontiguousarray(img), g * np.cos(2 * phi), g * np.sin(2 * phi))
        f = np.exp(rng.uniform(lo, hi)) / float(img.max())
        truths.append(img * f)
        truth_var.append(noise_var[r] * f**2)
        psfs.append(moffat_image(rng.uniform(*fwhm_range)))
        var.append(noise_over_truth**2 * noise_var[r] * f**2)
    truths, psfs, var = np.array(truths)[:, None], np.array(psfs)[:, None], np.array(var)
    # The E-step's own forward model puts each truth through its cutout's PSF.
    blank = Cutouts.from_arrays(np.zeros_like(truths), psfs, variance=var, bands=("i",))
    clean = np.stack([np.asarray(_forward(cutout_observation(blank, i, model_psf_sigma=MODEL_PSF_SIGMA),
                                          jnp.asarray(truths[i], jnp.float32)), np.float64)
                      for i in range(n)])
    data = clean + np.sqrt(var)[:, None, None, None] * rng.normal(size=clean.shape)
    return dict(data=data, psf=psfs, variance=var, truths=truths, truth_var=np.array(truth_var), rows=which)


def cutouts_of(views: dict) -> Cutouts:
    return Cutouts.from_arrays(views["data"], views["psf"], variance=views["variance"], bands=("i",))


# -- evaluation ---------------------------------------------------------------------------------


def evaluate(prior, name: str, views: dict, bright: np.ndarray, args, key) -> dict:
    """Posterior means of the held-out views under ``prior``, scored against the truths."""
    t0 = time.perf_counter()
    res = estep(key, prior, cutouts_of(views), sampler=DPMSolver2M(steps=args.eval_steps),
                n_samples=args.eval_samples, chunk=args.chunk, model_psf_sigma=MODEL_PSF_SIGMA, progress=False)
    mean = np.asarray(res.samples)[:, :, 0].mean(axis=1) * float(prior.flux_scale)  # (N, 1, h, w)
    out = score(mean, views, bright)
    out.update({"prior": name, "heldout_chi2_per_pixel": float(np.mean(np.asarray(res.chi2_mean))),
                "eval_seconds": round(time.perf_counter() - t0, 1)})
    print(f"  {name:>8s}: noise-corrected PSNR {out['psnr_nc_db']:.2f} dB (bright {out['psnr_nc_bright_db']:.2f}), "
          f"PSNR {out['psnr_db']:.2f} dB, held-out chi2/pix {out['heldout_chi2_per_pixel']:.3f} "
          f"({out['eval_seconds']:.0f} s)", flush=True)
    return out


def score(est: np.ndarray, views: dict, bright: np.ndarray) -> dict:
    t, v = views["truths"], views["truth_var"]
    rng_ = t.max(axis=(1, 2, 3)) - t.min(axis=(1, 2, 3))
    plain = 20 * np.log10(rng_ / np.sqrt(np.mean((est - t) ** 2, axis=(1, 2, 3))))
    return {"psnr_nc_db": noise_corrected_psnr(est, t, v),
            "psnr_nc_bright_db": noise_corrected_psnr(est[bright], t[bright], v[bright]),
            "psnr_db": float(np.mean(plain)),
            "excess_per_view": noise_corrected_excess(est, t, v).tolist()}


def tikhonov_oracle(views: dict, bright: np.ndarray) -> dict:
    """Tikhonov on every held-out view, lambda (x each view's variance) tuned on the
    truths' noise-corrected PSNR: the classical reference's best case."""
    cut = cutouts_of(views)
    best = None
    for lam in TIKHONOV_GRID:
        est = np.stack([np.asarray(tikhonov(cutout_observation(cut, i, model_psf_sigma=MODEL_PSF_SIGMA),
                                            lam / float(views["variance"][i])), np.float64)
                        for i in range(len(cut))])
        s = score(est, views, bright)
        if best is None or s["psnr_nc_db"] > best["psnr_nc_db"]:
            best = s | {"lambda_times_rms2": lam}
    return best


# -- main -----------------------------------------------------------------------------------------


def _cached(path: Path, fn):
    if path.exists():
        return json.loads(path.read_text())
    value = fn()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


def _pair(text: str, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--{name}: expected two numbers 'lo,hi', got {text!r}") from None
    if not 0 < lo <= hi:
        raise SystemExit(f"--{name}: expected 0 < lo <= hi, got {text!r}")
    return lo, hi


def main(argv=None):
    """Run the benchmark (module docstring); ``argv``: the command-line arguments (default
    ``sys.argv[1:]``), so that benchmarks/em.py can hand over its own."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small setting (module docstring)")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one); rerun resumes")
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"full default {v}")
    ap.add_argument("--start", choices=("shipped", "gaussian"), default="shipped", help="EM's starting prior")
    ap.add_argument("--lr", type=float, default=5e-4, help="M-step learning rate")
    ap.add_argument("--peak-range", default="0.1,1.0", help="view peaks, in units of the prior's flux_scale")
    ap.add_argument("--fwhm-range", default="3.0,5.0", help="Moffat FWHM of the views, pixels")
    ap.add_argument("--max-shear", type=float, default=0.1, help="largest |g| of the training views' shears")
    ap.add_argument("--noise-over-truth", type=float, default=2.0,
                    help="view noise rms over the (rescaled) stamp's own noise rms")
    ap.add_argument("--bright-mag", type=float, default=25.0, help="'bright' held-out rows: F814W below this")
    ap.add_argument("--seed", type=int, default=0)
    add_cosmos_argument(ap)
    args = ap.parse_args(argv)
    global COSMOS
    COSMOS = require_sample(args.cosmos_dir or COSMOS)
    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.noise_over_truth <= 0:
        raise SystemExit(f"--noise-over-truth: expected a positive number, got {args.noise_over_truth}")
    if not 0 <= args.max_shear < 1:
        raise SystemExit(f"--max-shear: expected a number in [0, 1), got {args.max_shear}")
    peak_range, fwhm_range = _pair(args.peak_range, "peak-range"), _pair(args.fwhm_range, "fwhm-range")
    settings = {k: getattr(args, k) for k in FULL} | {
        "start": args.start, "lr": args.lr, "peak_range": peak_range, "fwhm_range": fwhm_range,
        "max_shear": args.max_shear, "noise_over_truth": args.noise_over_truth, "bright_mag": args.bright_mag,
        "seed": args.seed, "quick": bool(args.quick), "model_psf_sigma": MODEL_PSF_SIGMA}
    out = args.out or Path(tempfile.mkdtemp(prefix="deconvjax-em-cosmos-"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    print(f"EM benchmark, COSMOS part ({'quick' if args.quick else 'full'}): {json.dumps(settings)}\nout: {out}\n"
          f"load average at start: {load_start:.2f}", flush=True)

    shipped = load_prior()
    if shipped.shape != (1, SIZE, SIZE):
        raise SystemExit(f"the shipped prior's images are {shipped.shape}; this benchmark needs (1, {SIZE}, {SIZE})")
    n_rows = 100
    held_rows = shipped.cosmos_heldout(n_rows)
    if len(held_rows) == 0:
        raise SystemExit("the shipped prior declares no held-out COSMOS rows")
    train_rows = np.setdiff1d(np.arange(n_rows), held_rows)
    mags = np.asarray(fits.getdata(COSMOS / "real_galaxy_catalog_26_extension_example.fits")["MAG"])

    # -- views (cached in out, keyed by the settings that make them) ---------------------------
    view_keys = ["n_train", "eval_views", "peak_range", "fwhm_range", "max_shear", "noise_over_truth", "seed"]
    tag = hashlib.sha256(json.dumps([settings[k] for k in view_keys]).encode()).hexdigest()[:10]
    data_path = out / f"views_{tag}.npz"
    t0 = time.perf_counter()
    if data_path.exists():
        z = np.load(data_path, allow_pickle=True)
        train, held = z["train"].item(), z["held"].item()
    else:
        stamps = cosmos_stamps(COSMOS, size=SIZE).astype(np.float64)
        noise_var = cosmos_noise_variance(COSMOS, SIZE)
        common = dict(flux_scale=float(shipped.flux_scale), peak_range=peak_range, fwhm_range=fwhm_range,
                      noise_over_truth=args.noise_over_truth)
        train = make_views(stamps, noise_var, train_rows, args.n_train, max_shear=args.max_shear,
                           seed=args.seed, **common)
        held = make_views(stamps, noise_var, held_rows, args.eval_views * len(held_rows), max_shear=0.0,
                          seed=args.seed + 10_000, **common)
        np.savez(data_path, train=np.array(train, dtype=object), held=np.array(held, dtype=object))
    t_views = time.perf_counter() - t0
    bright = mags[held["rows"]] < args.bright_mag
    print(f"{args.n_train} training views of {len(train_rows)} rows, {len(held['rows'])} held-out views of "
          f"{len(held_rows)} rows ({int(bright.sum())} of them brighter than F814W {args.bright_mag}) in "
          f"{t_views:.0f} s", flush=True)

    # -- EM ------------------------------------------------------------------------------------
    cfg = TrainConfig.from_json(ast.literal_eval(dict(shipped.info)["config"]))
    train_cfg = dataclasses.replace(cfg, steps=args.steps_per_lap, learning_rate=args.lr,
                                    warmup_steps=min(cfg.warmup_steps, args.steps_per_lap // 4),
                                    checkpoint_every=max(100, args.steps_per_lap // 4), seed=args.seed)
    config = EMConfig(laps=args.laps, chunk=args.chunk, n_samples=1, train=train_cfg,
                      sampler_steps=args.sampler_steps, gaussian_laps=8, n_prior_samples=64, seed=args.seed)
    # One EM folder per views and EM settings: run_em refuses a folder of other settings.
    em_tag = hashlib.sha256(json.dumps([tag, config.to_json(), args.start]).encode()).hexdigest()[:10]
    em_dir = out / f"em_{em_tag}"
    t0 = time.perf_counter()
    # EM sees the training rows only, so its priors hold out the rows the shipped one held
    # out: recorded, `benchmarks/posterior.py --prior` evaluates them on those rows.
    holdout = {k: v for k, v in shipped.info if k.startswith("cosmos_holdout")}
    run = run_em(cutouts_of(train), em_dir, config, start=args.start, progress=True, prior_info=holdout)
    t_em = time.perf_counter() - t0
    print(f"EM: {args.laps} laps in {t_em:.0f} s (this call)", flush=True)

    # -- evaluation ------------------------------------------------------------------------------
    priors = [("shipped", lambda: shipped)]
    if args.start == "gaussian":
        priors.append(("start", lambda: load_gaussian_prior(em_dir / "lap_000" / "gaussian.eqx")))
    priors += [(f"lap{k}", lambda k=k: load_prior(em_dir / f"lap_{k:03d}" / "prior.eqx"))
               for k in range(1, args.laps + 1)]
    # Evaluations cached by what they depend on: the views and the evaluation's settings
    # (the shipped prior's and Tikhonov's are shared by runs of other EM settings).
    ev_tag = hashlib.sha256(json.dumps([tag, args.eval_samples, args.eval_steps, args.chunk, args.bright_mag]
                                       ).encode()).hexdigest()[:10]
    key = jr.key(args.seed + 1)
    print(f"evaluating {len(priors)} priors on {len(held['rows'])} held-out views:", flush=True)
    # The same key for every prior: the priors are compared on the same sampler noise.
    evals = {name: _cached(out / f"eval_{name}_{ev_tag}{'' if name == 'shipped' else '_' + em_tag}.json",
                           lambda get=get, name=name: evaluate(get(), name, held, bright, args, key))
             for name, get in priors}
    tik = _cached(out / f"eval_tikhonov_{ev_tag}.json", lambda: tikhonov_oracle(held, bright))
    print(f"  tikhonov: noise-corrected PSNR {tik['psnr_nc_db']:.2f} dB (bright {tik['psnr_nc_bright_db']:.2f}), "
          f"lambda x rms^2 {tik['lambda_times_rms2']}", flush=True)

    # -- summary ---------------------------------------------------------------------------------
    start_name = "shipped" if args.start == "shipped" else "start"
    laps = [f"lap{k}" for k in range(1, args.laps + 1)]
    nc = {k: evals[k]["psnr_nc_db"] for k in evals}
    gain = nc[laps[-1]] - nc["shipped"]
    per_row = {}
    for name in ["shipped", *laps]:
        ex = np.asarray(evals[name]["excess_per_view"])
        per_row[name] = {int(r): float(np.mean(ex[held["rows"] == r])) for r in held_rows}
    history = run.history
    res = {
        "cosmos_em_gain_over_shipped_db": gain,
        "cosmos_em_gain_over_shipped_bright_db": evals[laps[-1]]["psnr_nc_bright_db"] - evals["shipped"]["psnr_nc_bright_db"],
        "psnr_noise_corrected_db": nc,
        "psnr_noise_corrected_bright_db": {k: evals[k]["psnr_nc_bright_db"] for k in evals},
        "psnr_db": {k: evals[k]["psnr_db"] for k in evals},
        "heldout_chi2_per_pixel": {k: evals[k]["heldout_chi2_per_pixel"] for k in evals},
        "em_start": start_name,
        "psnr_noise_corrected_tikhonov_oracle_db": tik["psnr_nc_db"],
        "psnr_noise_corrected_tikhonov_oracle_bright_db": tik["psnr_nc_bright_db"],
        "tikhonov_lambda_times_rms2": tik["lambda_times_rms2"],
        "excess_per_heldout_row": per_row,
        "estep_chi2_per_pixel_per_lap": [r["estep_chi2_per_pixel"] for r in history],
        "estep_seconds_per_lap": [r["estep_seconds"] for r in history],
        "mstep_seconds_per_lap": [r["mstep_seconds"] for r in history],
        "eval_seconds": {k: evals[k]["eval_seconds"] for k in evals},
        "n_heldout_views": int(len(held["rows"])), "n_heldout_bright_views": int(bright.sum()),
        "settings": settings, "out": str(out), "wall_seconds": round(time.perf_counter() - t_start, 1),
        "load_average_start": round(load_start, 2), "load_average_end": round(os.getloadavg()[0], 2),
        "jax_backend": jax.default_backend(),
    }
    print("\nnoise-corrected PSNR dB on the held-out views (all, bright):")
    for k in evals:
        print(f"  {k:>8s}  {evals[k]['psnr_nc_db']:6.2f}  {evals[k]['psnr_nc_bright_db']:6.2f}")
    print(f"  tikhonov  {tik['psnr_nc_db']:6.2f}  {tik['psnr_nc_bright_db']:6.2f}  (oracle lambda)")
    print(f"cosmos_em_gain_over_shipped_db = {gain:+.2f}")
    print(json.dumps(json_safe(res)))  # a non-finite noise-corrected PSNR as null
    return res


if __name__ == "__main__":
    main()
