"""Throughput of deconvjax.sims: parametric stamps per second and blended fields per second.

Peer: a bare GalSim loop drawing the same kind of profile (de Vaucouleurs bulge + exponential
disk convolved with the band's Kolmogorov PSF, no knots, no colours or bookkeeping), so the
ratio shows what the population model, SED colours and knots cost on top of GalSim itself.

Run: JAX_PLATFORMS=cpu OPENBLAS_NUM_THREADS=1 python benchmarks/sims.py [--n 300]
The last line printed is a JSON object with the figures (and the machine's load average, as
the figures scale inversely with it on a shared machine).
"""

import argparse
import json
import os
import time

import galsim
import numpy as np

from deconvjax.sims import simulate_field
from deconvjax.sims.stamps import simulate_stamps
from deconvjax.sims.surveys import get_survey


def bare_galsim(n: int, bands, size: int, seed: int = 0) -> float:
    sv = get_survey("lsst", bands)
    rng = np.random.default_rng(seed)
    psfs = [sv.psf(b.name) for b in sv.bands]
    t0 = time.perf_counter()
    for _ in range(n):
        hlr = float(np.clip(0.4 * 10 ** (0.2 * rng.standard_normal()), 0.1, 1.5))
        gal = galsim.Add(
            galsim.DeVaucouleurs(half_light_radius=0.4 * hlr, trunc=2.0 * hlr, flux=0.3),
            galsim.Exponential(half_light_radius=hlr, flux=0.7),
        ).shear(e1=0.1, e2=-0.05)
        for psf in psfs:
            galsim.Convolve(gal * 1e4, psf).drawImage(nx=size, ny=size, scale=sv.pixel_scale,
                                                      method="auto")
    return n / (time.perf_counter() - t0)


def ours(n: int, survey: str, bands, size: int, **kw) -> float:
    simulate_stamps(survey, 3, size=size, bands=bands, seed=99, **kw)  # warm caches
    t0 = time.perf_counter()
    simulate_stamps(survey, n, size=size, bands=bands, seed=1, **kw)
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--fields", type=int, default=20)
    args = ap.parse_args()
    n = args.n
    out = {}
    for label, survey, bands, size, kw in [
        ("lsst_gri_64", "lsst", ("g", "r", "i"), 64, {}),
        ("lsst_gri_32", "lsst", ("g", "r", "i"), 32, {}),
        ("lsst_ugrizy_64", "lsst", None, 64, {}),
        ("lsst_r_64", "lsst", ("r",), 64, {}),
        ("lsst_gri_64_noknots", "lsst", ("g", "r", "i"), 64, {"knots": False}),
        ("euclid_vis_64", "euclid", None, 64, {}),
        ("hst_f814w_64", "hst", None, 64, {}),
    ]:
        rate = ours(n, survey, bands, size, **kw)
        out[f"stamps_per_s_{label}"] = round(rate, 1)
        print(f"{label:24s} {rate:8.1f} stamps/s")
    for label, bands in (("gri", ("g", "r", "i")), ("r", ("r",))):
        peer = bare_galsim(n, bands, 64)
        out[f"bare_galsim_per_s_{label}_64"] = round(peer, 1)
        key = "lsst_gri_64_noknots" if label == "gri" else "lsst_r_64"
        ratio = out[f"stamps_per_s_{key}"] / peer
        out[f"ratio_ours_over_bare_galsim_{label}"] = round(ratio, 3)
        print(f"bare GalSim {label:4s} 64      {peer:8.1f} stamps/s   ours/bare = {ratio:.2f}")
    simulate_field("lsst", seed=0)
    t0 = time.perf_counter()
    for k in range(args.fields):
        simulate_field("lsst", seed=k, shape=(64, 64), n_sources=4)
    fps = args.fields / (time.perf_counter() - t0)
    out["fields_per_s_lsst_ugrizy_64_4src"] = round(fps, 2)
    print(f"blended fields (LSST ugrizy 64x64, 4 sources): {fps:.2f} fields/s")
    # Shared machines: the load average says how far these figures are from an idle one.
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    out["cpu_count"] = os.cpu_count()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
