"""Render plus gradient of the Gaussian log-likelihood, deconvjax against scarlet2.

A 3-band 128x128 scene of N Gaussian sources (N = 5, 20, 50, 100) seen through a
Gaussian PSF, with the same data, weights and sources in both tools, in one run. For
deconvjax: one jitted value-and-gradient of the log-likelihood with respect to every
source parameter. For scarlet2 (0.5.1, optional: ``pip install scarlet2==0.5.1``): its
fit step (render, likelihood, gradient, Adam update), timed per iteration after its
compilation. Prints time per call, compile time and their ratios; the last line is a
JSON object.

    python benchmarks/render.py [--sizes 5 20 50 100] [--repeats 20]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import deconvjax as dj

SHAPE = (128, 128)
BANDS = ("g", "r", "i")
PSF_SIGMA = 2.0
STAMP = 31


def make_problem(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(12, SHAPE[0] - 12, size=(n, 2))
    sizes = rng.uniform(1.5, 3.0, size=n)
    spectra = rng.uniform(20.0, 200.0, size=(n, len(BANDS)))
    return centers, sizes, spectra


def deconvjax_timing(n, repeats, seed=0):
    centers, sizes, spectra = make_problem(n, seed)
    frame = dj.Frame(BANDS, SHAPE)
    sources = [dj.Source(s, dj.GaussianMorphology(z, shape=(STAMP, STAMP)), c) for c, z, s in zip(centers, sizes, spectra)]
    scene = dj.Scene(frame, sources)
    rng = np.random.default_rng(seed + 1)
    truth = dj.Observation(np.zeros((3, *SHAPE)), frame=frame, psf=dj.GaussianPSF(PSF_SIGMA), weights=1.0)
    data = np.asarray(truth(scene.render())) + rng.normal(0, 1.0, (3, *SHAPE))
    obs = dj.Observation(data, frame=frame, psf=dj.GaussianPSF(PSF_SIGMA), weights=1.0)

    @jax.jit
    def step(scene, obs):
        return jax.value_and_grad(lambda s: -dj.log_likelihood(s, [obs]))(scene)

    t0 = time.perf_counter()
    jax.block_until_ready(step(scene, obs))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(scene, obs))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times)), data


def scarlet2_timing(n, repeats, data, seed=0):
    import scarlet2 as sc2
    from numpyro.distributions import constraints

    # Its validation checks print reports after every fit; they are not part of a fit.
    sc2.set_validation(False)
    centers, sizes, spectra = make_problem(n, seed)
    psf = dj.GaussianPSF(PSF_SIGMA).kernel((STAMP, STAMP), 1.0, 3)
    obs = sc2.Observation(jnp.asarray(data), jnp.ones_like(jnp.asarray(data)), psf=sc2.ArrayPSF(jnp.asarray(psf)),
                          channels=list(BANDS))
    model_frame = sc2.Frame(sc2.Box((3, *SHAPE)), psf=sc2.GaussianPSF(1.0), channels=list(BANDS))
    obs.match(model_frame)
    with sc2.Scene(model_frame) as scene:
        for c, z, s in zip(centers, sizes, spectra):
            sc2.Source(jnp.asarray(c), jnp.asarray(s), sc2.GaussianMorphology(float(z), shape=(STAMP, STAMP)))
    with sc2.Parameters(scene):
        for i in range(n):
            sc2.Parameter(scene.sources[i].spectrum, name=f"spectrum:{i}", constraint=constraints.positive, stepsize=0.1)
            sc2.Parameter(scene.sources[i].center, name=f"center:{i}", stepsize=0.1)
            sc2.Parameter(scene.sources[i].morphology.size, name=f"size:{i}", constraint=constraints.positive, stepsize=0.1)
    # scarlet2 builds a new parameter class on every fit call, so each call compiles its
    # step anew: time the steps inside one call, between callbacks.
    stamps = []
    start = time.perf_counter()
    scene.fit(obs, max_iter=2 + repeats, e_rel=0.0, progress_bar=False,
              callback=lambda *_: stamps.append(time.perf_counter()))
    per_iter = float(np.median(np.diff(stamps)[1:]))
    # The first step's wall time less a typical step: set-up and compilation.
    return stamps[0] - start - per_iter, per_iter


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 20, 50, 100])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-scarlet2", action="store_true")
    args = parser.parse_args()
    try:
        import scarlet2  # noqa: F401
        have_scarlet2 = not args.no_scarlet2
    except ImportError:
        have_scarlet2 = False
        print("scarlet2 not installed: timing deconvjax alone (pip install scarlet2==0.5.1)")
    result = {"device": str(jax.devices()[0]), "sizes": args.sizes}
    print(f"{'N':>4} {'dj call ms':>11} {'dj compile s':>13} {'s2 iter ms':>11} {'s2 compile s':>13} {'speedup':>8}")
    for n in args.sizes:
        dj_compile, dj_call, data = deconvjax_timing(n, args.repeats)
        result[f"deconvjax_call_ms_{n}"] = 1e3 * dj_call
        result[f"deconvjax_compile_s_{n}"] = dj_compile
        row = f"{n:>4} {1e3 * dj_call:>11.2f} {dj_compile:>13.2f}"
        if have_scarlet2:
            s2_compile, s2_iter = scarlet2_timing(n, args.repeats, data)
            result[f"scarlet2_iter_ms_{n}"] = 1e3 * s2_iter
            result[f"scarlet2_compile_s_{n}"] = s2_compile
            result[f"speedup_{n}"] = s2_iter / dj_call
            row += f" {1e3 * s2_iter:>11.2f} {s2_compile:>13.2f} {s2_iter / dj_call:>8.1f}"
        print(row, flush=True)
    lo, hi = min(args.sizes), max(args.sizes)
    result[f"compile_ratio_{hi}_over_{lo}"] = result[f"deconvjax_compile_s_{hi}"] / result[f"deconvjax_compile_s_{lo}"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
