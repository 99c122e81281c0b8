"""Learned noise likelihoods (SLIC, issue 20 part A): how well a small score network learns
noise, and what it buys a MAP fit.

1. Correlated Gaussian noise of the ACS F814W correlation function (GalSim): relative L2
   error of the learned score against the analytic score (`GaussianNoiseModel`) at several
   sigma, and of the empirical Gaussian fit.
2. Real blank sky from the COSMOS stamps: cutout count, mean / std, training time, and the
   learned score against the cutouts' own Gaussian fit (a real-noise figure; not an error,
   since real noise need not be Gaussian).
3. A cosmic ray beside a galaxy: flux error of a MAP fit with the learned likelihood
   (trained on the simulated non-Gaussian mix) and with white / fitted Gaussian ones.

``--quick`` fits in a few minutes on a CPU. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _cosmos_path import add_cosmos_argument, default_cosmos  # noqa: E402

from deconvjax.likelihood.correlated import CorrelatedGaussianLikelihood  # noqa: E402
from deconvjax.likelihood.gaussian import GaussianLikelihood  # noqa: E402
from deconvjax.likelihood.learned import (  # noqa: E402
    NoiseModelLikelihood,
    noise_train_config,
    train_noise_model,
)
from deconvjax.likelihood.noise_data import (  # noqa: E402
    correlated_noise_cutouts,
    cosmos_blank_cutouts,
    non_gaussian_noise_cutouts,
)
from deconvjax.likelihood.noise_model import GaussianNoiseModel  # noqa: E402

SIGMAS = (0.1, 0.3, 1.0, 3.0)


def score_errors(model, ref, test, sigmas=SIGMAS):
    out = {}
    for s in sigmas:
        a = jax.vmap(lambda n: model.score(n, s))(test)
        b = jax.vmap(lambda n: ref.score(n, s))(test)
        out[s] = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    return out


def profile(p, size):
    y, x = jnp.mgrid[:size, :size]
    g = jnp.exp(-((y - p[1]) ** 2 + (x - p[2]) ** 2) / (2 * 1.5**2))
    return p[0] * 10.0 * g / (2 * jnp.pi * 1.5**2)


def fit_flux(likelihood, data, size, steps=500):
    opt = optax.adam(0.05)
    w = jnp.ones_like(data)

    def step(carry, _):
        p, s = carry
        g = jax.grad(lambda q: 0.5 * likelihood.chi2(data, profile(q, size)[None], w))(p)
        u, s = opt.update(g, s)
        return (optax.apply_updates(p, u), s), None

    p0 = jnp.array([5.0, size / 2, size / 2])
    (p, _), _ = jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)
    return float(p[0]) * 10


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small nets and few steps (minutes on a CPU)")
    ap.add_argument("--size", type=int, default=16, help="cutout size (pixels)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per model")
    add_cosmos_argument(ap, full=False)
    args = ap.parse_args(argv)
    steps = args.steps or (800 if args.quick else 4000)
    size = args.size
    n_train = 2048 if args.quick else 8192
    tmp = Path(tempfile.mkdtemp())
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": steps, "size": size,
               "load": os.getloadavg()[0]}
    rows = []

    # 1. ACS correlated noise (unit variance).
    cosmos = args.cosmos_dir or default_cosmos()
    cf_path = Path(cosmos) / "acs_I_unrot_sci_20_cf.fits"
    if cf_path.is_file():
        from astropy.io import fits

        cf = fits.getdata(cf_path)
        cut = correlated_noise_cutouts(cf_path, n=n_train, size=size, variance=1.0, seed=0)
        t = time.perf_counter()
        model = train_noise_model(cut, tmp / "acs.eqx", config=noise_train_config(size, steps=steps), progress=False)
        t_train = time.perf_counter() - t
        ref = GaussianNoiseModel.from_likelihood(
            CorrelatedGaussianLikelihood.from_correlation_function(cf, (size, size), variance=1.0), size)
        test = jnp.asarray(correlated_noise_cutouts(cf_path, n=64, size=size, variance=1.0, seed=99))
        err = score_errors(model, ref, test)
        err_fit = score_errors(GaussianNoiseModel(model.power_spectrum, size), ref, test)
        results["acs"] = {"train_s": t_train, "score_rel_err": err, "gaussian_fit_rel_err": err_fit}
        rows.append(("ACS correlated (GalSim)", t_train, err, err_fit))

    # 2. COSMOS blank sky.
    try:
        cut = cosmos_blank_cutouts(cosmos, size=size, n_per_stamp=8, seed=0)
    except ValueError as e:
        print("COSMOS blank cutouts skipped:", e)
        cut = None
    if cut is not None:
        t = time.perf_counter()
        model = train_noise_model(cut, tmp / "cosmos.eqx", config=noise_train_config(size, steps=steps),
                                  progress=False)
        t_train = time.perf_counter() - t
        gfit = GaussianNoiseModel(model.power_spectrum, size)
        test = jnp.asarray(cut[:64])
        err = score_errors(model, gfit, test)
        results["cosmos"] = {"n_cutouts": len(cut), "mean_over_std": float(cut.mean() / cut.std()),
                             "std": float(cut.std()), "train_s": t_train, "score_vs_gaussian_fit": err}
        rows.append((f"COSMOS blank sky ({len(cut)} cutouts, vs its Gaussian fit)", t_train, err, None))

    # 3. Cosmic ray beside a galaxy.
    cut = non_gaussian_noise_cutouts(n=2 * n_train, size=size, sigma=1.0, seed=0, cosmic_ray_rate=1.0,
                                     hot_pixel_rate=5e-3, poisson_counts=None)
    t = time.perf_counter()
    model = train_noise_model(cut, tmp / "mix.eqx",
                              config=noise_train_config(size, steps=steps, sigma_max=100.0), progress=False)
    t_train = time.perf_counter() - t
    rng = np.random.default_rng(3)
    y, x = np.mgrid[:size, :size]
    g = np.exp(-((y - size / 2) ** 2 + (x - size / 2) ** 2) / (2 * 1.5**2))
    errs = {"learned": [], "white": [], "gaussian_fit": []}
    liks = {"learned": NoiseModelLikelihood(model), "white": GaussianLikelihood(),
            "gaussian_fit": model.gaussian_fit()}
    for k in range(8):
        d = 60 * g / g.sum() + rng.normal(0, 1, g.shape)
        r0 = size // 2 + 2 + (k % 2)
        d[r0, size // 2 - 3: size // 2 + 1] += 40.0
        for name, lik in liks.items():
            errs[name].append(abs(fit_flux(lik, jnp.asarray(d)[None], size) - 60.0))
    results["cosmic_ray"] = {"train_s": t_train, **{f"flux_err_{k}": float(np.mean(v)) for k, v in errs.items()}}

    print(f"\nSLIC noise benchmark, {results['date']}, size {size}, {steps} steps, load {results['load']:.2f}")
    print(f"{'noise':55s} {'train s':>8s} " + " ".join(f"{'s=' + str(s):>8s}" for s in SIGMAS))
    for name, t_train, err, err_fit in rows:
        print(f"{name:55s} {t_train:8.1f} " + " ".join(f"{err[s]:8.3f}" for s in SIGMAS))
        if err_fit is not None:
            print(f"{'  (empirical Gaussian fit)':55s} {'':8s} " + " ".join(f"{err_fit[s]:8.3f}" for s in SIGMAS))
    cr = results["cosmic_ray"]
    print(f"cosmic ray (160 units beside a 60-unit galaxy, sigma 1), mean |flux error| over 8 draws: "
          f"learned {cr['flux_err_learned']:.2f}, white Gaussian {cr['flux_err_white']:.2f}, "
          f"Gaussian fit {cr['flux_err_gaussian_fit']:.2f} (training {cr['train_s']:.0f} s)")
    print(json.dumps(results, default=lambda o: str(o)))


if __name__ == "__main__":
    main()
