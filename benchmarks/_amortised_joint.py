"""Joint multi-survey deconvolution benchmark (issue 19 item 3): LSST-like r, i, z at 0.2"/px
and a Euclid VIS-like image at 0.1"/px (`deconvjax.amortised.joint.simulate_joint`),
deconvolved jointly against each ground band alone and against the space image alone
(split over the bands as a grey source).

Each method's Laplacian weight is chosen from a small grid on separate validation scenes
(highest mean PSNR over bands), then all methods run with FISTA (500 steps) on the same test
scenes; the joint solve adds `ColourRegulariser(10)`. The ground bands are deeper than the
space image (whole-galaxy SNR 200 per band against 100), as LSST coadds are against Euclid Wide.
PSNR / SSIM / flux error are per band against the 0.1"/px truth (`amortised.metrics`).

    JAX_PLATFORMS=cpu python benchmarks/_amortised_joint.py [--quick] [--seed 0]

Prints a table, then (last line) one JSON object with ``joint_gain_db_min``: over bands, the
minimum of the joint PSNR minus the best single-survey PSNR in that band.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from deconvjax.amortised.joint import (  # noqa: E402
    FISTA,
    ColourRegulariser,
    LaplacianRegulariser,
    ground_only_deconvolve,
    joint_deconvolve,
    simulate_joint,
    space_only_deconvolve,
)
from deconvjax.amortised.metrics import flux_error, psnr, ssim  # noqa: E402

BANDS = ("r", "i", "z")
#: Whole-galaxy SNR per image: the ground bands deeper than the space image, as LSST's
#: ten-year coadds are against Euclid Wide's single VIS visit.
GROUND_SNR, SPACE_SNR = 200.0, 100.0


def _methods(lam):
    solver = FISTA(max_steps=500)
    return {
        "joint": lambda o: joint_deconvolve(
            o, regularisers=(LaplacianRegulariser(lam), ColourRegulariser(10.0)), solver=solver),
        "ground_alone": lambda o: ground_only_deconvolve(o, regularisers=(LaplacianRegulariser(lam),), solver=solver),
        "space_alone": lambda o: space_only_deconvolve(o, regularisers=(LaplacianRegulariser(lam),), solver=solver),
    }


def _solve(fn, obs):
    fn(obs[0]).model.block_until_ready()  # compile outside the timing
    t0 = time.perf_counter()
    models = np.stack([np.asarray(fn(o).model) for o in obs])
    return models, (time.perf_counter() - t0) / len(obs)


def run(quick: bool, seed: int) -> dict:
    jax.config.update("jax_enable_x64", True)
    n_val, n_test = (2, 4) if quick else (4, 16)
    grid = (0.01, 0.03, 0.1) if quick else (0.003, 0.01, 0.03, 0.1, 0.3)
    size = 32
    snr = dict(ground_snr=GROUND_SNR, space_snr=SPACE_SNR)
    val_obs, val_truth = simulate_joint(seed + 1000, n_val, size, **snr)
    test_obs, test_truth = simulate_joint(seed, n_test, size, **snr)

    chosen = {}
    for name in ("joint", "ground_alone", "space_alone"):
        scores = []
        for lam in grid:
            m, _ = _solve(_methods(lam)[name], val_obs)
            scores.append(np.mean([psnr(m[:, b:b + 1], val_truth[:, b:b + 1]).mean() for b in range(len(BANDS))]))
        chosen[name] = grid[int(np.argmax(scores))]

    rows = []
    for name, lam in chosen.items():
        m, sec = _solve(_methods(lam)[name], test_obs)
        for b, band in enumerate(BANDS):
            e, t = m[:, b:b + 1], test_truth[:, b:b + 1]
            rows.append(dict(method=name, band=band, lam=lam, psnr=float(psnr(e, t).mean()),
                             ssim=float(ssim(e, t).mean()), flux_err=float(np.abs(flux_error(e, t)).mean()),
                             sec_per_image=sec))

    def get(method, band):
        return next(r["psnr"] for r in rows if r["method"] == method and r["band"] == band)

    gains = {band: get("joint", band) - max(get("ground_alone", band), get("space_alone", band)) for band in BANDS}
    return {"rows": rows, "json": {
        "joint_gain_db_min": float(min(gains.values())),
        "joint_gain_db": {k: round(v, 3) for k, v in gains.items()},
        "lambda": chosen, "ground_snr": GROUND_SNR, "space_snr": SPACE_SNR, "n_test": n_test, "size_ground": size, "quick": quick, "seed": seed,
    }}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 test scenes, a 3-value weight grid")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = run(args.quick, args.seed)
    print(f"{'method':<14}{'band':<6}{'lam':>7}{'PSNR':>8}{'SSIM':>8}{'|dflux|':>9}{'s/image':>9}")
    for r in out["rows"]:
        print(f"{r['method']:<14}{r['band']:<6}{r['lam']:>7.3g}{r['psnr']:>8.2f}{r['ssim']:>8.3f}"
              f"{r['flux_err']:>9.4f}{r['sec_per_image']:>9.2f}")
    print(json.dumps(out["json"]))


if __name__ == "__main__":
    main()
