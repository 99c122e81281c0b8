"""Amortised deconvolution benchmark (issue 19): the methods trained on (clean, observed)
pairs side by side with the project's posterior sampler, on held-out paired simulations.

Runs three parts, each a module beside this one with ``run(quick, seed) -> {"rows", "json"}``:

- ``_amortised_conditional``: posterior MMPS, conditional diffusion and the conditional VAE
  (percent retained, conditional variance, PSNR, SSIM, seconds per sample);
- ``_amortised_tikhonov``: Tikhonov, Tikhonov + U-Net, + multi-resolution-support debiasing
  (PSNR, SSIM, flux and ellipticity errors, hallucination rate, ms per 64x64 image);
- ``_amortised_joint``: joint multi-survey deconvolution against each band alone and the
  space image alone (PSNR per band).

Prints one table of all methods, then (last line) one JSON object with ``retained_diffusion``,
``retained_cvae``, ``variance_ratio_diffusion_over_cvae``, ``tikhonov_unet_gain_db`` and
``joint_gain_db_min``. Figures measured on this project's machines are in RESULTS.md.

    python benchmarks/amortised.py [--quick] [--seed N] [--parts conditional,tikhonov,joint]
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PARTS = {"conditional": "_amortised_conditional", "tikhonov": "_amortised_tikhonov", "joint": "_amortised_joint"}
COLUMNS = ["method", "band", "retained", "cond_variance", "psnr", "ssim", "flux_err", "ellip_err",
           "hallucination", "sec_per_sample", "sec_per_image", "train_s"]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    """All parts' rows in one table; a column a method does not measure shows '-'."""
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small training sets and few test pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulations and trainings")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; expected a subset of {sorted(PARTS)}")

    from deconvjax import enable_compilation_cache

    enable_compilation_cache()
    rows, summary = [], {}
    for part in parts:
        t0 = time.perf_counter()
        result = importlib.import_module(PARTS[part]).run(quick=args.quick, seed=args.seed)
        print(f"# {part}: {time.perf_counter() - t0:.0f} s", flush=True)
        rows += result["rows"]
        summary.update(result["json"])
    print_table(rows)
    summary["quick"] = args.quick
    summary["load_average"] = os.getloadavg()[0]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
