"""EM benchmark: a galaxy prior learned from corrupted LSST-like cutouts alone.

Setting (full mode, the defaults): ``--n-train 1000`` training cutouts and ``--n-heldout
200`` held-out isolated cutouts, LSST-like: i band, 0.2"/px, 32x32 pixels, each convolved
with its own Moffat PSF (beta 3.5, FWHM uniform in 0.6-0.9") and given white Gaussian
noise of the LSST preset's ten-year i-band background variance (sky + read noise,
`Survey.background_variance`). The galaxies come from the project's simulator
(`deconvjax.sims.galaxies`: de Vaucouleurs bulge + exponential disk + star-forming knots
for half of them, random sizes, ellipticities, i magnitudes 20-25.3 and sub-pixel
offsets), a distribution the Gaussian starting prior does not describe. A fifth of the
training cutouts (``--blend-fraction 0.2``) are blends of 2-3 galaxies (companions 4-10 px
from the primary, all centres inside the cutout), given to EM with their true centres.

Truths: the variable the posterior estimates. The E-step's forward model (see
`deconvjax.em.estep`) treats the prior image as the cutout's own pixel grid seen through a
narrow Gaussian model PSF (sigma ``model_psf_sigma`` = 0.5 px); the cutout's PSF image
(Moffat times the pixel response) is reached from it by a matching kernel. So a truth is
the galaxy convolved with a Gaussian of sigma 0.5 px (0.1"), drawn at 0.2"/px without the
pixel response (the PSF images carry it), in electrons, at the galaxy's sub-pixel
position; a blend's source has its own 32x32 truth stamp centred on its rounded centre,
as the E-step places its prior stamp. Noiseless truths are kept aside: only the oracle
trains on them.

Blends: the E-step places one 32x32 prior stamp per source at the source's rounded centre
and drops what falls outside the cutout (`SourcePlacement`), so blends fit in 32x32
cutouts with 32x32 prior stamps. A batch with blends runs every cutout in that placement
mode, each with as many prior slots as its sources (padded to a power of two, at most
``n_max = 3``; `deconvjax.em.run.source_buckets`). The
Gaussian start (lap 0) is fitted on the isolated cutouts only (`fit_gaussian_prior`);
the blends take part from lap 1's E-step on.

Compared in the same run, each evaluated on the held-out cutouts:

- lap 0, the starting prior: the Gaussian fitted by closed-form EM to the training
  cutouts (``start="gaussian"``);
- EM after every lap (`deconvjax.em.run_em`);
- the oracle: the same network (same `TrainConfig`) trained directly on the clean truths
  of all training sources with the same total step budget as EM's M-steps (``laps x
  steps_per_lap``).

Reported per prior: posterior-mean PSNR (`deconvjax.diffusion.evaluate.psnr`, peak of the
truth as signal) on the held-out cutouts, the mean of ``--eval-samples`` posterior samples
from `estep` with that prior; the energy distance (`statistics_distance`) between the
morphology statistics of ``--prior-samples`` unconditional prior samples and those of the
held-out truths; the held-out E-step chi2 per pixel. Per EM lap: the training E-step's
chi2 per pixel (under the previous lap's prior) and the E-step and M-step seconds.

Targets (printed with the measured values; the JSON's ``targets_met`` says which hold):

- ``em_gap_closed`` = (PSNR_EM - PSNR_start) / (PSNR_oracle - PSNR_start) >= 0.8, EM's
  last lap, within ``em_laps`` <= 8;
- ``stat_distance_ratio_to_oracle`` = distance(EM prior) / distance(oracle) <= 1.5;
- ``estep_speedup_over_loop`` >= 10: `deconvjax.em.estep.estep_speedup` on the final EM
  prior and the first ``--speedup-cutouts`` held-out cutouts (one chunk), same run;
- ``seconds_per_lap`` <= 300 for 1000 32x32 cutouts: E-step seconds scaled to 1000
  cutouts (linear in the number of cutouts) plus the M-step's seconds (set by the step
  budget, not the cutouts), the mean over laps (``seconds_per_lap_measured``: as run).

Both modes sample with 64 DPM-Solver++(2M) steps (E-step and evaluation): under a
network trained on the truths, 24 steps left the E-step's samples 28% too bright (chi2 per
pixel 1.10), 32 steps 5% (benchmarks/RESULTS.md, eleventh session).

``--quick`` (about 15-20 minutes on a busy 2-core CPU) is smaller than the issue's
setting: 200 training cutouts, 50 held out, 2 laps, a tiny U-Net (channels 8, 16), 300
M-step steps per lap, 4 posterior samples per held-out cutout, 64 prior samples, 3 Gaussian-EM laps (8 in full
mode: each lap of the full-covariance Gaussian EM costs about 0.3 s per cutout here), 16
cutouts for the speedup, and **no blends**; its figures are no test of the targets, which
are for the full mode. (With blends, the E-step samples each cutout with as many prior
slots as its sources, padded to a power of two: `deconvjax.em.run.source_buckets`.)

The Gaussian start begins from the data's covariance less the noise
(``--gaussian-init data``, `EMConfig.gaussian_init`); ``isotropic`` is the scaled identity.

Figures: benchmarks/RESULTS.md ("EM benchmark").

Output: ``--out`` (default: a temporary folder) holds the simulated data, the EM run
(checkpoints; rerunning the same command resumes it), the oracle and the per-prior
evaluations; rerunning with the same settings and ``--out`` reuses all of them.

The COSMOS real-galaxy part (EM on LSST-like views of the COSMOS galaxies of
the 100-galaxy sample, --cosmos-dir or $DECONVJAX_COSMOS), evaluated on held-out rows with the noise-corrected PSNR, key
``cosmos_em_gain_over_shipped_db``) is `benchmarks/em_cosmos.py`; ``--cosmos`` runs it
with the options that follow.

Run: JAX_PLATFORMS=cpu python benchmarks/em.py [--quick] [--out DIR] [--laps 8]
The last line printed is a JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import galsim  # noqa: E402
import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from deconvjax.diffusion.evaluate import psnr  # noqa: E402
from deconvjax.diffusion.prior import load_prior  # noqa: E402
from deconvjax.diffusion.samplers import DPMSolver2M, sample  # noqa: E402
from deconvjax.diffusion.train import TrainConfig, train_prior  # noqa: E402
from deconvjax.em import EM_TRAIN_NOISE, Cutouts, EMConfig, estep, run_em  # noqa: E402
from deconvjax.em.diagnostics import morphology_statistics, statistics_distance  # noqa: E402
from deconvjax.em.estep import estep_speedup  # noqa: E402
from deconvjax.em.start import load_gaussian_prior  # noqa: E402
from deconvjax.posterior.base import prior_shape  # noqa: E402
from deconvjax.sims.galaxies import draw_galaxy_params, galaxy_profiles  # noqa: E402
from deconvjax.sims.surveys import get_survey  # noqa: E402

SIZE = 32
PSF_SIZE = 25
MODEL_PSF_SIGMA = 0.5  # px: the E-step's model PSF (deconvjax.em.estep default)

TARGETS = {"em_gap_closed": (">=", 0.8), "em_laps": ("<=", 8), "stat_distance_ratio_to_oracle": ("<=", 1.5),
           "estep_speedup_over_loop": (">=", 10.0), "seconds_per_lap": ("<=", 300.0)}

FULL = dict(n_train=1000, n_heldout=200, laps=8, steps_per_lap=2000, channels="16,32,64", sampler_steps=64,
            eval_samples=4, prior_samples=200, gaussian_laps=8, blend_fraction=0.2, chunk=50,
            speedup_cutouts=32)
QUICK = dict(n_train=200, n_heldout=50, laps=2, steps_per_lap=300, channels="8,16", sampler_steps=64,
             eval_samples=4, prior_samples=64, gaussian_laps=3, blend_fraction=0.0, chunk=50,
             speedup_cutouts=16)


# -- simulation -------------------------------------------------------------------------------


def _draw(profile, pos_yx, *, method, scale):
    """``profile`` drawn on a SIZE x SIZE grid with its centre at 0-indexed pixel ``pos_yx``."""
    c = (SIZE - 1) / 2  # GalSim's true centre of an even image, 0-indexed
    img = profile.drawImage(nx=SIZE, ny=SIZE, scale=scale, method=method,
                            offset=(float(pos_yx[1] - c), float(pos_yx[0] - c)))
    return img.array.astype(np.float64)


def _companions(rng, primary, k):
    out = []
    while len(out) < k:
        r, phi = rng.uniform(4.0, 10.0), rng.uniform(0, 2 * np.pi)
        p = primary + r * np.array([np.sin(phi), np.cos(phi)])
        if np.all(p >= 2) and np.all(p <= SIZE - 3):
            out.append(p)
    return out


def simulate(n: int, seed: int, blend_fraction: float, desc: str) -> dict:
    """``n`` LSST-like i-band cutouts (module docstring): data, PSF images, noise variance,
    source centres, and the truth stamps of every source."""
    survey = get_survey("lsst", bands=["i"])
    scale, var = survey.pixel_scale, survey.background_variance("i")
    rng = np.random.default_rng(seed)
    n_src = np.where(rng.uniform(size=n) < blend_fraction, rng.integers(2, 4, size=n), 1)
    p = draw_galaxy_params(rng, int(n_src.sum()))
    model_psf = galsim.Gaussian(sigma=MODEL_PSF_SIGMA * scale)
    data, psfs, centers, truths, owner = [], [], [], [], []
    g = 0
    for i in tqdm(range(n), desc=desc, leave=False):
        fwhm = rng.uniform(0.6, 0.9)
        psf = galsim.Moffat(beta=3.5, fwhm=fwhm)
        psf_img = psf.drawImage(nx=PSF_SIZE, ny=PSF_SIZE, scale=scale).array.astype(np.float64)
        primary = SIZE // 2 + rng.uniform(-0.5, 0.5, size=2)
        pos = [primary] + _companions(rng, primary, int(n_src[i]) - 1)
        clean = np.zeros((SIZE, SIZE))
        for yx in pos:
            gal = galaxy_profiles(survey, p, g)[0]
            clean += _draw(galsim.Convolve(gal, psf), yx, method="auto", scale=scale)
            stamp_pos = SIZE // 2 + (yx - np.floor(yx + 0.5))  # as the E-step places its stamp
            truths.append(_draw(galsim.Convolve(gal, model_psf), stamp_pos, method="no_pixel", scale=scale))
            owner.append(i)
            g += 1
        data.append(clean + rng.normal(0.0, np.sqrt(var), clean.shape))
        psfs.append(psf_img / psf_img.sum())
        centers.append(np.array(pos) if n_src[i] > 1 else np.array([[SIZE // 2, SIZE // 2]], float))
    return dict(data=np.array(data)[:, None], psf=np.array(psfs)[:, None], variance=float(var),
                centers=centers, n_sources=n_src, truths=np.array(truths)[:, None], owner=np.array(owner))


def cutouts_of(sim: dict) -> Cutouts:
    blends = bool(np.any(sim["n_sources"] > 1))
    return Cutouts.from_arrays(sim["data"], sim["psf"], variance=sim["variance"],
                               centers=sim["centers"] if blends else None, bands=("i",))


def _cached(path: Path, fn):
    if path.exists():
        return json.loads(path.read_text())
    value = fn()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


# -- evaluation ---------------------------------------------------------------------------------


def evaluate(prior, name: str, heldout: Cutouts, truths: np.ndarray, ref_stats: dict, args, key) -> dict:
    """Held-out posterior-mean PSNR and chi2, and the prior samples' statistics distance."""
    sampler = DPMSolver2M(steps=args.sampler_steps)
    t0 = time.perf_counter()
    res = estep(jr.fold_in(key, 1), prior, heldout, sampler=sampler, n_samples=args.eval_samples,
                chunk=args.chunk, model_psf_sigma=MODEL_PSF_SIGMA, progress=False)
    mean = np.asarray(res.samples)[:, :, 0].mean(axis=1) * float(prior.flux_scale)  # (N, band, h, w)
    p = psnr(mean, truths)
    x, _ = sample(jr.fold_in(key, 2), prior.denoiser, sampler, sde=prior.sde, shape=tuple(prior_shape(prior.denoiser)),
                  n_samples=args.prior_samples)
    images = np.asarray(prior.denormalise(x))
    dist = statistics_distance(morphology_statistics(images), ref_stats)
    out = {"prior": name, "psnr_db": float(np.mean(p)), "psnr_median_db": float(np.median(p)),
           "heldout_chi2_per_pixel": float(np.mean(np.asarray(res.chi2_mean))),
           "stat_distance": float(dist), "eval_seconds": round(time.perf_counter() - t0, 2)}
    print(f"  {name:>8s}: PSNR {out['psnr_db']:.2f} dB (median {out['psnr_median_db']:.2f}), "
          f"stat distance {dist:.4f}, held-out chi2/pix {out['heldout_chi2_per_pixel']:.3f} "
          f"({out['eval_seconds']:.0f} s)", flush=True)
    return out


def _check(value, op, target):
    return bool(value >= target) if op == ">=" else bool(value <= target)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small setting (module docstring)")
    ap.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one); rerun resumes")
    for k, v in FULL.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=None, help=f"full default {v}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gaussian-init", choices=("data", "isotropic"), default="data",
                    help="the Gaussian start's initial covariance (EMConfig.gaussian_init)")
    ap.add_argument("--sigma-center", type=lambda v: None if v.lower() == "none" else float(v),
                    default=EM_TRAIN_NOISE["sigma_center"],
                    help="M-step and oracle noise levels around this factor of sigma_data (TrainConfig.sigma_center; "
                         "default: EM's, deconvjax.em.EM_TRAIN_NOISE; none: the Beta(3, 3) spread over the whole range)")
    ap.add_argument("--sigma-spread", type=float, default=EM_TRAIN_NOISE["sigma_spread"],
                    help="TrainConfig.sigma_spread (with --sigma-center)")
    ap.add_argument("--mstep-rounds", type=int, default=EMConfig.mstep_rounds,
                    help="EMConfig.mstep_rounds: M-step trainings per lap at most, until its samples reproduce "
                         "its training images")
    ap.add_argument("--cosmos", action="store_true",
                    help="the COSMOS real-galaxy part (benchmarks/em_cosmos.py; its own options follow)")
    if "--cosmos" in sys.argv[1:]:
        sys.path.insert(0, str(Path(__file__).parent))
        import em_cosmos

        em_cosmos.main([a for a in sys.argv[1:] if a != "--cosmos"])
        return
    args = ap.parse_args()
    base = QUICK if args.quick else FULL
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    channels = tuple(int(c) for c in args.channels.split(","))
    settings = {k: getattr(args, k) for k in FULL} | {"seed": args.seed, "quick": bool(args.quick),
                                                      "gaussian_init": args.gaussian_init,
                                                      "sigma_center": args.sigma_center,
                                                      "sigma_spread": args.sigma_spread,
                                                      "mstep_rounds": args.mstep_rounds}
    out = args.out or Path(tempfile.mkdtemp(prefix="deconvjax-em-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"EM benchmark ({'quick' if args.quick else 'full'}): {json.dumps(settings)}\nout: {out}", flush=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)

    # -- data (cached in out, keyed by the settings that make it) ----------------------------
    tag = hashlib.sha256(json.dumps([args.n_train, args.n_heldout, args.blend_fraction, args.seed]).encode()
                         ).hexdigest()[:10]
    data_path = out / f"data_{tag}.npz"
    t0 = time.perf_counter()
    if data_path.exists():
        z = np.load(data_path, allow_pickle=True)
        train, held = z["train"].item(), z["held"].item()
    else:
        train = simulate(args.n_train, args.seed, args.blend_fraction, "simulate training cutouts")
        held = simulate(args.n_heldout, args.seed + 10_000, 0.0, "simulate held-out cutouts")
        np.savez(data_path, train=np.array(train, dtype=object), held=np.array(held, dtype=object))
    t_sim = time.perf_counter() - t0
    cut_train, cut_held = cutouts_of(train), cutouts_of(held)
    n_blends = int(np.sum(train["n_sources"] > 1))
    print(f"simulated {args.n_train} training cutouts ({n_blends} blends, {len(train['truths'])} sources) and "
          f"{args.n_heldout} held out in {t_sim:.0f} s; noise rms {np.sqrt(train['variance']):.1f} e-",
          flush=True)
    ref_stats = morphology_statistics(held["truths"])

    # -- EM --------------------------------------------------------------------------------
    train_cfg = TrainConfig(image_size=SIZE, bands=1, channels=channels, steps=args.steps_per_lap,
                            checkpoint_every=max(100, args.steps_per_lap // 4), seed=args.seed,
                            sigma_center=args.sigma_center, sigma_spread=args.sigma_spread)
    config = EMConfig(laps=args.laps, chunk=args.chunk, n_samples=1, train=train_cfg,
                      sampler_steps=args.sampler_steps, gaussian_laps=args.gaussian_laps,
                      gaussian_init=args.gaussian_init, model_psf_sigma=MODEL_PSF_SIGMA,
                      n_prior_samples=min(64, args.prior_samples), mstep_rounds=args.mstep_rounds,
                      seed=args.seed)
    t0 = time.perf_counter()
    # One EM folder per EM settings: run_em refuses a folder of other settings. The number of
    # laps is not part of them, so that a rerun with a larger --laps continues the same run.
    em_tag = hashlib.sha256(json.dumps([tag, config.identity()]).encode()).hexdigest()[:10]
    em_dir = out / f"em_{em_tag}"
    run = run_em(cut_train, em_dir, config, start="gaussian", progress=True)
    t_em = time.perf_counter() - t0
    history = run.history
    print(f"EM: {args.laps} laps in {t_em:.0f} s (this call)", flush=True)

    # -- oracle: the same network and step budget on the clean truths --------------------------
    t0 = time.perf_counter()
    oracle_cfg = dataclasses.replace(train_cfg, steps=args.laps * args.steps_per_lap,
                                     checkpoint_every=max(100, args.laps * args.steps_per_lap // 4))
    (out / "oracle").mkdir(exist_ok=True)
    oracle = train_prior(train["truths"].astype(np.float32), out / "oracle" / "prior.eqx", oracle_cfg,
                         resume=True, progress=True, record_time=False)
    t_oracle = time.perf_counter() - t0
    print(f"oracle: {oracle_cfg.steps} steps on {len(train['truths'])} clean truths in {t_oracle:.0f} s", flush=True)

    # -- evaluation of every prior ----------------------------------------------------------------
    key = jr.key(args.seed + 1)
    priors = [("lap0", lambda: load_gaussian_prior(em_dir / "lap_000" / "gaussian.eqx"))]
    priors += [(f"lap{k}", lambda k=k: load_prior(em_dir / f"lap_{k:03d}" / "prior.eqx"))
               for k in range(1, args.laps + 1)]
    priors += [("oracle", lambda: oracle)]
    print(f"evaluating {len(priors)} priors on {args.n_heldout} held-out cutouts:", flush=True)
    evals = {}
    ev_tag = hashlib.sha256(json.dumps([em_tag, args.eval_samples, args.prior_samples, args.sampler_steps,
                                        args.chunk]).encode()).hexdigest()[:10]
    for name, get in tqdm(priors, desc="evaluate", leave=False):
        # The oracle's step budget follows --laps, so its evaluation is cached per budget.
        cache_name = f"oracle{oracle_cfg.steps}" if name == "oracle" else name
        evals[name] = _cached(out / f"eval_{cache_name}_{ev_tag}.json",
                              lambda get=get, name=name: evaluate(get(), name, cut_held, held["truths"], ref_stats,
                                                                  args, key))

    # -- E-step speedup over the per-cutout loop ---------------------------------------------------
    t0 = time.perf_counter()
    n_sp = min(args.speedup_cutouts, args.n_heldout)
    sp = estep_speedup(jr.fold_in(key, 3), run.prior, cut_held.select(np.arange(n_sp)),
                       sampler=DPMSolver2M(steps=args.sampler_steps), n_samples=1, model_psf_sigma=MODEL_PSF_SIGMA)
    print(f"E-step speedup over the deconvolve loop: {sp['estep_speedup_over_loop']:.1f}x "
          f"({n_sp} cutouts, batched {sp['estep_s']:.1f} s, loop {sp['loop_s']:.1f} s; "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)

    # -- summary -------------------------------------------------------------------------------
    laps = [f"lap{k}" for k in range(args.laps + 1)]
    psnr_laps = [evals[k]["psnr_db"] for k in laps]
    dist_laps = [evals[k]["stat_distance"] for k in laps]
    p0, p_em, p_or = psnr_laps[0], psnr_laps[-1], evals["oracle"]["psnr_db"]
    gap = (p_em - p0) / (p_or - p0) if p_or != p0 else float("nan")
    ratio = dist_laps[-1] / evals["oracle"]["stat_distance"]
    e_s = [r["estep_seconds"] for r in history]
    m_s = [r["mstep_seconds"] for r in history]
    per_lap_1000 = [e * 1000 / args.n_train + m for e, m in zip(e_s, m_s)]
    measured = {"em_gap_closed": gap, "em_laps": args.laps, "stat_distance_ratio_to_oracle": ratio,
                "estep_speedup_over_loop": sp["estep_speedup_over_loop"],
                "seconds_per_lap": float(np.mean(per_lap_1000))}
    met = {k: _check(measured[k], *TARGETS[k]) for k in TARGETS}
    print("\nper prior (held out):        PSNR dB   stat distance   held-out chi2/pix")
    for k in [*laps, "oracle"]:
        e = evals[k]
        print(f"  {k:>8s}                   {e['psnr_db']:6.2f}   {e['stat_distance']:13.4f}   "
              f"{e['heldout_chi2_per_pixel']:8.3f}")
    print("per EM lap: training E-step chi2/pix (previous prior), E-step s, M-step s")
    for r in history:
        print(f"  lap {r['lap']}: {r['estep_chi2_per_pixel']:.3f}, {r['estep_seconds']:.0f} s, "
              f"{r['mstep_seconds']:.0f} s")
    print(f"PSNR: start {p0:.2f} dB, EM (lap {args.laps}) {p_em:.2f} dB, oracle {p_or:.2f} dB "
          f"(EM - start {p_em - p0:+.2f} dB, oracle - EM {p_or - p_em:+.2f} dB)")
    print(f"stat distance: start {dist_laps[0]:.4f}, EM {dist_laps[-1]:.4f}, oracle "
          f"{evals['oracle']['stat_distance']:.4f}")
    for k, (op, target) in TARGETS.items():
        print(f"  {k} = {measured[k]:.3f} (target {op} {target}): {'met' if met[k] else 'MISSED'}")
    if args.quick:
        print("  (quick mode: a smaller setting than the targets are set for)")
    wall = time.perf_counter() - t_start
    res = dict(measured)
    res.update({
        "psnr_start_db": p0, "psnr_em_db": p_em, "psnr_oracle_db": p_or,
        "stat_distance_start": dist_laps[0], "stat_distance_em": dist_laps[-1],
        "stat_distance_oracle": evals["oracle"]["stat_distance"],
        "psnr_db_per_lap": psnr_laps, "stat_distance_per_lap": dist_laps,
        "heldout_chi2_per_pixel_per_lap": [evals[k]["heldout_chi2_per_pixel"] for k in laps],
        "heldout_chi2_per_pixel_oracle": evals["oracle"]["heldout_chi2_per_pixel"],
        "estep_chi2_per_pixel_per_lap": [r["estep_chi2_per_pixel"] for r in history],
        "estep_seconds_per_lap": e_s, "mstep_seconds_per_lap": m_s,
        "mstep_rounds_per_lap": [r.get("mstep_rounds", 1) for r in history],
        "mstep_flux_ratio_per_lap": [r.get("mstep_flux_ratio") for r in history],
        "seconds_per_lap_measured": float(np.mean([e + m for e, m in zip(e_s, m_s)])),
        "seconds_per_lap_per_1000_cutouts": per_lap_1000,
        "estep_speedup": {k: v for k, v in sp.items() if k != "shape"},
        "oracle_seconds": round(t_oracle, 1), "simulate_seconds": round(t_sim, 1),
        "n_blends": n_blends, "n_training_sources": int(len(train["truths"])),
        "targets": {k: f"{op} {t}" for k, (op, t) in TARGETS.items()}, "targets_met": met,
        "settings": settings, "out": str(out), "wall_seconds": round(wall, 1),
        "load_average_end": round(os.getloadavg()[0], 2), "jax_backend": jax.default_backend(),
    })
    print(json.dumps(res))


if __name__ == "__main__":
    main()
