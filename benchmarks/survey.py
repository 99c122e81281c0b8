"""Survey-scale fitting (`deconvjax.survey`, `deconvjax fit-survey`) on this machine's CPU.

Cutouts: LSST-like 64x64 fields of 1 to 4 galaxies in g, r, i (`vs_scarlet2.simulate`),
written as `deconvjax simulate` writes them, with a manifest of their true centres. Only
``--unique`` of them are simulated (GalSim costs ~0.15 s a cutout here); the manifest
lists each of them ``--n-cutouts / --unique`` times under distinct ids, which changes
nothing for the fits (each cutout's fit is its own).

Figures (the last line printed is a JSON object with them):

- ``scaling_2_over_1_workers``: cutouts per second with 2 Dask workers over 1 worker,
  each worker one process using one core (`FitTask` ``threads=1``; pinned), both runs
  with a warm compilation cache and timed from the first shard submitted;
- ``compile_fraction_2048``: the share of the wall time of a cold-cache run (2 workers,
  all ``--n-cutouts``) that a warm-cache rerun of the same work does not spend:
  ``(cold - warm) / cold`` (compiling, and loading nothing from the cache);
- ``speedup_256_cutouts_cached``: the 256 cutouts of ``vs_scarlet2.py`` (same seed,
  settings and constraints) fitted by ``deconvjax fit-survey`` in a fresh process whose
  cache is warm (wall time of the whole process: imports, reading, init, fit, writing),
  against scarlet2 fitting them one by one, its per-cutout time measured in this run as
  ``vs_scarlet2.py`` measures it (the first cutout of each source count timed on its own
  and counted once, ``--s2-cutouts`` more timed and scaled to the rest);
- ``lost_or_duplicated_rows_after_kill``: a 2-worker run in which the first shard's
  worker kills itself mid-shard once: rows missing or written twice, against the
  manifest.

Each run's ``compile_stats_*`` hold the seconds in XLA's compiler and tracing and the
persistent-cache misses, summed over shards, and the misses of each worker process
(``cache_misses_by_worker``: a program compiled by one worker is loaded by the other).
``survey_programs.py`` lists the programs one worker compiles for a shard.

Run ``--quick`` for a few-minute version (128 cutouts for the worker figures, the 256
cutouts in full; the figures' keys are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import vs_scarlet2 as vs  # noqa: E402

from deconvjax.survey import AbstractSurveyTask, FitTask, read_catalog, run_survey, write_manifest  # noqa: E402


def write_cutouts(folder: Path, fields, repeat: int = 1) -> Path:
    """Write ``fields`` as `deconvjax simulate` does, and a manifest listing each ``repeat``
    times (ids ``c<k>_<copy>``) with its true centres."""
    from deconvjax.io import write_field

    folder.mkdir(parents=True, exist_ok=True)
    cols = {k: [] for k in ("cutout_id", "file", "y", "x", "ny", "nx")}
    for copy in range(repeat):
        for k, f in enumerate(fields):
            name = f"field_{k:05d}.fits"
            if copy == 0:
                write_field(folder / name, f)
            pos = vs.truth_positions(f)
            cols["cutout_id"].append(f"c{k:05d}_{copy}")
            cols["file"].append(name)
            cols["y"].append(pos[:, 0])
            cols["x"].append(pos[:, 1])
            cols["ny"].append(f.shape[0])
            cols["nx"].append(f.shape[1])
    return write_manifest(folder / "survey_manifest.parquet", cols)


class KillFirstShard(AbstractSurveyTask):
    """`FitTask`, except that the first shard to get here kills its worker once, after
    reading its cutouts and before writing."""

    inner: FitTask
    marker: str

    def config(self):
        return self.inner.config()

    def buckets(self, cutouts):
        return self.inner.buckets(cutouts)

    def write_products(self, table, out, index):
        return self.inner.write_products(table, out, index)

    def run_bucket(self, bucket, seed):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return self.inner.run_bucket(bucket, seed)


def timed_run(manifest, out, task, workers, shard_size, cache):
    res = run_survey(manifest, out, task, workers=workers, shard_size=shard_size, cache_dir=cache, progress=False)
    work = res["wall_seconds"] - res["startup_seconds"]
    shards = res["shards"].values()
    stats = {k: sum(r.get(k, 0) for r in shards) for k in ("compile_seconds", "trace_seconds", "cache_misses")}
    # Per worker process: with a shared cache, each program should be compiled by one
    # worker only (the other loads it), so the misses split rather than double.
    by_pid: dict = {}
    for r in shards:
        by_pid[r.get("pid")] = by_pid.get(r.get("pid"), 0) + r.get("cache_misses", 0)
    stats["cache_misses_by_worker"] = sorted(by_pid.values(), reverse=True)
    return work, res["startup_seconds"], stats, res["settings"]["task"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-cutouts", type=int, default=2048)
    p.add_argument("--unique", type=int, default=512, help="cutouts simulated (the manifest repeats them)")
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--stamp-size", type=int, default=27)
    p.add_argument("--s2-cutouts", type=int, default=8)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--work", default=None, help="folder for cutouts, caches and outputs (default: a temporary one)")
    p.add_argument("--quick", action="store_true", help="128 cutouts (64 unique), 2 scarlet2 cutouts")
    p.add_argument("--only-256", action="store_true", help="only the speedup_256_cutouts_cached part")
    a = p.parse_args(argv)
    if a.quick:
        a.n_cutouts, a.unique, a.shard_size, a.batch, a.s2_cutouts = 128, 64, 32, 32, 2
    warnings.filterwarnings("ignore")
    work = Path(a.work or tempfile.mkdtemp(prefix="survey_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"n_cutouts": a.n_cutouts, "unique": a.unique, "max_iter": a.max_iter, "quick": a.quick,
                 "loadavg_start": list(os.getloadavg())}

    if not a.only_256:
        workers_and_kill(a, work, out)
    cached_256(a, work, out)
    out["loadavg_end"] = list(os.getloadavg())
    keys = ("scaling_2_over_1_workers", "compile_fraction_2048", "speedup_256_cutouts_cached",
            "lost_or_duplicated_rows_after_kill")
    print(json.dumps({**out, **{k: out[k] for k in keys if k in out}}))


def workers_and_kill(a, work, out):
    # Cutouts -----------------------------------------------------------------------------
    t = time.perf_counter()
    fields = vs.simulate(a.unique, a.seed, (64, 64), 1, 4)
    manifest = write_cutouts(work / "cutouts", fields, repeat=-(-a.n_cutouts // a.unique))
    if a.n_cutouts % a.unique:
        raise SystemExit("--n-cutouts must be a multiple of --unique")
    print(f"simulated and wrote {a.unique} cutouts ({a.n_cutouts} in the manifest) in {time.perf_counter() - t:.1f} s")
    common = dict(max_iter=a.max_iter, stamp_size=a.stamp_size, batch=a.batch, threads=1)

    # Cold then warm cache, 2 workers; warm, 1 worker -------------------------------------
    cache = work / "cache"
    cold, start_c, comp_c, settings = timed_run(manifest, work / "cold2", FitTask(**common), 2, a.shard_size,
                                                str(cache))
    # The settings run_survey chose (model PSF, bands): the same for every later run.
    common.update(model_psf_sigma=settings["model_psf_sigma"], bands=tuple(settings["bands"]))
    warm2, _, comp_w, _ = timed_run(manifest, work / "warm2", FitTask(**common), 2, a.shard_size, str(cache))
    warm1, _, comp_1, _ = timed_run(manifest, work / "warm1", FitTask(**common), 1, a.shard_size, str(cache))
    rate1, rate2 = a.n_cutouts / warm1, a.n_cutouts / warm2
    print(f"[workers] cold cache, 2 workers: {cold:.1f} s (+{start_c:.1f} s starting the cluster; {comp_c}); "
          f"warm cache: 2 workers {warm2:.1f} s ({rate2:.1f} cutouts/s; {comp_w}), 1 worker {warm1:.1f} s "
          f"({rate1:.1f} cutouts/s; {comp_1}) [compile/trace seconds summed over workers and threads]")
    out.update(time_cold_2_workers=cold, time_warm_2_workers=warm2, time_warm_1_worker=warm1,
               cluster_start_seconds=start_c, compile_stats_cold=comp_c, compile_stats_warm_2=comp_w,
               compile_stats_warm_1=comp_1,
               per_cutout_seconds_2_workers=warm2 / a.n_cutouts, per_cutout_core_seconds=warm1 / a.n_cutouts,
               scaling_2_over_1_workers=rate2 / rate1, compile_fraction_2048=max(0.0, (cold - warm2) / cold))

    # A worker killed mid-shard -------------------------------------------------------------
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = work / "killed"
    marker.unlink(missing_ok=True)
    killed = work / "killed_run"
    run_survey(manifest, killed, KillFirstShard(FitTask(**common), str(marker)), workers=2,
               shard_size=a.shard_size, cache_dir=str(cache), progress=False)
    table = read_catalog(killed)
    expected = sum(len(vs.truth_positions(f)) for f in fields) * (a.n_cutouts // a.unique)
    keys = set(zip(table["cutout_id"], table["source"]))
    bad = abs(expected - len(keys)) + (len(table) - len(keys))
    print(f"[kill] worker killed: {marker.exists()}; rows {len(table)}, expected {expected}, lost or twice {bad}")
    out["lost_or_duplicated_rows_after_kill"] = int(bad)


def cached_256(a, work, out):
    # 256 cutouts of vs_scarlet2.py in a fresh process, warm cache, against scarlet2 ---------
    n256 = 256
    cut = vs.simulate(n256, a.seed + 7, (64, 64), 1, 4)
    m256 = write_cutouts(work / "cutouts256", cut)
    cmd = [sys.executable, "-m", "deconvjax.cli", "fit-survey", str(m256), "--shard-size", str(n256), "--batch",
           str(n256), "--max-iter", str(a.max_iter), "--stamp-size", str(a.stamp_size), "--no-progress"]
    env = dict(os.environ, DECONVJAX_CACHE_DIR=str(work / "cache256"))
    walls = []
    for run in range(2):  # the first warms the cache
        t = time.perf_counter()
        r = subprocess.run(cmd + ["--out", str(work / f"out256_{run}")], env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
    rec = json.loads((work / "out256_1" / "shards.json").read_text())
    phases = {k: round(sum(r.get(k, 0.0) for r in rec.values()), 2)
              for k in ("seconds", "read_seconds", "compile_seconds", "trace_seconds")}
    print(f"[256] fit-survey in a fresh process: cold cache {walls[0]:.1f} s, warm cache {walls[1]:.1f} s; "
          f"warm run's shard phases (s): {phases}", flush=True)
    out.update(time_256_fresh_process_cold=walls[0], time_256_fresh_process_warm=walls[1], phases_256_warm=phases)
    try:
        from scarlet2.validation_utils import set_validation
    except ImportError:
        print("[256] scarlet2 is not installed: no speedup_256_cutouts_cached figure")
        return

    set_validation(False)
    vs.scarlet2_fit(vs.simulate(1, a.seed + 99, (64, 64), 2, 2)[0], 20)  # untimed warm-up, as vs_scarlet2.py
    n2 = min(a.s2_cutouts, n256)
    firsts = cut[n2 : n2 + 4]
    s2_first = [vs.scarlet2_fit(c, a.max_iter)[1] for c in firsts]
    s2_times = [vs.scarlet2_fit(c, a.max_iter)[1] for c in cut[:n2]]
    s2_total = float(np.sum(s2_first)) + float(np.mean(s2_times)) * (256 - len(firsts))
    dj = walls[1]
    print(f"[256] fit-survey in a fresh process: cold cache {walls[0]:.1f} s, warm cache {walls[1]:.1f} s "
          f"({n256} cutouts); scarlet2 {np.mean(s2_times):.2f} s per cutout (first of each source count "
          f"{', '.join(f'{x:.2f}' for x in s2_first)} s) -> {s2_total:.0f} s for 256; speedup {s2_total / dj:.1f}x")
    out.update(time_256_fresh_process_cold=walls[0], time_256_fresh_process_warm=walls[1],
               time_per_cutout_scarlet2=float(np.mean(s2_times)), time_256_scarlet2=s2_total,
               speedup_256_cutouts_cached=s2_total / dj)


if __name__ == "__main__":
    main()
