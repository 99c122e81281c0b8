"""Diffusion-prior benchmark on this CPU: training throughput, sampling cost, prior quality.

Prints human-readable lines, then (last line) one JSON object with at least
``seconds_per_sample_64`` and ``gaussian_cov_rel_err``; ``--png`` (default
``benchmarks/out/diffusion_samples.png``) gets shipped-prior samples vs training stamps.

Measured 2026-12-01 20:20-20:27 UTC on the shared 2-core CPU (another developer's
benchmarks running; load average 3.1-3.8, given per line in the output), full mode, with
the shipped prior retrained that day (held-out rows every 5th, 4000 steps):

* 64x64 sampling with the shipped network's weights, batch 16, compile excluded:
  **0.45 s/sample with 49 NFE** (default ``DPMSolver2M()``: DPM-Solver++(2M), 48 steps on the
  EDM schedule, host loop); ``EDMHeun()`` 18 steps: 0.32 s/sample with 37 NFE. The same
  evaluations in diffrax's compiled loop (``FixedStepODE``) cost 17.7x more per NFE (8.0 s/sample at 49
  NFE); one 64x64 evaluation costs 9.3 ms/image called directly and 22.6x that inside a
  ``lax.scan``. Weights closed over as constants: 0.95x (not used). Anchor: DDPM 10 s per
  128x128 sample on an A100 with 950 steps. No GPU was available to this session.
* Gaussian (d=3, 40000 samples) covariance rel. error: ``AdaptiveODE`` 0.0073 (56 NFE),
  ``DPMSolver2M`` 0.0147 (49 NFE), EDM Heun 18 steps 0.099 (37 NFE), EDM Heun 48 steps 0.0141 (97 NFE).
* Training: 108 images/s (32x32, widths 16/32/32, batch 16), 86 images/s (16/32/64, batch 32).
* Posterior (MMPS, cg_iters=1, around the shipped prior, 32x32, batch 8, dpm2m): 0.51 s/sample.
* Shipped prior 32x32: 0.08 s/sample (49 NFE, batch 64). Held-out COSMOS PSNR (rows 4, 9,
  ..., 99), Tweedie vs best Gaussian smoothing: 24.76 vs 23.94 (sigma 0.01), 21.46 vs 19.67
  (0.03), 18.93 vs 16.64 dB (0.1).
* 256 prior samples vs the training set (80 COSMOS x 4 + 1200 simulated): flux q16/50/84
  3.2/7.9/16.7 vs 2.7/7.0/20.4; half-light radius median 3.6 vs 4.0 px; second-moment size
  median 5.6 vs 4.9 px; per-image median power ratio 0.99-1.22 for the five lowest |k| bins
  but 2.0, 4.4, 20 in the three highest: the samples carry pixel noise (between COSMOS's and
  none) while 79% of the training stamps are noiseless simulations. The mean power spectrum
  ratio (0.2-0.3) is dominated by the training set's brightest galaxies.

    JAX_PLATFORMS=cpu python benchmarks/diffusion.py [--quick] [--png PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from deconvjax import enable_compilation_cache
from deconvjax.diffusion import (
    VESDE,
    GaussianDenoiser,
    TrainConfig,
    UNet,
    UNetDenoiser,
    load_prior,
    sample,
)
from deconvjax.diffusion.data import cosmos_stamps, simulate_galaxies
from deconvjax.diffusion.evaluate import (
    best_gaussian_smoothing,
    compare_statistics,
    psnr,
    tweedie_denoise,
)
from deconvjax.diffusion.samplers import DEFAULT_SAMPLER, AdaptiveODE, DPMSolver2M, EDMHeun, FixedStepODE
from deconvjax.diffusion.train import _make_optimizer, _train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cosmos_path import SAMPLE_SIZE, add_cosmos_argument, default_cosmos, n_galaxies  # noqa: E402

# --cosmos-dir, else $DECONVJAX_COSMOS, else the shipped subset (the COSMOS part needs the
# 100-galaxy sample and is left out on another).
COSMOS = default_cosmos()


def timed(f, *a, repeat=1):
    out = jax.block_until_ready(f(*a))
    t = time.perf_counter()
    for _ in range(repeat):
        out = jax.block_until_ready(f(*a))
    return out, (time.perf_counter() - t) / repeat


def load():
    return [round(v, 2) for v in os.getloadavg()]


def gaussian_check(quick):
    a = np.array([[0.8, 0.0, 0.0], [0.3, 0.5, 0.0], [-0.2, 0.1, 0.4]])
    cov, mean = a @ a.T, np.array([0.5, -0.3, 0.2])
    den, sde = GaussianDenoiser(mean, cov), VESDE(1e-3, 100.0)
    out = {}
    for name, sampler in [("pf_ode", AdaptiveODE()), ("dpm2m_48", DPMSolver2M()),
                          ("edm_18", EDMHeun(steps=18)), ("edm_48", EDMHeun(steps=48))]:
        x, nfe = sample(jr.key(0), den, sampler, sde=sde, shape=(3,), n_samples=40_000)
        c = np.cov(np.asarray(x).T)
        out[name] = (float(np.linalg.norm(c - cov) / np.linalg.norm(cov)), int(nfe))
    return out


def training_throughput(size, channels, batch, steps):
    cfg = TrainConfig(image_size=size, channels=channels, batch_size=batch, steps=1000)
    net = UNet(1, channels, 1, cfg.emb_dim, key=jr.key(0))
    model = UNetDenoiser(net, 0.1, size)
    opt = _make_optimizer(cfg)
    state = opt.init(eqx.filter(model, eqx.is_array))
    data = jnp.asarray(np.random.default_rng(0).random((64, 1, size, size), np.float32))
    cs = (cfg.sigma_min, cfg.sigma_max, batch, True, cfg.ema_decay)
    t = time.perf_counter()
    out = _train_step(data, model, model, state, jr.key(0), jnp.asarray(0), cs, opt)
    jax.block_until_ready(out[3])
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    m, e, s = model, model, state
    for k in range(steps):
        m, e, s, loss = _train_step(data, m, e, s, jr.key(0), jnp.asarray(k + 1), cs, opt)
    jax.block_until_ready(loss)
    dt = (time.perf_counter() - t) / steps
    return batch / dt, dt, compile_s


def timed_sample(n, key, denoiser, sampler=DEFAULT_SAMPLER, **kw):
    """(seconds per sample after compilation, nfe, samples) of ``sample(key, denoiser,
    sampler, n_samples=n, **kw)``."""
    args, kw = (key, denoiser, sampler), {"n_samples": n, **kw}
    x, _ = sample(*args, **kw)  # compile
    jax.block_until_ready(x)
    t = time.perf_counter()
    x, nfe = sample(*args, **kw)
    x = jax.block_until_ready(x)
    return (time.perf_counter() - t) / n, int(nfe), x


def save_png(path, samples, train, held):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("prior samples", samples[:24]), ("training stamps", train[:24]),
            ("held-out COSMOS", held[:24])]
    fig, axes = plt.subplots(len(rows) * 2, 12, figsize=(12, 6.6))
    scale = float(np.percentile(np.abs(train), 99.5))
    for r, (label, imgs) in enumerate(rows):
        for j in range(24):
            ax = axes[2 * r + j // 12, j % 12]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(imgs):
                ax.imshow(np.arcsinh(imgs[j, 0] / (0.02 * scale)), cmap="gray_r",
                          vmin=-1, vmax=np.arcsinh(50), origin="lower")
        axes[2 * r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle("shipped prior galaxy32: samples (dpm2m, 49 NFE) vs training stamps "
                 "(asinh stretch, same scale)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples and steps")
    ap.add_argument("--png", type=Path, default=Path(__file__).parent / "out" / "diffusion_samples.png",
                    help="where to write the samples-vs-training PNG")
    add_cosmos_argument(ap)
    args = ap.parse_args()
    global COSMOS
    COSMOS = args.cosmos_dir or COSMOS
    enable_compilation_cache()
    res = {"quick": bool(args.quick), "device": jax.devices()[0].device_kind}
    t_start = time.perf_counter()

    g = gaussian_check(args.quick)
    res["gaussian_cov_rel_err"] = round(max(g["pf_ode"][0], g["dpm2m_48"][0]), 4)
    res["gaussian_cov_rel_err_by_sampler"] = {k: round(v[0], 4) for k, v in g.items()}
    res["gaussian_nfe_by_sampler"] = {k: v[1] for k, v in g.items()}
    for k, (e, n) in g.items():
        print(f"Gaussian (d=3, 40000 samples) {k:9s}: {n:4d} NFE, covariance rel. error {e:.4f}")

    # Training throughput: shipped architecture at 32x32 and the prototypes' 0.49M net.
    for size, ch, b in [(32, (16, 32, 32), 16), (32, (16, 32, 64), 32)]:
        ips, dt, comp = training_throughput(size, ch, b, 3 if args.quick else 6)
        la = load()
        print(f"train {size}x{size} channels={ch} batch={b}: {dt:.3f} s/step, "
              f"{ips:.1f} images/s (compile {comp:.0f} s), load {la}")
        res[f"train_images_per_s_{size}_{'-'.join(map(str, ch))}"] = round(ips, 2)
        res[f"load_train_{'-'.join(map(str, ch))}"] = la[0]

    # 64x64 network evaluation with the shipped prior's trained weights (the U-Net is fully
    # convolutional): weights as jit arguments, as constants, and inside a lax.scan.
    prior = load_prior()
    den64 = UNetDenoiser(prior.denoiser.net, prior.denoiser.sigma_data, 64)
    nb = 16
    xb = jr.normal(jr.key(2), (nb, 1, 64, 64))
    sig = jnp.float32(0.5)
    as_arg = eqx.filter_jit(lambda d, x, s: jax.vmap(d, in_axes=(0, None))(x, s))
    const = jax.jit(lambda x, s: jax.vmap(den64, in_axes=(0, None))(x, s))
    _, t_arg = timed(as_arg, den64, xb, sig, repeat=3)
    _, t_const = timed(const, xb, sig, repeat=3)
    la = load()
    print(f"64x64 eval, batch {nb}: {1e3 * t_arg / nb:.2f} ms/image (weights as arguments), "
          f"{1e3 * t_const / nb:.2f} ms/image (weights as constants): ratio "
          f"{t_arg / t_const:.2f}, load {la}")
    res["ms_per_eval_64_batched"] = round(1e3 * t_arg / nb, 3)
    res["const_weight_speedup"] = round(t_arg / t_const, 2)
    if not args.quick:
        n_scan = 2
        scan = eqx.filter_jit(lambda d, x: jax.lax.scan(
            lambda c, s: (jax.vmap(d, in_axes=(0, None))(c, s), None), x,
            jnp.linspace(0.5, 0.4, n_scan))[0])
        _, t_scan = timed(scan, den64, xb, repeat=1)
        t_scan /= n_scan
        print(f"64x64 eval inside lax.scan: {1e3 * t_scan / nb:.2f} ms/image, "
              f"{t_scan / t_arg:.1f}x the direct call, load {load()}")
        res["scan_slowdown"] = round(t_scan / t_arg, 1)

    # 64x64 sampling cost (shipped weights at 64x64), batch 16, compile excluded.
    sde = VESDE(1e-3, 100.0)
    shape64 = (1, 64, 64)
    sps, nfe, _ = timed_sample(nb, jr.key(3), den64, sde=sde, shape=shape64)  # DPMSolver2M(): 48 steps
    la = load()
    res["seconds_per_sample_64"] = round(sps, 3)
    res["nfe_64"] = nfe
    res["load_sample_64"] = la[0]
    print(f"64x64 sampling, default sampler (dpm2m, host loop), batch {nb}: {sps:.3f} s/sample "
          f"with {nfe} NFE ({1e3 * sps / nfe:.1f} ms per image-evaluation), load {la}; anchor DDPM "
          f"10 s per 128x128 sample on an A100 with 950 steps")
    sps_e, nfe_e, _ = timed_sample(nb, jr.key(3), den64, EDMHeun(steps=18), sde=sde,
                                   shape=shape64)
    res["seconds_per_sample_64_edm18"] = round(sps_e, 3)
    res["nfe_64_edm18"] = nfe_e
    print(f"64x64 sampling, EDM Heun 18 steps: {sps_e:.3f} s/sample with {nfe_e} NFE, "
          f"load {load()}")
    if not args.quick:
        # The diffrax fixed-step Heun loop for comparison, 2 steps only (5 NFE), per NFE.
        sps_d, nfe_d, _ = timed_sample(nb, jr.key(3), den64, FixedStepODE(steps=2), sde=sde,
                                       shape=shape64)
        ratio = (sps_d / nfe_d) / (sps / nfe)
        res["diffrax_loop_cost_per_nfe_ratio"] = round(ratio, 1)
        res["seconds_per_sample_64_diffrax_equiv_nfe"] = round(sps_d / nfe_d * nfe, 2)
        print(f"64x64 diffrax FixedStepODE (while loop), per NFE: {ratio:.1f}x the host loop's "
              f"cost ({sps_d / nfe_d * nfe:.2f} s/sample at {nfe} NFE), load {load()}")

    # Posterior denoiser (MMPS around the shipped prior, VJPs of the U-Net) through the same
    # host-loop sampler.
    from deconvjax.frame import Frame
    from deconvjax.observation import Observation
    from deconvjax.posterior import MMPS, PosteriorDenoiser
    from deconvjax.psf import GaussianPSF

    frame = Frame(["i"], (32, 32), psf=GaussianPSF(0.7))
    y = np.asarray(jr.normal(jr.key(9), (1, 32, 32))) * 0.02
    post = PosteriorDenoiser(prior, Observation(y, frame=frame, psf=GaussianPSF(1.5), rms=0.02),
                             method=MMPS(cg_iters=1))
    npost = 8
    sps_p, nfe_p, xp = timed_sample(npost, jr.key(5), post, sde=prior.sde, shape=prior.shape)
    res["posterior_seconds_per_sample_32"] = round(sps_p, 3)
    res["posterior_nfe_32"] = nfe_p
    print(f"posterior (MMPS cg_iters=1, shipped prior, 32x32) dpm2m batch {npost}: "
          f"{sps_p:.3f} s/sample, {nfe_p} NFE, finite={bool(np.all(np.isfinite(xp)))}, "
          f"load {load()}")

    # Shipped prior: samples vs its training set (recipe of deconvjax/data/prior/README.md).
    n = 64 if args.quick else 256
    sps32, nfe32, samples = timed_sample(n, jr.key(4), prior.denoiser, sde=prior.sde,
                                         shape=prior.shape, batch_size=64)
    samples = np.asarray(samples)
    res["seconds_per_sample_32_shipped"] = round(sps32, 3)
    res["nfe_32_shipped"] = nfe32
    print(f"shipped prior 32x32, dpm2m: {nfe32} NFE, {sps32:.3f} s/sample, {n} samples, "
          f"load {load()}")
    res["n_prior_samples"] = n
    if n_galaxies(COSMOS) != SAMPLE_SIZE:
        print(f"{COSMOS} is not the 100-galaxy COSMOS sample: COSMOS part left out (give --cosmos-dir)")
    else:
        held_rows = prior.cosmos_heldout(100)
        held = prior.normalise(cosmos_stamps(COSMOS, 32, held_rows))
        rng = np.random.default_rng(1)
        for sigma in (0.01, 0.03, 0.1):
            noisy = held + sigma * rng.standard_normal(held.shape).astype(np.float32)
            d = tweedie_denoise(prior.denoiser, noisy, sigma)
            gs, w = best_gaussian_smoothing(noisy, held)
            pt, pg = float(psnr(d, held).mean()), float(psnr(gs, held).mean())
            print(f"held-out COSMOS (20), noise sigma={sigma}: PSNR noisy "
                  f"{psnr(noisy, held).mean():.2f}, Tweedie {pt:.2f}, best Gaussian smoothing "
                  f"(width {w:.1f} px) {pg:.2f} dB")
            res[f"psnr_tweedie_{sigma}"] = round(pt, 2)
            res[f"psnr_gauss_{sigma}"] = round(pg, 2)
        cosmos = prior.normalise(cosmos_stamps(COSMOS, 32, np.setdiff1d(np.arange(100), held_rows)))
        sims = prior.normalise(simulate_galaxies(0, 1200, 32))
        train = np.concatenate([np.concatenate([cosmos] * 4), sims])
        stats = {"training_set": compare_statistics(samples, train),
                 "cosmos_train_80": compare_statistics(samples, cosmos),
                 "cosmos_heldout_20": compare_statistics(samples, held),
                 "simulated_1200": compare_statistics(samples, sims)}
        for ref, c in stats.items():
            print(f"samples vs {ref}: flux q16/50/84 {c['flux_q16_50_84_samples']} vs "
                  f"{c['flux_q16_50_84_reference']}; hlr {c['hlr_q16_50_84_samples']} vs "
                  f"{c['hlr_q16_50_84_reference']}; moment size {c['size_q16_50_84_samples']} "
                  f"vs {c['size_q16_50_84_reference']}; power ratio (mean) {c['power_ratio']}, "
                  f"(median) {c['power_ratio_median']}, (median, unit flux) "
                  f"{c['power_ratio_unit_flux_median']}")
        res["prior_sample_statistics"] = stats
        res["flux_median_ratio"] = round(stats["training_set"]["flux_q16_50_84_samples"][1]
                                         / stats["training_set"]["flux_q16_50_84_reference"][1], 3)
        res["size_median_ratio"] = round(stats["training_set"]["size_q16_50_84_samples"][1]
                                         / stats["training_set"]["size_q16_50_84_reference"][1], 3)
        res["power_log_ratio_rms"] = stats["training_set"]["power_log_ratio_rms"]
        res["power_log_ratio_rms_median"] = stats["training_set"]["power_log_ratio_rms_median"]
        perm = np.random.default_rng(0).permutation(len(train))
        save_png(args.png, samples, train[perm], held)
        res["png"] = str(args.png)
        print(f"wrote {args.png}")
    res["load_average"] = load()
    res["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
