"""Running a task over a survey: shards, workers, the shard manifest and the catalog.

The manifest's cutouts are cut into shards of ``shard_size`` consecutive rows. Each shard
is one unit of work: a worker reads its rows (`read_manifest_rows`), its cutouts' files
(in a thread, group by group, while the task runs on the groups already read; the
groups in an order rotated by the shard index, `staggered_groups`, so that concurrent
workers compile different programs and share them through the persistent cache), groups
them into buckets, runs the task on each, lets the task write its other files
(`AbstractSurveyTask.write_products`: `SampleTask`'s images) and then writes one Parquet
file, ``OUT/catalog/shard-NNNNNN.parquet``, atomically (a temporary name starting with
``.`` that `pyarrow.dataset` skips, then a rename). The driver alone writes
``OUT/shards.json`` (each shard's status, rows, SHA-256s of its files and error), atomically after each
shard; ``OUT/survey.json`` records the run's settings. A rerun of the same command
skips the shards that are done (file present, checksum matching) and runs the rest; a
shard whose worker died is run again by Dask on another worker, and as its file appears
only whole, under one name per shard, no row is lost or written twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._atomic import atomic_write, atomic_write_bytes
from .manifest import SurveyInputError, load_cutout, manifest_length, manifest_path, read_manifest_rows
from .task import AbstractSurveyTask, Cutout, FitTask, default_threads, padded_count

CATALOG_DIR = "catalog"
SHARDS_FILE = "shards.json"
RUN_FILE = "survey.json"
#: The driver rewrites ``shards.json`` at most this often (and after a failure and at the end).
FLUSH_SECONDS = 5.0


class SurveyError(RuntimeError):
    """A survey run that could not finish: the shards that failed and why (the others'
    rows are written and kept)."""


def shard_file(out, index: int) -> Path:
    return Path(out) / CATALOG_DIR / f"shard-{index:06d}.parquet"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------

_WORKER: dict = {}


def _setup_worker(cache_dir: str | None) -> None:
    """Once per worker process, before its first compilation: the persistent compilation
    cache, and a listener summing the time spent compiling."""
    if _WORKER.get("ready"):
        return
    import jax

    from .._cache import enable_compilation_cache

    if cache_dir is not None:
        enable_compilation_cache(cache_dir)
    _WORKER.update(compile_s=0.0, trace_s=0.0, misses=0, ready=True)

    def listen_duration(event, duration, **kwargs):
        # XLA's compile (a persistent-cache hit loads the executable instead), and
        # tracing and lowering to MLIR, which a cache hit still pays (the cache key is
        # the lowered program).
        if event == "/jax/core/compile/backend_compile_duration":
            _WORKER["compile_s"] += float(duration)
        elif event in ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration"):
            _WORKER["trace_s"] += float(duration)

    def listen(event, **kwargs):
        if event == "/jax/compilation_cache/cache_misses":
            _WORKER["misses"] += 1

    jax.monitoring.register_event_duration_secs_listener(listen_duration)
    jax.monitoring.register_event_listener(listen)


def _group_key(row: dict) -> tuple:
    try:
        n = padded_count(len(row.get("y") or ()))
    except ValueError:
        n = None  # too many sources: the task says so when it buckets them
    return row.get("ny"), row.get("nx"), n


def read_groups(rows: list[dict]) -> list[list[tuple[int, dict]]]:
    """Rows ``(k, row)`` grouped by what the manifest says of their buckets (shape,
    padded source count), groups in order of their first row. Every bucket of a task that
    buckets by these (as `FitTask` and `SampleTask` do) lies within one group."""
    groups: dict = {}
    for k, row in enumerate(rows):
        groups.setdefault(_group_key(row), []).append((k, row))
    return list(groups.values())


def staggered_groups(rows: list[dict], index: int) -> list[list[tuple[int, dict]]]:
    """`read_groups` in the order shard ``index`` runs them: sorted by (shape, padded
    source count), then rotated by ``index``. Workers run consecutive shards at once;
    each then starts on a different bucket shape, so that one compiles its programs
    while the other compiles another's, and each finds the other's in the shared
    persistent cache when it gets there (in one order, both would compile the same
    programs at the same moment). The rotation goes backwards (shard 1 starts on the
    last group, then the first): two workers on groups ``a, b, c`` then run
    ``a, b, c`` and ``c, a, b``, so the second reaches each of ``a`` and ``b`` after
    the first has compiled it, and the first reaches ``c`` after the second has (a
    forward rotation, ``b, c, a``, would have both reach ``c`` together). The order does
    not change the rows: each bucket's cutouts and batches are the same, and the
    shard's rows are written in manifest order."""
    groups = read_groups(rows)

    def sort_key(group):
        # None (no shape in the manifest, too many sources) after every number.
        return tuple((v is None, v if v is not None else 0) for v in _group_key(group[0][1]))

    groups.sort(key=sort_key)
    r = -int(index) % len(groups) if groups else 0
    return groups[r:] + groups[:r]


def run_shard(index: int, start: int, stop: int, manifest: str, out: str, task: AbstractSurveyTask, seed: int,
              cache_dir: str | None) -> dict:
    """Run ``task`` on manifest rows ``start`` to ``stop`` (shard ``index``) and write
    their rows to the shard's Parquet file, atomically. Returns the shard's record
    (rows, cutouts, SHA-256, seconds; seconds in XLA's compiler, seconds tracing and
    lowering, persistent-cache misses, summed over threads). Runs on a worker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    _setup_worker(cache_dir)
    c0, t0_trace, m0 = _WORKER["compile_s"], _WORKER["trace_s"], _WORKER["misses"]
    root = Path(manifest).parent
    rows = read_manifest_rows(manifest, start, stop)
    cutouts, tables, read_s = [], [], [0.0]

    def read(group):
        t = time.perf_counter()
        out = []
        for k, row in group:
            data, positions = load_cutout(row, root)
            out.append(Cutout(str(row["cutout_id"]), start + k, data, positions))
        read_s[0] += time.perf_counter() - t
        return out

    # Reading overlaps fitting: a thread reads the cutouts group by group (groups that
    # the manifest alone tells apart: shape and padded source count, so that no bucket
    # spans two of them) while this thread runs the task on the groups already read
    # (XLA releases the GIL while it computes).
    with ThreadPoolExecutor(1, thread_name_prefix="survey-read") as pool:
        futures = [pool.submit(read, g) for g in staggered_groups(rows, index)]
        try:
            for fut in futures:
                group = fut.result()
                cutouts += group
                for bucket in task.buckets(group):
                    tables.append(task.run_bucket(bucket, seed))
        finally:
            for fut in futures:
                fut.cancel()
    table = pa.concat_tables(tables)
    # Manifest order within the shard: the same file whatever the bucketing (a stable
    # sort: a cutout's rows keep the order its task gave them).
    order = {c.cutout_id: c.index for c in cutouts}
    keys = np.array([order[c] for c in table.column("cutout_id").to_pylist()], np.int64)
    second = (table.column("source").to_numpy() if "source" in table.column_names
              else np.arange(table.num_rows))
    perm = np.lexsort((second, keys))
    table = table.take(pa.array(perm))
    # The task's other files first: the Parquet file, which marks the shard done, is
    # written only once they are all in place.
    table, products = task.write_products(table, Path(out), index)
    path = shard_file(out, index)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return {
        "status": "done", "file": str(path.relative_to(out)), "rows": table.num_rows, "cutouts": len(cutouts),
        "products": {str(f): sha256(Path(out) / f) for f in products},
        "start": start, "stop": stop, "sha256": sha256(path), "seconds": time.perf_counter() - t0,
        "read_seconds": read_s[0],
        "compile_seconds": _WORKER["compile_s"] - c0, "trace_seconds": _WORKER["trace_s"] - t0_trace,
        "cache_misses": _WORKER["misses"] - m0, "pid": os.getpid(),
    }


# ---------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


def choose_model_psf(manifest, n: int | None = None) -> float:
    """The survey's model PSF sigma (arcsec): the widest Gaussian the first cutouts' PSFs
    can all be matched to (`deconvjax.psf.matching.model_psf_for`), narrowed by 20% so
    that later cutouts with somewhat sharper PSFs can be matched to it too."""
    from ..psf import ArrayPSF
    from ..psf.matching import model_psf_for

    manifest = Path(manifest)
    n = manifest_length(manifest) if n is None else n
    sigmas = []
    for row in read_manifest_rows(manifest, 0, min(n, 16)):
        data, _ = load_cutout(row, manifest.parent)
        ps = 1.0 if data.pixel_scale is None else data.pixel_scale
        psf = ArrayPSF(data.psf_images, pixel_scale=data.psf_pixel_scale or ps, center=data.psf_center)
        sigmas.append(float(np.min(model_psf_for(psf, ps).sigma)))
    return 0.8 * min(sigmas)


def _done(record: dict | None, out: Path) -> bool:
    if not record or record.get("status") != "done":
        return False
    path = out / record["file"]
    if not (path.exists() and sha256(path) == record.get("sha256")):
        return False
    return all((out / f).exists() and sha256(out / f) == h for f, h in record.get("products", {}).items())


def _cluster(workers: int, threads: int):
    """A LocalCluster of ``workers`` processes, each one long-lived JAX process started
    by spawn (never forked from a process that runs JAX), one Dask thread each (a
    shard's fit uses ``threads`` host threads of its own)."""
    import dask
    from distributed import LocalCluster

    env = {"OMP_NUM_THREADS": str(threads)}
    if threads == 1:
        # Eigen's own thread pool (convolutions, matmuls) would use every core.
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    for k in ("JAX_PLATFORMS", "PYTHONPATH", "DECONVJAX_CACHE_DIR", "JAX_ENABLE_X64"):
        if k in os.environ:
            env[k] = os.environ[k]
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, env=env,
                            dashboard_address=None, silence_logs=40)


def _pin(cpus):
    """Restrict this worker process to ``cpus``: XLA:CPU sizes its thread pools by the
    cores a process may use, so workers on disjoint cores do not fight over them."""
    try:
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: the workers share the cores


def _pin_workers(client, threads: int) -> None:
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return
    for k, address in enumerate(sorted(client.scheduler_info()["workers"])):
        cpus = cores[(k * threads) % len(cores):][:threads] or cores[:threads]
        client.run(_pin, cpus, workers=[address])


def run_survey(
    cutouts,
    out,
    task: AbstractSurveyTask | None = None,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    shard_size: int = 256,
    seed: int = 0,
    cache_dir=None,
    progress: bool = True,
    connect_timeout: float = 10.0,
) -> dict:
    """Run ``task`` (default `FitTask`) over every cutout of a survey, shard by shard.

    **Arguments:**

    - `cutouts`: a manifest (Parquet, see `deconvjax.survey.manifest`) or a folder with
      one (a `deconvjax simulate` folder gets one built).
    - `out`: output folder: ``catalog/`` (one Parquet file per shard), ``shards.json``,
      ``survey.json``.
    - `workers`: Dask workers of a `LocalCluster` started here (0 and no `scheduler`:
      run the shards in this process, one after another).
    - `scheduler`: address of a running Dask scheduler (``tcp://host:8786``); its
      workers must be able to import deconvjax and read the cutouts and ``out``.
    - `shard_size`: cutouts per shard (a rerun must use the same).
    - `seed`: recorded in every row (and the key of sampling tasks).
    - `cache_dir`: JAX's persistent compilation cache, a folder every worker can reach
      (default `deconvjax._cache.default_cache_dir`; ``"off"``: none); workers use its
      subfolder for their node type (`deconvjax._cache.node_cache_dir`).

    **Returns:** a dict: ``shards`` (``{shard index: record}``), ``settings``, ``ran``
    (shards run now), ``wall_seconds`` and ``startup_seconds`` (of it, starting a
    local cluster).

    **Raises:** `SurveyInputError` for a bad manifest, `SurveyError` when shards failed
    (rows of the others are kept: rerun to retry the failed ones), `OSError` for a
    scheduler that cannot be reached (nothing written).
    """
    from tqdm.auto import tqdm

    from .._cache import default_cache_dir

    task = FitTask() if task is None else task
    if not isinstance(task, AbstractSurveyTask):
        raise TypeError(f"task must be an AbstractSurveyTask, got {type(task).__name__}")
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size}")
    if int(workers) < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    manifest = manifest_path(cutouts).resolve()
    n = manifest_length(manifest)
    if n == 0:
        raise SurveyInputError(f"cutouts: the manifest {manifest} lists no cutout")
    if cache_dir is None:
        cache = default_cache_dir()
    else:
        cache = None if str(cache_dir).strip().lower() in ("", "off", "none", "0") else Path(cache_dir)
    out = Path(out).resolve()

    client = cluster = None
    if scheduler is not None:
        from distributed import Client

        try:
            client = Client(scheduler, timeout=connect_timeout)
        except (OSError, TimeoutError) as err:
            raise OSError(f"scheduler: cannot reach the Dask scheduler at {scheduler!r} ({err})") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
        previous = _load_json(out / RUN_FILE)
        if isinstance(task, FitTask) and task.model_psf_sigma is None:
            sigma = previous.get("task", {}).get("model_psf_sigma") or choose_model_psf(manifest, n)
            task = _replace(task, model_psf_sigma=float(sigma))
        if isinstance(task, FitTask) and task.bands is None:
            bands = previous.get("task", {}).get("bands") or list(
                load_cutout(read_manifest_rows(manifest, 0, 1)[0], manifest.parent)[0].bands)
            task = _replace(task, bands=tuple(bands))
        settings = {"manifest": str(manifest), "n_cutouts": n, "shard_size": int(shard_size), "seed": int(seed),
                    "task": task.config()}
        if previous:
            changed = [k for k in settings if previous.get(k) != settings[k]]
            if changed:
                raise SurveyError(
                    f"out: {out} holds a run with other settings ({', '.join(changed)}: "
                    f"{ {k: previous.get(k) for k in changed} }); use another --out or the same settings"
                )
        else:
            _write_json(out / RUN_FILE, settings)
        records = _load_json(out / SHARDS_FILE)
        n_shards = -(-n // int(shard_size))
        specs = [(i, i * int(shard_size), min((i + 1) * int(shard_size), n)) for i in range(n_shards)]
        todo = [s for s in specs if not _done(records.get(str(s[0])), out)]
        # The worker appends its own node type (`node_cache_dir`): workers of a cluster
        # with several kinds of node share the folder but never each other's entries.
        node_cache = None if cache is None else str(cache)
        failures = []
        t0 = t_work = time.perf_counter()
        with tqdm(total=n_shards, initial=n_shards - len(todo), desc="shards", unit="shard",
                  disable=not progress) as bar:

            last = [time.monotonic()]

            def record(index, rec):
                records[str(index)] = rec
                bar.update(1)
                # Rewritten at most every few seconds (it grows with the survey): a driver
                # that dies loses only the records of the last seconds, whose shards a
                # rerun runs again (their files are replaced whole).
                if rec["status"] != "done" or time.monotonic() - last[0] > FLUSH_SECONDS:
                    _write_json(out / SHARDS_FILE, records)
                    last[0] = time.monotonic()

            try:
                if client is None and workers == 0:
                    for index, start, stop in todo:
                        try:
                            rec = _run_shard_on_worker(index, start, stop, str(manifest), str(out), task, seed,
                                                       node_cache)
                        except SurveyInputError as err:
                            rec = {"status": "failed", "error": str(err), "start": start, "stop": stop}
                            failures.append((index, str(err)))
                        record(index, rec)
                else:
                    from distributed import as_completed

                    if client is None:
                        threads = getattr(task, "threads", None) or default_threads(workers)
                        if isinstance(task, FitTask) and task.threads is None:
                            task = _replace(task, threads=threads)
                        cluster = _cluster(workers, threads)
                        from distributed import Client

                        client = Client(cluster)
                        _pin_workers(client, threads)
                    t_work = time.perf_counter()
                    futures = {}
                    for index, start, stop in todo:
                        fut = client.submit(_run_shard_on_worker, index, start, stop, str(manifest), str(out), task, seed,
                                            node_cache, key=f"survey-shard-{index}-{os.getpid()}-{time.time_ns()}",
                                            pure=False, retries=0)
                        futures[fut] = (index, start, stop)
                    for fut in as_completed(futures):
                        index, start, stop = futures[fut]
                        try:
                            rec = fut.result()
                        except SurveyInputError as err:
                            rec = {"status": "failed", "error": str(err), "start": start, "stop": stop}
                            failures.append((index, str(err)))
                        except Exception as err:  # a worker that died too often (KilledWorker), ...
                            msg = f"{type(err).__name__}: {err}"
                            rec = {"status": "failed", "error": msg, "start": start, "stop": stop}
                            failures.append((index, msg))
                        record(index, rec)
            finally:
                _write_json(out / SHARDS_FILE, records)
        wall, startup = time.perf_counter() - t0, t_work - t0
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    if failures:
        lines = "; ".join(f"shard {i}: {m}" for i, m in failures[:5])
        raise SurveyError(f"{len(failures)} of {n_shards} shards failed (their rows are not written; the other "
                          f"shards' are kept, rerun to retry): {lines}")
    return {"shards": records, "settings": settings, "wall_seconds": wall, "startup_seconds": startup,
            "ran": len(todo)}


def _run_shard_on_worker(index, start, stop, manifest, out, task, seed, cache):
    from .._cache import node_cache_dir

    return run_shard(index, start, stop, manifest, out, task, seed,
                     None if cache is None else str(node_cache_dir(cache)))


def _replace(module, **changes):
    import dataclasses

    return dataclasses.replace(module, **changes)


def catalog_dataset(out):
    """The survey's catalog as one `pyarrow.dataset.Dataset` (every finished shard)."""
    import pyarrow.dataset as ds

    folder = Path(out) / CATALOG_DIR
    if not folder.is_dir():
        raise ValueError(f"out: {out} has no {CATALOG_DIR}/ folder; is it a survey output?")
    return ds.dataset(str(folder), format="parquet")


def read_catalog(out):
    """The survey's catalog as one astropy Table, with the flux units of the Parquet
    schema."""
    from astropy.table import Table

    table = catalog_dataset(out).to_table()
    t = Table(table.to_pydict())
    for field in table.schema:
        unit = (field.metadata or {}).get(b"unit")
        if unit:
            try:
                t[field.name].unit = unit.decode()
            except ValueError:
                pass  # a unit astropy does not know: leave the column bare
    return t


def catalog_quality(out, chi2_limit: float = 2.0) -> dict:
    """The cutouts of a survey's catalog whose answer should not be trusted as it stands.

    A posterior or a fit whose residuals are far above the noise (chi2 per pixel well
    above 1) describes data its model cannot: a star under a galaxy prior, an artefact, a
    blend missing a source, a noise level that is wrong. Such rows are written like the
    others; this lists them so that nobody reads their fluxes as measurements.

    **Arguments:**

    - `out`: the survey's output folder.
    - `chi2_limit`: a cutout is listed when its ``chi2_per_pixel`` exceeds it (a
      residual variance of ``chi2_limit - 1`` times the noise's beyond the noise itself).

    **Returns:** a dict with ``n_cutouts`` (distinct cutout ids in the catalog) and the sorted
    cutout ids of each problem: ``high_chi2`` (``chi2_per_pixel > chi2_limit`` or not
    finite), ``failed`` and ``not_converged`` (fits only; empty lists for tasks without
    those columns).
    """
    if not (np.isfinite(chi2_limit) and chi2_limit > 0):
        raise ValueError(f"chi2_limit: expected a positive number, got {chi2_limit!r}")
    dataset = catalog_dataset(out)
    names = set(dataset.schema.names)
    if "cutout_id" not in names or "chi2_per_pixel" not in names:
        raise ValueError(f"out: the catalog of {out} has no cutout_id/chi2_per_pixel columns; is it a survey output?")
    # Only the columns judged: a sample-survey catalog also holds every cutout's images.
    table = dataset.to_table(columns=[c for c in ("cutout_id", "chi2_per_pixel", "failed", "converged")
                                      if c in names])
    ids = np.asarray(table.column("cutout_id").to_pylist(), dtype=object)
    chi2 = table.column("chi2_per_pixel").to_numpy(zero_copy_only=False).astype(np.float64)

    def ids_where(flag) -> list[str]:
        return sorted({str(i) for i in ids[np.asarray(flag, bool)]})

    report = {"n_cutouts": len(set(ids.tolist())), "chi2_limit": float(chi2_limit),
              "high_chi2": ids_where(~(chi2 <= chi2_limit)), "failed": [], "not_converged": []}
    if "failed" in names:
        report["failed"] = ids_where(table.column("failed").to_numpy(zero_copy_only=False))
    if "converged" in names:
        report["not_converged"] = ids_where(~table.column("converged").to_numpy(zero_copy_only=False).astype(bool))
    return report
