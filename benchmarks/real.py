"""Real images through the defaults: `deconvjax fit` against scarlet2, and default
`deconvjax sample` against hand-chosen flux rescalings.

Cases, each written to FITS as a user would have them:

- real HST COSMOS F814W stamps (counts/s, their own 65x51 PSF images, correlated ACS
  noise), without a noise map;
- simulated hard cases with truth (GalSim): an undersampled space PSF (WFC3/IR-like, 0.13"
  pixels, Airy core), a sky pedestal plus gradient under an LSST-like PSF, a bright
  elliptical with a large de Vaucouleurs halo and satellites, and the sky case without a
  noise map.

For each case the default `deconvjax fit` runs in a fresh process twice: with an empty
compilation cache (first process) and again with the cache it left (second process);
scarlet2 0.5.1 fits the same image in a fresh process from the same positions (the ones
deconvjax found), with its quick-start settings (Gaussian-moment initialisation, positive
spectrum and morphology, 0.05 relative spectrum steps, 0.1 morphology steps) and the same
weights (for the cases without a noise map: the true variance, which favours scarlet2).
Printed: chi2 per pixel, share of pixels beyond 3 sigma, median relative flux error where
truth exists, end-to-end seconds (imports, reading, compiling, fitting, writing), ratios.
The sampling part (`_real_sample.sample_rescale_gap`) compares default `deconvjax sample`
on ground-based views of held-out real COSMOS galaxies with the best hand-chosen flux
rescaling and with oracle-tuned Tikhonov. The last line is a JSON object.

    python benchmarks/real.py [--quick] [--no-sample] [--no-scarlet2] [--cases ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _cosmos_path import add_cosmos_argument, default_cosmos  # noqa: E402

COSMOS = default_cosmos()  # main() sets it from --cosmos-dir
CHI2_WINDOW = (0.8, 1.2)
MAX_FRAC_3SIGMA = 0.01

# ----------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------


def _write(path, array, **cards):
    from astropy.io import fits

    header = fits.Header()
    for k, v in cards.items():
        header[k] = v
    fits.writeto(path, np.asarray(array, dtype=np.float32), header, overwrite=True)
    return path


def cosmos_cases(out: Path, n: int) -> list[dict]:
    """The ``n`` brightest COSMOS stamps of at least 40 pixels a side, as FITS in counts/s."""
    from astropy.io import fits

    cat = fits.getdata(COSMOS / "real_galaxy_catalog_26_extension_example.fits")
    cases = []
    with fits.open(COSMOS / "real_galaxy_images_extension.fits") as gals, fits.open(
        COSMOS / "real_galaxy_PSF_images_extension.fits"
    ) as psfs:
        order = np.argsort(cat["MAG"])
        for i in order:
            image = gals[int(cat["GAL_HDU"][i])].data
            if min(image.shape) < 40:
                continue
            d = out / f"cosmos{i}"
            d.mkdir(parents=True, exist_ok=True)
            cases.append({
                "name": f"cosmos{i}",
                "image": _write(d / "image.fits", image, BUNIT="counts/s", PIXSCALE=0.03),
                "psf": _write(d / "psf.fits", psfs[int(cat["PSF_HDU"][i])].data, PIXSCALE=0.03),
                "variance": None,
                "true_variance": _write(d / "true_var.fits", np.full(image.shape, cat["NOISE_VARIANCE"][i])),
                "truth": None,
            })
            if len(cases) == n:
                break
    return cases


def _galaxies(rng, n, shape, scale, big=None):
    import galsim

    gals, truth = [], []
    ny, nx = shape
    for _ in range(n):
        flux = float(rng.uniform(300, 3000))
        hlr = float(rng.uniform(0.3, 0.8))
        y, x = rng.uniform(0.25 * ny, 0.75 * ny), rng.uniform(0.25 * nx, 0.75 * nx)
        g = galsim.Sersic(n=float(rng.uniform(1.0, 2.5)), half_light_radius=hlr, flux=flux)
        g = g.shear(g1=float(rng.uniform(-0.2, 0.2)), g2=float(rng.uniform(-0.2, 0.2)))
        gals.append((g, y, x))
        truth.append((y, x, flux))
    if big is not None:
        gals.append(big)
        truth.append((big[1], big[2], big[0].flux))
    return gals, truth


def _draw(gals, psf, shape, scale, truth):
    """The image of all galaxies; ``truth`` rows get each galaxy's flux within the image
    (a big halo's wings reach past the image edge: its total flux is not measurable)."""
    import galsim

    image = np.zeros(shape)
    for k, (g, y, x) in enumerate(gals):
        # GalSim's offset is from the image's true centre, in pixels (x, y).
        offset = (x - (shape[1] - 1) / 2, y - (shape[0] - 1) / 2)
        one = galsim.Convolve(g, psf).drawImage(nx=shape[1], ny=shape[0], scale=scale, offset=offset).array
        image += one
        truth[k] = (truth[k][0], truth[k][1], float(one.sum()))
    return image


def simulated_cases(out: Path, seed: int, names) -> list[dict]:
    import galsim

    rng = np.random.default_rng(seed)
    cases = []

    def case(name, image, psf_image, sigma, truth, with_noise_map=True, **cards):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        var = np.full(image.shape, sigma**2)
        data = image + rng.normal(0.0, sigma, image.shape)
        return {
            "name": name,
            "image": _write(d / "image.fits", data, **cards),
            "psf": _write(d / "psf.fits", psf_image),
            "variance": _write(d / "var.fits", var) if with_noise_map else None,
            "true_variance": _write(d / "true_var.fits", var),
            "truth": np.asarray(truth),
        }

    if "undersampled" in names:
        scale, shape = 0.13, (64, 64)
        psf = galsim.Airy(lam_over_diam=1.6e-6 / 2.4 * 206265)  # WFC3/IR F160W-like core
        gals, truth = _galaxies(rng, 3, shape, scale)
        psf_image = psf.drawImage(nx=31, ny=31, scale=scale).array  # effective: pixel included
        cases.append(case("undersampled", _draw(gals, psf, shape, scale, truth), psf_image, 0.5, truth, PIXSCALE=scale))
    sky_args = None
    if "sky" in names or "sky_nonoise" in names:
        scale, shape = 0.2, (64, 64)
        psf = galsim.Moffat(beta=3.5, fwhm=0.7)
        gals, truth = _galaxies(rng, 3, shape, scale)
        y, x = np.mgrid[: shape[0], : shape[1]]
        sky = 20.0 + 8.0 * (x - shape[1] / 2) / shape[1] - 5.0 * (y - shape[0] / 2) / shape[0]
        sky_args = (_draw(gals, psf, shape, scale, truth) + sky, psf.drawImage(nx=25, ny=25, scale=scale).array, truth)
        if "sky" in names:
            cases.append(case("sky", sky_args[0], sky_args[1], 1.0, sky_args[2], PIXSCALE=scale))
        if "sky_nonoise" in names:
            cases.append(case("sky_nonoise", sky_args[0], sky_args[1], 1.0, sky_args[2], with_noise_map=False,
                              PIXSCALE=scale))
    if "halo" in names:
        scale, shape = 0.2, (128, 128)
        psf = galsim.Moffat(beta=3.5, fwhm=0.7)
        big = (galsim.DeVaucouleurs(half_light_radius=3.0, flux=2e5).shear(g1=0.15, g2=0.05), 63.5, 63.5)
        gals, truth = _galaxies(rng, 3, shape, scale, big=big)
        y, x = np.mgrid[: shape[0], : shape[1]]
        sky = 3.0 * (x - shape[1] / 2) / shape[1]
        cases.append(case("halo", _draw(gals, psf, shape, scale, truth) + sky, psf.drawImage(nx=25, ny=25, scale=scale).array,
                          2.0, truth, PIXSCALE=scale))
    return cases


# ----------------------------------------------------------------------------------------
# deconvjax (the CLI in fresh processes)
# ----------------------------------------------------------------------------------------

_SUMMARY = re.compile(r"fitted \d+ sources.*?chi2/pixel ([\d.]+).*?([\d.]+)% of pixels beyond 3 sigma")


def run_deconvjax(case: dict, out: Path, cache: Path) -> dict:
    args = [sys.executable, "-m", "deconvjax.cli", "fit", str(case["image"]), "--psf", str(case["psf"]),
            "--out", str(out), "--no-progress"]
    if case["variance"] is not None:
        args += ["--variance", str(case["variance"])]
    env = dict(os.environ, DECONVJAX_CACHE_DIR=str(cache), JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    m = _SUMMARY.search(text)
    result = {"seconds": seconds, "rc": proc.returncode, "chi2_per_pixel": np.nan, "frac_beyond_3sigma": np.nan,
              "n_sources": None}
    if m:
        result["chi2_per_pixel"] = float(m.group(1))
        result["frac_beyond_3sigma"] = float(m.group(2)) / 100
    det = re.search(r"fitted (\d+) sources", text)
    if det:
        result["n_sources"] = int(det.group(1))
    if proc.returncode != 0 or not m:
        result["error"] = text[-600:]
    return result


def _catalog(out: Path):
    from astropy.table import Table

    return Table.read(out / "catalog.ecsv")


def flux_errors(positions: np.ndarray, fluxes: np.ndarray, truth) -> float:
    """Median relative flux error of the true sources, each matched to the nearest fitted
    source within 3 pixels (an unmatched source counts as error 1)."""
    if truth is None or len(positions) == 0:
        return float("nan")
    errors = []
    for ty, tx, tf in truth:
        d = np.hypot(positions[:, 0] - ty, positions[:, 1] - tx)
        k = int(np.argmin(d))
        errors.append(abs(fluxes[k] - tf) / tf if d[k] < 3.0 else 1.0)
    return float(np.median(errors))


def floor_seconds(repeats: int = 3) -> float:
    """The least time of a fresh process that imports JAX and Equinox and runs one tiny
    jitted function (median of ``repeats``): what any JAX/Equinox command pays before
    doing anything, so the largest end-to-end speed-up a fresh process can have is
    ``scarlet2 seconds / floor``."""
    code = "import jax, equinox; jax.jit(lambda x: x + 1)(1.0).block_until_ready()"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                       timeout=600)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ----------------------------------------------------------------------------------------
# scarlet2 (in a fresh process: python benchmarks/real.py --scarlet2-worker DIR)
# ----------------------------------------------------------------------------------------


def scarlet2_worker(case_dir: Path) -> None:
    """Fit ``case_dir/image.fits`` with scarlet2 from ``positions.npy``; print a JSON
    line with chi2 per pixel, the share beyond 3 sigma and the fluxes."""
    import warnings

    warnings.filterwarnings("ignore")
    import jax

    jax.config.update("jax_platforms", "cpu")
    import jax.numpy as jnp
    from astropy.io import fits
    from scarlet2.observation import Observation
    from scarlet2.psf import ArrayPSF
    from scarlet2.validation_utils import set_validation
    from vs_scarlet2 import scarlet2_quickstart_scene  # the same quick-start settings

    set_validation(False)
    image = fits.getdata(case_dir / "image.fits").astype(np.float32)[None]
    var = fits.getdata(case_dir / "true_var.fits").astype(np.float32)[None]
    psf = fits.getdata(case_dir / "psf.fits").astype(np.float32)
    ny, nx = image.shape[-2:]
    h, w = psf.shape
    if h > ny or w > nx:  # scarlet2 needs the PSF inside the frame: the same crop as ours
        bh, bw = min(h, ny - 1 + ny % 2), min(w, nx - 1 + nx % 2)
        cy, cx = np.unravel_index(np.argmax(psf), psf.shape)
        y0, x0 = int(np.clip(cy - bh // 2, 0, h - bh)), int(np.clip(cx - bw // 2, 0, w - bw))
        psf = psf[y0 : y0 + bh, x0 : x0 + bw]
    psf = psf / psf.sum()
    positions = np.load(case_dir / "positions.npy")
    weights = 1.0 / var
    obs = Observation(jnp.asarray(image), jnp.asarray(weights), psf=ArrayPSF(jnp.asarray(psf[None])), channels=["b"])
    scene = scarlet2_quickstart_scene(obs, positions)
    fitted = scene.fit(obs, max_iter=300, e_rel=1e-4, progress_bar=False)
    model = np.asarray(obs.render(fitted()))
    white = (image - model) / np.sqrt(var)
    fluxes = [float(np.asarray(s()).sum()) for s in fitted.sources]
    print(json.dumps({"chi2_per_pixel": float(np.mean(white**2)), "frac_beyond_3sigma": float(np.mean(np.abs(white) > 3)),
                      "fluxes": fluxes}))


def run_scarlet2(case: dict, case_dir: Path, positions: np.ndarray) -> dict:
    np.save(case_dir / "positions.npy", positions)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--scarlet2-worker", str(case_dir)],
                          capture_output=True, text=True, timeout=3600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    seconds = time.perf_counter() - t0
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"seconds": seconds, "error": (proc.stdout + proc.stderr)[-600:], "chi2_per_pixel": np.nan,
                "frac_beyond_3sigma": np.nan, "fluxes": []}
    out["seconds"] = seconds
    return out


# ----------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two COSMOS stamps and two simulated cases, quick sampling")
    p.add_argument("--n-cosmos", type=int, default=4)
    p.add_argument("--cases", nargs="+", default=["undersampled", "sky", "sky_nonoise", "halo"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-scarlet2", action="store_true")
    p.add_argument("--no-sample", action="store_true")
    p.add_argument("--scarlet2-worker", type=Path, default=None, help=argparse.SUPPRESS)
    add_cosmos_argument(p, full=False)
    a = p.parse_args(argv)
    global COSMOS
    COSMOS = a.cosmos_dir or COSMOS
    if a.scarlet2_worker is not None:
        scarlet2_worker(a.scarlet2_worker)
        return None
    if a.quick:
        a.n_cosmos, a.cases = 2, ["undersampled", "sky_nonoise"]
    report: dict = {"loadavg_start": list(os.getloadavg()), "cases": {}}
    floor = floor_seconds()
    print(f"floor (fresh process: import jax, equinox and one tiny jit): {floor:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = simulated_cases(tmp / "sim", a.seed, a.cases)
        if (COSMOS / "real_galaxy_catalog_26_extension_example.fits").exists():
            cases += cosmos_cases(tmp / "cosmos", a.n_cosmos)
        else:
            print(f"no COSMOS data at {COSMOS}: simulated cases only")
        print(f"{'case':14s} {'tool':9s} {'chi2/pix':>9s} {'>3sig':>7s} {'flux err':>9s} {'seconds':>8s}")
        for case in cases:
            d = Path(case["image"]).parent
            first = run_deconvjax(case, d / "out_first", d / "cache")
            cached = run_deconvjax(case, d / "out_cached", d / "cache")
            row = {"first": first, "cached": cached}
            positions = np.zeros((0, 2))
            fluxes = np.zeros(0)
            if first["rc"] == 0:
                cat = _catalog(d / "out_first")
                positions = np.stack([np.asarray(cat["y"]), np.asarray(cat["x"])], axis=1)
                fluxes = np.asarray(cat[[c for c in cat.colnames if c.startswith("flux_")][0]])
            row["flux_error"] = flux_errors(positions, fluxes, case["truth"])
            print(f"{case['name']:14s} {'deconvjax':9s} {first['chi2_per_pixel']:9.3f} "
                  f"{100 * first['frac_beyond_3sigma']:6.2f}% {row['flux_error']:9.3f} "
                  f"{first['seconds']:8.1f} (second process {cached['seconds']:.1f} s)")
            if "error" in first:
                print("   deconvjax failed:", first["error"].replace("\n", " | "))
            if not a.no_scarlet2 and len(positions):
                s2 = run_scarlet2(case, d, positions)
                s2["flux_error"] = flux_errors(positions, np.asarray(s2.get("fluxes") or [np.nan] * len(positions)),
                                               case["truth"])
                row["scarlet2"] = s2
                row["speedup_first"] = s2["seconds"] / first["seconds"]
                row["speedup_cached"] = s2["seconds"] / cached["seconds"]
                print(f"{'':14s} {'scarlet2':9s} {s2['chi2_per_pixel']:9.3f} {100 * s2['frac_beyond_3sigma']:6.2f}% "
                      f"{s2['flux_error']:9.3f} {s2['seconds']:8.1f}   speed-up {row['speedup_first']:.1f}x first, "
                      f"{row['speedup_cached']:.1f}x second process")
                if "error" in s2:
                    print("   scarlet2 failed:", s2["error"].replace("\n", " | "))
            report["cases"][case["name"]] = row
    rows = list(report["cases"].values())
    chi2 = [r["first"]["chi2_per_pixel"] for r in rows]
    frac = [r["first"]["frac_beyond_3sigma"] for r in rows]
    in_window = all(CHI2_WINDOW[0] <= c <= CHI2_WINDOW[1] for c in chi2) and all(f <= MAX_FRAC_3SIGMA for f in frac)
    summary = {
        "default_chi2_per_pixel_max": float(np.nanmax(chi2)) if chi2 else None,
        "default_chi2_per_pixel_min": float(np.nanmin(chi2)) if chi2 else None,
        "default_frac_beyond_3sigma_max": float(np.nanmax(frac)) if frac else None,
        "defaults_in_window": bool(in_window),
        "speedup_end_to_end_first": _median([r.get("speedup_first") for r in rows]),
        "speedup_end_to_end_cached": _median([r.get("speedup_cached") for r in rows]),
        "floor_seconds": floor,
        # The most any fresh process built on JAX and Equinox could reach against scarlet2.
        "speedup_ceiling_fresh_process": _median([r["scarlet2"]["seconds"] / floor for r in rows if "scarlet2" in r]),
        "sample_rescale_gap_db": None,
    }
    if not a.no_sample:
        sys.path.insert(0, str(HERE))
        try:
            from _real_sample import sample_rescale_gap

            sampling = sample_rescale_gap(quick=a.quick)
            report["sample"] = sampling
            summary["sample_rescale_gap_db"] = sampling.get("sample_rescale_gap_db")
            summary["sample_gain_over_tikhonov_db"] = sampling.get("gain_over_tikhonov_db")
        except ImportError as err:
            print(f"sampling part skipped: {err}")
    report["loadavg_end"] = list(os.getloadavg())
    print(json.dumps({**summary, "loadavg": report["loadavg_end"]}, default=float))
    return report


def _median(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


if __name__ == "__main__":
    main()
