"""Why TARP deviates on case (a) of benchmarks/noise.py (issue 20): the same problem (16x16
stationary Gaussian prior fitted to COSMOS stamps, Moffat PSF, ACS correlated noise at peak
SNR 10), with the *exact* posterior computed densely (float64) as the reference.

Reported: TARP max deviation of exact posterior samples (the statistic's own noise at this
number of simulations and samples), of the sampler's (GaussianFitMMPS, DPMSolver2M, as the
benchmark), and the sampler's errors against the exact posterior per simulation: the mean's
error in units of the exact posterior's per-pixel std, and the ratio of the samples' mean
squared deviation from the exact mean to the exact posterior's trace (1 when calibrated; TARP
in 256 dimensions is sensitive to percent-level errors of it).

Run: JAX_PLATFORMS=cpu DECONVJAX_COSMOS=... python benchmarks/noise_tarp.py [--quick]; the last
line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

from deconvjax.diffusion import VESDE, sample  # noqa: E402
from deconvjax.diffusion.samplers import DPMSolver2M  # noqa: E402
from deconvjax.likelihood.noise_model import GaussianNoiseModel  # noqa: E402
from deconvjax.observation import Observation  # noqa: E402
from deconvjax.posterior.base import ConvergedCG, PosteriorDenoiser, ScaledIdentity  # noqa: E402
from deconvjax.posterior.batch import StackedPosterior  # noqa: E402
from deconvjax.posterior.slic import GaussianFitMMPS  # noqa: E402
from deconvjax.posterior.tarp import tarp_coverage, tarp_max_deviation  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cosmos_path import add_cosmos_argument, default_cosmos, require_sample  # noqa: E402
from noise import tarp_problem  # noqa: E402


def dense_circulant(power_full: np.ndarray) -> np.ndarray:
    """The dense covariance ``(N, N)`` of stationary noise with full-layout power ``(y, x)``."""
    ny, nx = power_full.shape
    basis = np.eye(ny * nx).reshape(-1, ny, nx)
    return np.stack([np.fft.ifft2(power_full * np.fft.fft2(b)).real.ravel() for b in basis], 1)


def learned_method(args, power, size: int, res: dict):
    """``ScoreWhitenedMMPS`` with a `LearnedNoiseModel` trained on ``--learned-train`` draws
    of the problem's own stationary noise (``power``), whitened by its Fisher fit, as
    benchmarks/noise.py's ``learned`` likelihood; its training and fit figures go in ``res``."""
    import tempfile

    from noise import draw_stationary

    from deconvjax.likelihood import CorrelatedGaussianLikelihood, learned
    from deconvjax.posterior.slic import ScoreWhitenedMMPS

    folder = args.learned_dir or Path(tempfile.mkdtemp(prefix="noise_tarp_"))
    folder.mkdir(parents=True, exist_ok=True)
    train = draw_stationary(np.random.default_rng(7), power, args.learned_train, size).astype(np.float32)
    t0 = time.perf_counter()
    config = learned.noise_train_config(size, steps=args.learned_steps)
    model = learned.train_noise_model(train, folder / "noise.eqx", config=config, seed=0, progress=False)
    fisher = learned.fisher_power_spectrum(model, train)
    var = float(np.var(train))
    res["learned_train_seconds"] = time.perf_counter() - t0
    res["learned_fit"] = args.learned_fit
    res["learned_fisher_variance_over_var"] = float(np.fft.irfft2(fisher, s=(size, size))[0, 0, 0] / var)
    print(f"learned noise model: {args.learned_train} cutouts, {args.learned_steps} steps, "
          f"Fisher variance / variance {res['learned_fisher_variance_over_var']:.3f}, "
          f"{res['learned_train_seconds']:.0f} s")
    fits = CorrelatedGaussianLikelihood(fisher) if args.learned_fit == "fisher" else None  # None: gaussian_fit()
    return ScoreWhitenedMMPS(model, fits=fits,
                             max_sigma=0.5 * float(model.prior.sde.sigma(1.0)) * model.scale,
                             cg=ConvergedCG(1e-3, args.cg_max))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sims", type=int, default=None)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=str, default="48", help="comma-separated DPMSolver2M step counts")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--prior-size", type=int, default=32, help="the benchmark prior's image size (PSF scale)")
    ap.add_argument("--snr", type=float, default=10.0)
    ap.add_argument("--cg-max", type=int, default=50)
    ap.add_argument("--learned", action="store_true",
                    help="also the learned likelihood: a noise score trained here on draws of the same noise, "
                         "through ScoreWhitenedMMPS with its Fisher fit (benchmarks/noise.py's 'learned')")
    ap.add_argument("--learned-train", type=int, default=512, help="noise cutouts the learned model trains on")
    ap.add_argument("--learned-steps", type=int, default=800, help="its training steps")
    ap.add_argument("--learned-fit", choices=("fisher", "moments"), default="fisher",
                    help="the Gaussian whitening the learned score: its Fisher fit (noise.py's choice, robust to "
                         "outliers) or the cutouts' second moments (the model's gaussian_fit)")
    ap.add_argument("--learned-dir", type=Path, default=None,
                    help="folder of its checkpoint (rerunning reuses it; default: a temporary folder)")
    add_cosmos_argument(ap)
    args = ap.parse_args()
    sims = args.sims or (48 if args.quick else 300)
    cosmos = require_sample(args.cosmos_dir or default_cosmos())
    ts_ = args.size
    n = ts_ * ts_
    # The benchmark's TARP problem (benchmarks/noise.py).
    prob = tarp_problem(cosmos, ts_, sims, args.prior_size, args.snr)
    tscale, gmean, gpower, gprior, tt = prob.scale, prob.mean, prob.prior_power, prob.prior, prob.truths
    tframe, tpsf, tblank, tp, tdata, trms = prob.frame, prob.psf, prob.blank, prob.power, prob.data, prob.rms

    # Exact posterior (prior variable u = x / tscale, y = A tscale u + n), dense float64.
    eye = jnp.eye(n, dtype=jnp.float32).reshape(n, 1, ts_, ts_)
    a = np.asarray(jax.vmap(tblank)(eye).reshape(n, n), np.float64).T * tscale
    prior_cov = dense_circulant(gpower[0])
    p_full = np.fft.fft2(np.fft.irfft2(tp[0], s=(ts_, ts_))).real
    noise_cov = dense_circulant(p_full)
    s = a @ prior_cov @ a.T + noise_cov
    gain = prior_cov @ a.T @ np.linalg.inv(s)
    post_cov = prior_cov - gain @ a @ prior_cov
    post_cov = 0.5 * (post_cov + post_cov.T)
    mu = gmean.ravel()[None] + (tdata.reshape(sims, n) - (a @ gmean.ravel())[None]) @ gain.T
    chol = np.linalg.cholesky(post_cov + 1e-12 * np.eye(n))
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg()[0],
           "sims": sims, "samples": args.samples, "size": ts_,
           "noise_power_range": float(tp.max() / tp.min()),
           "posterior_std_range": float(np.sqrt(np.diag(post_cov)).max() / np.sqrt(np.diag(post_cov)).min())}
    ex = mu[:, None] + np.einsum("ij,skj->ski", chol, np.random.default_rng(2).normal(size=(sims, args.samples, n)))
    alpha, ecp, _ = tarp_coverage(jr.key(4), ex.reshape(sims, args.samples, 1, ts_, ts_), tt)
    res["tarp_exact"] = float(tarp_max_deviation(alpha, ecp))
    print(f"exact posterior samples: TARP max deviation {res['tarp_exact']:.3f} ({sims} sims x {args.samples})")
    tr_cov = np.trace(post_cov)
    methods = {"GaussianFitMMPS": GaussianFitMMPS(GaussianNoiseModel(tp, ts_), cg=ConvergedCG(1e-3, args.cg_max))}
    if args.learned:
        methods["learned"] = learned_method(args, tp, ts_, res)
    for name, steps in [(m, int(k)) for m in methods for k in args.steps.split(",")]:
        method = methods[name]
        ttemp = PosteriorDenoiser(gprior, Observation(tdata[0], frame=tframe, psf=tpsf, rms=trms),
                                  method=method, embed=ScaledIdentity(tscale))
        stk = StackedPosterior(ttemp, [tdata])
        t0 = time.perf_counter()
        xs, _ = sample(jr.key(3), stk, DPMSolver2M(steps=steps), sde=VESDE(1e-3, 100.0),
                       shape=stk.shape, n_samples=args.samples)
        xs = np.asarray(xs, np.float64).swapaxes(0, 1).reshape(sims, args.samples, n)  # prior units
        dt = time.perf_counter() - t0
        alpha, ecp, _ = tarp_coverage(jr.key(4), xs.reshape(sims, args.samples, 1, ts_, ts_), tt)
        dev = float(tarp_max_deviation(alpha, ecp))
        sd = np.sqrt(np.diag(post_cov))
        mean_err = float(np.sqrt(np.mean(((xs.mean(1) - mu) / sd) ** 2)))
        # E|x - mu|^2 / tr(Sigma) over samples: 1 for exact samples.
        var_ratio = float(np.mean(np.sum((xs - mu[:, None]) ** 2, -1)) / tr_cov)
        # The same ratio in the whitened metric: E (x-mu)^T Sigma^-1 (x-mu) / n.
        w = np.linalg.solve(chol, (xs - mu[:, None]).reshape(-1, n).T)
        maha = float(np.mean(np.sum(w**2, 0)) / n)
        res[f"steps{steps}" if name == "GaussianFitMMPS" else f"{name}_steps{steps}"] = {"tarp": dev, "mean_err_in_sd": mean_err, "var_ratio": var_ratio,
                                "mahalanobis_ratio": maha, "seconds": dt}
        print(f"DPMSolver2M({steps}) {name}: TARP {dev:.3f}; mean error {mean_err:.3f} posterior sd "
              f"(sampling alone: {1 / np.sqrt(args.samples):.3f}); E|x-mu|^2/tr {var_ratio:.3f}; "
              f"Mahalanobis/n {maha:.3f} (exact: 1); {dt:.0f} s")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
