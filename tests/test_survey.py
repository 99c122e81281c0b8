"""deconvjax.survey: shards on Dask give the rows `fit_batch` gives in one process, once
each, through worker deaths, reruns, several devices and a warm compilation cache."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deconvjax.survey import (
    AbstractSurveyTask,
    FitTask,
    SurveyError,
    SurveyInputError,
    build_manifest,
    catalog_dataset,
    choose_model_psf,
    read_catalog,
    read_manifest_rows,
    run_survey,
    write_manifest,
)

N_CUT = 6
SETTINGS = dict(max_iter=15, stamp_size=11, batch=2)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    """Six simulated 40x40 two-band cutouts of two galaxies; the manifest lists only the
    first source of every other cutout, so that the survey has two source buckets."""
    from deconvjax.cli import main

    root = tmp_path_factory.mktemp("survey")
    sims = root / "sims"
    res = CliRunner().invoke(main, ["simulate", "--n-fields", str(N_CUT), "--size", "40", "--n-sources", "2",
                                    "--bands", "g,r", "--star-fraction", "0", "--seed", "3", "--out", str(sims),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_manifest_rows(build_manifest(sims), 0, N_CUT)
    cols = {k: [r[k] for r in rows] for k in ("cutout_id", "file", "y", "x", "ny", "nx")}
    for k in range(1, N_CUT, 2):
        cols["y"][k], cols["x"][k] = cols["y"][k][:1], cols["x"][k][:1]
    manifest = write_manifest(sims / "two_buckets.parquet", cols)
    # The two-source cutouts alone: one bucket, one program to compile per process.
    one = write_manifest(sims / "one_bucket.parquet", {k: v[::2] for k, v in cols.items()})
    sigma = choose_model_psf(manifest)
    return {"root": root, "sims": sims, "manifest": manifest, "one_bucket": one, "cols": cols,
            "task": FitTask(model_psf_sigma=sigma, bands=("g", "r"), **SETTINGS)}


def fit_batch_rows(survey):
    """The reference: every bucket fitted by one `fit_batch` call in this process (all
    its cutouts in one batch), measured with `deconvjax.fit` directly."""
    from deconvjax.fit import AdamSolver, Constraints, fit_batch, init_batch, stack, unstack
    from deconvjax.fit.measure import source_centers, source_fluxes
    from deconvjax.frame import Frame
    from deconvjax.io import read_arrays
    from deconvjax.psf import GaussianPSF

    cols, task = survey["cols"], survey["task"]
    out = {}
    for n_src in (1, 2):
        idx = [i for i in range(N_CUT) if len(cols["y"][i]) == n_src]
        data = [read_arrays(survey["sims"] / cols["file"][i]) for i in idx]
        frame = Frame(data[0].bands, data[0].shape, pixel_scale=data[0].pixel_scale,
                      psf=GaussianPSF(task.model_psf_sigma))
        obs = [d.to_observation(frame) for d in data]
        pos = [np.stack([cols["y"][i], cols["x"][i]], 1) for i in idx]
        scenes, mask = init_batch(frame, obs, pos, n_max=n_src, stamp_size=task.stamp_size)
        fitted, result = fit_batch(scenes, stack(obs), AdamSolver(rtol=task.rtol), source_mask=mask,
                                   max_iter=task.max_iter, progress=False, constraints=Constraints())
        for k, (i, scene) in enumerate(zip(idx, unstack(fitted, len(idx)))):
            out[cols["cutout_id"][i]] = (source_fluxes(scene), source_centers(scene), int(result.iterations[k]))
    return out


def check_rows(table, reference):
    """Every cutout once, its sources 0..n-1 once each, with `fit_batch`'s fluxes and
    centres (to float32 rounding) and iterations."""
    ids = list(table["cutout_id"])
    assert sorted(set(ids)) == sorted(reference)
    for cid, (flux, centers, iterations) in reference.items():
        rows = table[np.asarray(table["cutout_id"]) == cid]
        assert list(rows["source"]) == list(range(len(flux))), cid
        got = np.stack([np.asarray(rows["flux_g"]), np.asarray(rows["flux_r"])], 1)
        np.testing.assert_allclose(got, flux, rtol=2e-4, err_msg=cid)
        np.testing.assert_allclose(np.stack([rows["y"], rows["x"]], 1), centers, atol=1e-3, err_msg=cid)
        assert set(rows["iterations"]) == {iterations}, cid
        assert np.all(np.asarray(rows["flux_err_g"]) > 0)
        assert np.all(np.isfinite(np.asarray(rows["ra"])))


class KillOnce(AbstractSurveyTask):
    """`FitTask`, except that the first shard to get here kills its worker process, after
    reading its cutouts and before writing anything."""

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


def test_local_cluster_with_a_killed_worker_gives_fit_batch_rows_once(survey):
    import cloudpickle

    # The workers cannot import this test module: send KillOnce by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = survey["root"] / "cluster"
    marker = survey["root"] / "killed"
    task = KillOnce(survey["task"], str(marker))
    result = run_survey(survey["manifest"], out, task, workers=2, shard_size=2, cache_dir="off", progress=False)
    assert marker.exists()  # a worker did die mid-shard
    assert result["ran"] == 3 and all(r["status"] == "done" for r in result["shards"].values())
    assert len({r["pid"] for r in result["shards"].values()} - {int(marker.read_text())}) >= 1
    table = read_catalog(out)
    assert len(table) == sum(len(y) for y in survey["cols"]["y"])
    assert len(set(zip(table["cutout_id"], table["source"]))) == len(table)  # no row twice
    check_rows(table, fit_batch_rows(survey))
    assert catalog_dataset(out).count_rows() == len(table)
    # One file per shard, no temporary left behind by the dead worker.
    assert sorted(f.name for f in (out / "catalog").iterdir()) == [f"shard-{i:06d}.parquet" for i in range(3)]


def test_rerun_does_only_what_is_missing(survey):
    out = survey["root"] / "rerun"
    first = run_survey(survey["manifest"], out, survey["task"], shard_size=2, cache_dir="off", progress=False)
    assert first["ran"] == 3
    files = sorted((out / "catalog").glob("*.parquet"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = run_survey(survey["manifest"], out, survey["task"], shard_size=2, cache_dir="off", progress=False)
    assert again["ran"] == 0
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    # A partial run: one shard's output lost (a worker that died before its write).
    files[1].unlink()
    third = run_survey(survey["manifest"], out, survey["task"], shard_size=2, cache_dir="off", progress=False)
    assert third["ran"] == 1
    assert files[0].stat().st_mtime_ns == stamps[files[0]] and files[2].stat().st_mtime_ns == stamps[files[2]]
    table = read_catalog(out)
    assert len(table) == sum(len(y) for y in survey["cols"]["y"])
    # Another shard size into the same folder: refused, nothing touched.
    with pytest.raises(SurveyError, match="shard_size"):
        run_survey(survey["manifest"], out, survey["task"], shard_size=3, cache_dir="off", progress=False)
    assert len(read_catalog(out)) == len(table)


def test_missing_file_fails_its_shard_only_and_a_rerun_finishes(survey):
    out = survey["root"] / "missing"
    victim = survey["sims"] / survey["cols"]["file"][5]
    hidden = victim.with_suffix(".hidden")
    shutil.move(victim, hidden)
    try:
        with pytest.raises(SurveyError, match=f"{survey['cols']['cutout_id'][5]}.*does not exist"):
            run_survey(survey["manifest"], out, survey["task"], shard_size=2, cache_dir="off", progress=False)
    finally:
        shutil.move(hidden, victim)
    records = json.loads((out / "shards.json").read_text())
    assert [records[str(i)]["status"] for i in range(3)] == ["done", "done", "failed"]
    # Shards 0 and 1 kept: cutouts 0-3, of 2, 1, 2, 1 sources.
    assert sorted(set(read_catalog(out)["cutout_id"])) == sorted(survey["cols"]["cutout_id"][:4])
    assert len(read_catalog(out)) == 6
    again = run_survey(survey["manifest"], out, survey["task"], shard_size=2, cache_dir="off", progress=False)
    assert again["ran"] == 1
    assert sorted(set(read_catalog(out)["cutout_id"])) == sorted(survey["cols"]["cutout_id"])


def test_shape_disagreeing_with_manifest_is_named(survey, tmp_path):
    cols = dict(survey["cols"])
    cols["ny"] = [40, 40, 40, 41, 40, 40]
    bad = write_manifest(survey["sims"] / "bad_shape.parquet", cols)
    with pytest.raises(SurveyError, match=r"field_00003.*\(41, 40\)"):
        run_survey(bad, tmp_path / "out", survey["task"], shard_size=6, cache_dir="off", progress=False)
    assert not list((tmp_path / "out").glob("catalog/*.parquet"))


def test_bad_manifest_and_unreachable_scheduler(survey, tmp_path):
    with pytest.raises(SurveyInputError, match="missing"):
        write_manifest(tmp_path / "m.parquet", {"cutout_id": ["a"], "y": [[1.0]], "x": [[1.0]]})
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(SurveyInputError, match="Parquet"):
        run_survey(tmp_path / "junk.parquet", tmp_path / "o", survey["task"], cache_dir="off")
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "survey.json").write_text("{}")
    with pytest.raises(OSError, match="scheduler.*tcp://127.0.0.1:1"):
        run_survey(survey["manifest"], keep, survey["task"], scheduler="tcp://127.0.0.1:1", connect_timeout=1,
                   cache_dir="off", progress=False)
    assert [p.name for p in keep.iterdir()] == ["survey.json"] and (keep / "survey.json").read_text() == "{}"
    from deconvjax.cli import main

    res = CliRunner().invoke(main, ["fit-survey", str(tmp_path / "junk.parquet"), "--out", str(keep),
                                    "--no-progress", "--cache-dir", "off"])
    assert res.exit_code == 2 and "CUTOUTS" in res.output and "not a readable Parquet" in res.output


SUBPROCESS = textwrap.dedent(
    """
    import json, sys
    import jax
    misses = [0]
    jax.monitoring.register_event_listener(
        lambda event, **kw: misses.__setitem__(0, misses[0] + (event == "/jax/compilation_cache/cache_misses")))
    from deconvjax.survey import FitTask, read_catalog, run_survey
    args = json.loads(sys.argv[1])
    for out, shard in args["runs"]:
        task = FitTask(shard=shard, **args["task"])
        run_survey(args["manifest"], out, task, shard_size=args["shard_size"], cache_dir=args["cache"],
                   progress=False)
    print("RESULT", json.dumps({"misses": misses[0], "devices": len(jax.devices())}))
    """
)


def _subprocess(args, env_extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_extra)
    out = subprocess.run([sys.executable, "-c", SUBPROCESS, json.dumps(args)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT")[-1])


def _task_args(survey):
    t = survey["task"]
    return {"model_psf_sigma": t.model_psf_sigma, "bands": ["g", "r"], **SETTINGS}


@pytest.mark.slow  # ~20-35 s: a subprocess compiling the fit twice
def test_sharded_over_two_devices_equals_unsharded(survey):
    root = survey["root"]
    args = {"manifest": str(survey["one_bucket"]), "shard_size": 3, "cache": "off", "task": _task_args(survey),
            "runs": [[str(root / "one_device"), False], [str(root / "two_devices"), True]]}
    res = _subprocess(args, {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert res["devices"] == 2
    a, b = read_catalog(root / "one_device"), read_catalog(root / "two_devices")
    assert list(a["cutout_id"]) == list(b["cutout_id"]) and list(a["source"]) == list(b["source"])
    for name in ("flux_g", "flux_r", "y", "x"):
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=2e-4, atol=1e-4, err_msg=name)
    assert list(a["iterations"]) == list(b["iterations"])


def test_second_process_with_warm_cache_compiles_nothing(survey):
    root, cache = survey["root"], survey["root"] / "jaxcache"
    counts = []
    for run in range(2):
        args = {"manifest": str(survey["one_bucket"]), "shard_size": 3, "cache": str(cache),
                "task": _task_args(survey), "runs": [[str(root / f"warm{run}"), False]]}
        counts.append(_subprocess(args, {})["misses"])
    assert counts[0] > 0
    assert counts[1] == 0, counts
    # The entries sit in this node type's subfolder of the shared folder.
    (sub,) = list(cache.iterdir())
    assert sub.name.startswith("cpu-") and any(sub.iterdir())


def test_catalog_quality_lists_untrustworthy_cutouts(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deconvjax.survey import catalog_quality

    (tmp_path / "catalog").mkdir()
    # Two rows per cutout (two sources): a cutout is listed once.
    pq.write_table(pa.table({"cutout_id": ["a", "a", "b", "b", "c", "d"],
                             "chi2_per_pixel": [1.05, 1.05, 25.0, 25.0, float("nan"), 1.9],
                             "failed": [False, False, False, False, True, False],
                             "converged": [True, True, True, True, False, False]}),
                   tmp_path / "catalog" / "shard-000000.parquet")
    q = catalog_quality(tmp_path)
    assert q["n_cutouts"] == 4 and q["high_chi2"] == ["b", "c"]
    assert q["failed"] == ["c"] and q["not_converged"] == ["c", "d"]
    assert catalog_quality(tmp_path, chi2_limit=1.5)["high_chi2"] == ["b", "c", "d"]
    with pytest.raises(ValueError, match="chi2_limit"):
        catalog_quality(tmp_path, chi2_limit=0.0)
    with pytest.raises(ValueError, match="survey output"):
        catalog_quality(tmp_path / "nothing")


def test_command_report_warns_about_high_chi2_cutouts(survey, tmp_path, capsys):
    from deconvjax.survey._cli import run_and_report

    out = tmp_path / "q"
    run_survey(survey["one_bucket"], out, survey["task"], shard_size=2, cache_dir="off", progress=False)
    cat = read_catalog(out)
    chi2 = {i: c for i, c in zip(cat["cutout_id"], cat["chi2_per_pixel"])}
    limit = float(np.median(list(chi2.values())))
    capsys.readouterr()
    run_and_report(survey["one_bucket"], out, survey["task"], chi2_warn=limit, shard_size=2, cache_dir="off",
                   progress=False)  # a rerun: no work, only the report
    captured = capsys.readouterr()
    above = sorted(i for i, c in chi2.items() if c > limit)
    assert "0 shard(s) run" in captured.out
    assert above and f"{len(above)} of {len(chi2)} cutouts: chi2 per pixel above" in captured.err
    assert all(i in captured.err for i in above)
    assert not any(i in captured.err.split("chi2 per pixel above")[1].split("\n")[0] for i in chi2 if i not in above)
