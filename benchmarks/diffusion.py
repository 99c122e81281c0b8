"""Diffusion-prior benchmark on this CPU: training throughput, sampling cost, prior quality.

Prints human-readable lines, then (last line) one JSON object with at least
``seconds_per_sample_64`` and ``gaussian_cov_rel_err``.

Measured 2026-11-22 on the shared 2-core CPU (load average ~9): Gaussian cov rel. error
0.0073 (56 NFE); training 24 images/s (32x32, widths 16/32/32, batch 16) and 20 images/s
(widths 16/32/64, batch 32); one 64x64 network evaluation 35 ms/image in a batch of 16;
64x64 sampling (Heun, 49 NFE) 33 s/sample: ~20x the cost of the same evaluations called
directly, because XLA:CPU runs the U-Net slowly inside diffrax's while loop (the same effect
made lax.scan training ~10x slower, see train.py). Stepping the diffrax solver from a
host-side loop is the fix to try next.

Anchor (seed paper): a DDPM took 10 s per 128x128 sample on an A100 with 950 steps.
Target here: <= 1 s per 64x64 prior sample on this CPU with <= 100 network evaluations.

    JAX_PLATFORMS=cpu python benchmarks/diffusion.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from deconvjax.diffusion import (
    VESDE,
    GaussianDenoiser,
    TrainConfig,
    UNet,
    UNetDenoiser,
    load_prior,
    sample,
)
from deconvjax.diffusion._cli import enable_compilation_cache
from deconvjax.diffusion.data import cosmos_stamps, simulate_galaxies
from deconvjax.diffusion.evaluate import (
    best_gaussian_smoothing,
    image_statistics,
    psnr,
    tweedie_denoise,
)
from deconvjax.diffusion.train import _make_optimizer, _train_step

COSMOS = Path(os.environ.get("DECONVJAX_COSMOS", "/work/shared/data/cosmos"))


def timed(f, *a, repeat=1):
    out = jax.block_until_ready(f(*a))
    t = time.perf_counter()
    for _ in range(repeat):
        out = jax.block_until_ready(f(*a))
    return out, (time.perf_counter() - t) / repeat


def gaussian_check():
    a = np.array([[0.8, 0.0, 0.0], [0.3, 0.5, 0.0], [-0.2, 0.1, 0.4]])
    cov, mean = a @ a.T, np.array([0.5, -0.3, 0.2])
    x, nfe = sample(jr.key(0), GaussianDenoiser(mean, cov), VESDE(1e-3, 100.0), (3,), 40_000)
    c = np.cov(np.asarray(x).T)
    return float(np.linalg.norm(c - cov) / np.linalg.norm(cov)), int(nfe)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples and steps")
    args = ap.parse_args()
    enable_compilation_cache()
    res = {}

    err, nfe = gaussian_check()
    res["gaussian_cov_rel_err"] = round(err, 4)
    print(f"Gaussian (d=3, 40000 PF-ODE samples, {nfe} NFE): covariance rel. error {err:.4f}")

    # Training throughput: shipped architecture at 32x32 and the prototypes' 0.49M net.
    for size, ch, b in [(32, (16, 32, 32), 16), (32, (16, 32, 64), 32)]:
        ips, dt, comp = training_throughput(size, ch, b, 3 if args.quick else 6)
        print(f"train {size}x{size} channels={ch} batch={b}: {dt:.3f} s/step, "
              f"{ips:.1f} images/s (compile {comp:.0f} s)")
        res[f"train_images_per_s_{size}_{'-'.join(map(str, ch))}"] = round(ips, 2)

    # Network evaluation at 64x64 (shipped architecture, untrained weights are fine for timing):
    # weights as jit arguments vs closed over as constants.
    den64 = UNetDenoiser(UNet(1, (16, 32, 32), 1, 64, key=jr.key(1)), 0.1, 64)
    xb = jr.normal(jr.key(2), (16, 1, 64, 64))
    as_arg = eqx.filter_jit(lambda d, x: jax.vmap(d, in_axes=(0, None))(x, 0.5))
    const = jax.jit(lambda x: jax.vmap(den64, in_axes=(0, None))(x, 0.5))
    _, t_arg = timed(as_arg, den64, xb, repeat=3)
    _, t_const = timed(const, xb, repeat=3)
    print(f"64x64 eval, batch 16: {1e3 * t_arg / 16:.2f} ms/image (weights as arguments), "
          f"{1e3 * t_const / 16:.2f} ms/image (weights as constants): ratio "
          f"{t_arg / t_const:.2f}")
    res["ms_per_eval_64_batched"] = round(1e3 * t_arg / 16, 3)
    res["const_weight_speedup"] = round(t_arg / t_const, 2)

    # Sampling cost at 64x64: fixed-step Heun PF-ODE, 24 steps -> 49 NFE (+1 final denoise).
    sde = VESDE(1e-3, 100.0)
    nb = 8 if args.quick else 16
    f = lambda: sample(jr.key(3), den64, sde, (1, 64, 64), nb, method="ode_fixed", steps=24)
    jax.block_until_ready(f())  # compile
    t = time.perf_counter()
    _, nfe64 = jax.block_until_ready(f())
    sps64 = (time.perf_counter() - t) / nb
    res["seconds_per_sample_64"] = round(sps64, 3)
    res["nfe_64"] = int(nfe64)
    print(f"64x64 sampling (Heun PF-ODE, batch {nb}): {sps64:.3f} s/sample with {int(nfe64)} "
          f"NFE; anchor DDPM 10 s per 128x128 sample on an A100 with 950 steps "
          f"(per-pixel-per-step: {sps64 / (64 * 64 * int(nfe64)) * 1e9:.1f} ns here vs "
          f"{10 / (128 * 128 * 950) * 1e9:.1f} ns there)")

    # Shipped prior: adaptive PF-ODE samples and quality numbers.
    prior = load_prior()
    n = 16 if args.quick else 64
    t = time.perf_counter()
    samples, nfe32 = sample(jr.key(4), prior.denoiser, prior.sde, prior.shape, n,
                            rtol=1e-2, atol=1e-2)
    samples = np.asarray(jax.block_until_ready(samples))
    sps32 = (time.perf_counter() - t) / n
    res["seconds_per_sample_32_shipped_incl_compile"] = round(sps32, 3)
    res["nfe_32_shipped"] = int(nfe32)
    print(f"shipped prior 32x32 adaptive PF-ODE (Tsit5, rtol 1e-2): {int(nfe32)} NFE, "
          f"{sps32:.3f} s/sample incl. compile, batch {n}")

    if COSMOS.is_dir():
        held = prior.normalise(cosmos_stamps(COSMOS, 32, np.arange(80, 100)))
        rng = np.random.default_rng(1)
        for sigma in (0.01, 0.03, 0.1):
            noisy = held + sigma * rng.standard_normal(held.shape).astype(np.float32)
            d = tweedie_denoise(prior.denoiser, noisy, sigma)
            g, w = best_gaussian_smoothing(noisy, held)
            pt, pg = float(psnr(d, held).mean()), float(psnr(g, held).mean())
            print(f"held-out COSMOS (20), noise sigma={sigma}: PSNR noisy "
                  f"{psnr(noisy, held).mean():.2f}, Tweedie {pt:.2f}, best Gaussian smoothing "
                  f"(width {w:.1f} px) {pg:.2f} dB")
            res[f"psnr_tweedie_{sigma}"] = round(pt, 2)
            res[f"psnr_gauss_{sigma}"] = round(pg, 2)
        train = np.concatenate([
            np.concatenate([cosmos_stamps(COSMOS, 32, np.arange(80))] * 4),
            simulate_galaxies(0, 1200, 32)])
        train = prior.normalise(train)
        st_t, st_s = image_statistics(train), image_statistics(samples)
        print("training set: flux q16/50/84", st_t["flux_q"], "hlr q16/50/84", st_t["hlr_q"])
        print("samples     : flux q16/50/84", st_s["flux_q"], "hlr q16/50/84", st_s["hlr_q"])
        ratio = np.array(st_s["power"]) / np.array(st_t["power"])
        print("power spectrum ratio samples/training per |k| bin:", np.round(ratio, 2).tolist())
        res["flux_median_train"], res["flux_median_samples"] = st_t["flux_q"][1], st_s["flux_q"][1]
        res["hlr_median_train"], res["hlr_median_samples"] = st_t["hlr_q"][1], st_s["hlr_q"][1]
        res["power_ratio"] = np.round(ratio, 3).tolist()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
