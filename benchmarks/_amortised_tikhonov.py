"""Benchmark: Tikhonov, Tikhonov + U-Net, and + MRS debiasing on simulated (GalSim) pairs,
with the gain in PSNR of the U-Net step also on real COSMOS truths (network trained on the
simulated ones).

    python benchmarks/_amortised_tikhonov.py [--quick] [--seed 0]

Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from deconvjax.amortised.hallucination import hallucination_rate, hallucination_threshold
from deconvjax.amortised.learned_denoiser import (
    TikhonovUNetConfig,
    choose_alpha,
    deconvolve_batch,
    residual_chi2,
    tikhonov_batch,
    train_tikhonov_unet,
)
from deconvjax.amortised.metrics import ellipticity_error, flux_error, psnr, ssim
from deconvjax.amortised.mrs import mrs_debias, multiresolution_support
from deconvjax.amortised.pairs import make_pairs

SCALES = 4


def _timed(fn, batch=64):
    out = fn().block_until_ready()  # warm jit
    # Median of three warm calls: one call on a shared CPU is at the mercy of its neighbours.
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn().block_until_ready()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)) / batch


def _row(method, est, pairs, sec, train_s):
    est = np.asarray(est)
    th = hallucination_threshold(pairs.noise_sigma)
    return dict(method=method, psnr=float(psnr(est, pairs.truth).mean()), ssim=float(ssim(est, pairs.truth).mean()),
                flux_err=float(np.abs(flux_error(est, pairs.truth)).mean()),
                ellip_err=float(ellipticity_error(est, pairs.truth).mean()),
                hallucination=float(hallucination_rate(est, pairs.truth, th).mean()),
                residual_chi2=float(residual_chi2(est, pairs.observed, pairs.psf, pairs.noise_sigma).mean()),
                sec_per_image=sec, train_s=train_s)


def _evaluate(model, alpha, test, train_s):
    obs, psf, sig = test.observed, test.psf, test.noise_sigma
    x_tik, t_tik = _timed(lambda: tikhonov_batch(obs, psf, sig, alpha), len(obs))
    x_net, t_net = _timed(lambda: deconvolve_batch(model, obs, psf, sig), len(obs))
    sup = multiresolution_support(obs[:, 0], sig, SCALES)
    x_mrs, t_mrs = _timed(lambda: mrs_debias(x_net[:, 0], obs[:, 0], psf[:, 0], sup, 20), len(obs))
    return [_row("Tikhonov", x_tik, test, t_tik, 0.0),
            _row("Tikhonov + U-Net", x_net, test, t_net, train_s),
            _row("+ MRS debiasing", x_mrs[:, None], test, t_net + t_mrs, train_s)]


def run(quick: bool, seed: int) -> dict:
    size = 64
    n_train, n_test = (512, 64) if quick else (4096, 256)
    config = TikhonovUNetConfig(steps=300 if quick else 5000, batch=16, seed=seed, checkpoint_every=100)
    noise = (0.005, 0.02)
    train = make_pairs(seed, n_train, size, noise_sigma=noise)
    test = make_pairs(seed + 10_000, n_test, size, noise_sigma=noise)
    alpha = choose_alpha(train)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = train_tikhonov_unet(train, Path(tmp) / "unet.ckpt", config, alpha=alpha, progress=True,
                                    max_seconds=300 if quick else None)
        train_s = time.perf_counter() - t0
    rows = _evaluate(model, alpha, test, train_s)
    result = {"tikhonov_unet_gain_db": rows[1]["psnr"] - rows[0]["psnr"],
              "sec_per_image_unet": rows[1]["sec_per_image"], "alpha": alpha,
              "n_train": n_train, "n_test": n_test, "steps_max": config.steps, "train_max_s": 300 if quick else None, "size": size}
    cosmos = os.environ.get("DECONVJAX_COSMOS")
    if cosmos and Path(cosmos).exists():
        real = make_pairs(seed, n_test, size, galaxies="cosmos", cosmos_dir=cosmos, noise_sigma=noise)
        real_rows = _evaluate(model, alpha, real, train_s)
        for r in real_rows:
            r["method"] = "COSMOS: " + r["method"]
        rows += real_rows
        result["cosmos_tikhonov_unet_gain_db"] = real_rows[1]["psnr"] - real_rows[0]["psnr"]
    return {"rows": rows, "json": result}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = run(args.quick, args.seed)
    keys = ["psnr", "ssim", "flux_err", "ellip_err", "hallucination", "residual_chi2", "sec_per_image", "train_s"]
    print(f"{'method':<28}" + "".join(f"{k:>14}" for k in keys))
    for r in out["rows"]:
        print(f"{r['method']:<28}" + "".join(f"{r[k]:>14.4g}" for k in keys))
    print(json.dumps(out["json"]))


if __name__ == "__main__":
    main()
