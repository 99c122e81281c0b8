"""What a survey worker compiles: few programs per shard, staggered bucket orders, and
batch padding that is shaped but never fitted."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from deconvjax.survey.run import read_groups, staggered_groups
from deconvjax.survey.task import SOURCE_BUCKETS, padded_count


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """Four simulated 40x40 two-band cutouts of two galaxies, and a manifest listing only
    the first source of every other one: two source buckets of two cutouts each."""
    from deconvjax.cli import main
    from deconvjax.survey import build_manifest, choose_model_psf, read_manifest_rows, write_manifest

    root = tmp_path_factory.mktemp("survey_compile")
    folder = root / "sims"
    res = CliRunner().invoke(main, ["simulate", "--n-fields", "4", "--size", "40", "--n-sources", "2", "--bands",
                                    "g,r", "--star-fraction", "0", "--seed", "5", "--out", str(folder),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_manifest_rows(build_manifest(folder), 0, 4)
    cols = {k: [r[k] for r in rows] for k in ("cutout_id", "file", "y", "x", "ny", "nx")}
    for k in (1, 3):
        cols["y"][k], cols["x"][k] = cols["y"][k][:1], cols["x"][k][:1]
    manifest = write_manifest(folder / "two_buckets.parquet", cols)
    return {"root": root, "folder": folder, "manifest": manifest, "cols": cols,
            "sigma": choose_model_psf(manifest)}


def _keys(groups):
    return [padded_count(len(g[0][1]["y"])) if len(g[0][1]["y"]) <= max(SOURCE_BUCKETS) else None for g in groups]


def test_staggered_groups_sort_then_rotate_back():
    """Groups sorted by (shape, padded source count), rotated back by the shard index:
    consecutive shards start on different groups, and every row is run once."""
    counts = (3, 1, 2, 1, 4, max(SOURCE_BUCKETS) + 1, 2)
    rows = [{"ny": 32, "nx": 32, "y": [0.0] * n} for n in counts]
    canonical = [1, 2, 4, None]  # padded counts; too many sources last
    plain = sorted(sorted(k for k, _ in g) for g in read_groups(rows))
    for index in range(6):
        groups = staggered_groups(rows, index)
        r = -index % len(canonical)
        assert _keys(groups) == canonical[r:] + canonical[:r], index
        assert sorted(sorted(k for k, _ in g) for g in groups) == plain
    assert _keys(staggered_groups(rows, 0))[0] != _keys(staggered_groups(rows, 1))[0]
    # Shapes sort before source counts; rows keep their order within a group.
    rows = [{"ny": 48, "nx": 48, "y": [0.0]}, {"ny": 32, "nx": 32, "y": [0.0, 0.0]}, {"ny": 32, "nx": 32, "y": [0.0]},
            {"ny": 32, "nx": 32, "y": [1.0]}]
    assert [[k for k, _ in g] for g in staggered_groups(rows, 0)] == [[2, 3], [1], [0]]
    assert staggered_groups([], 3) == []


def test_fit_mask_fits_only_the_masked_cutouts(sims):
    """Reference: the same cutouts fitted without padding (each cutout's fit is its own),
    against a batch padded with copies that ``fit_mask`` leaves out: the same scenes and
    iteration counts; the padding is not stepped."""
    from deconvjax.fit import AdamSolver, fit_batch, init_batch, stack
    from deconvjax.frame import Frame
    from deconvjax.io import read_arrays
    from deconvjax.psf import GaussianPSF

    cols = sims["cols"]
    idx = [0, 2]  # the two-source cutouts
    data = [read_arrays(sims["folder"] / cols["file"][i]) for i in idx]
    frame = Frame(data[0].bands, data[0].shape, pixel_scale=data[0].pixel_scale, psf=GaussianPSF(sims["sigma"]))
    obs = [d.to_observation(frame) for d in data]
    pos = [np.stack([cols["y"][i], cols["x"][i]], 1) for i in idx]
    kw = dict(max_iter=15, progress=False, workers=1, slots=2)

    scenes, mask = init_batch(frame, obs, pos, n_max=2, stamp_size=11)
    ref, ref_res = fit_batch(scenes, stack(obs), AdamSolver(), source_mask=mask, **kw)

    pad = [0, 1, 1, 1]
    scenes_p, mask_p = init_batch(frame, [obs[i] for i in pad], [pos[i] for i in pad], n_max=2, stamp_size=11)
    with pytest.raises(ValueError, match="fit_mask must be"):
        fit_batch(scenes_p, stack([obs[i] for i in pad]), AdamSolver(), source_mask=mask_p,
                  fit_mask=np.ones(3, bool), **kw)
    fit_mask = np.array([True, True, False, False])
    got, res = fit_batch(scenes_p, stack([obs[i] for i in pad]), AdamSolver(), source_mask=mask_p,
                         fit_mask=fit_mask, **kw)
    for name in ("center", "spectrum"):
        a = np.asarray(getattr(ref.groups[0], name))
        b = np.asarray(getattr(got.groups[0], name))
        np.testing.assert_allclose(b[:2], a, rtol=1e-5, atol=1e-6, err_msg=name)
        # The padding comes back as initialised (through the solver's parametrisation).
        np.testing.assert_allclose(b[2:], np.asarray(getattr(scenes_p.groups[0], name))[2:], rtol=1e-5,
                                   err_msg=name)
    np.testing.assert_array_equal(res.iterations[:2], ref_res.iterations)
    assert (ref_res.iterations > 0).all()
    np.testing.assert_array_equal(res.iterations[2:], 0)
    assert not res.converged[2:].any()


COUNT = textwrap.dedent(
    """
    import json, sys
    import jax
    compiles = [0]
    def listen(event, duration, **kw):
        compiles[0] += event == "/jax/core/compile/backend_compile_duration"
    jax.monitoring.register_event_duration_secs_listener(listen)
    from deconvjax.survey import FitTask, run_survey
    a = json.loads(sys.argv[1])
    task = FitTask(max_iter=15, stamp_size=11, batch=a["batch"], min_batch=a["batch"], slots=2, threads=1,
                   model_psf_sigma=a["sigma"], bands=("g", "r"))
    run_survey(a["manifest"], a["out"], task, shard_size=64, cache_dir="off", progress=False)
    print("RESULT", json.dumps({"compiles": compiles[0]}))
    """
)


@pytest.mark.slow  # ~15-20 s: a fresh process compiling two bucket shapes' programs
def test_shard_of_two_buckets_compiles_few_programs(sims):
    """A fresh process fitting one shard of two source buckets of two cutouts, each in
    one batch padded to three: XLA compilations counted by JAX's own monitoring events.
    Per bucket shape: the fit's start, its loop, its outputs and the catalog's
    measurements (4); besides, a few conversions that building observations and
    sources compile once per process. Before: 6 programs per bucket shape and one per
    array shape moved to the device (35 in all here)."""
    args = {"manifest": str(sims["manifest"]), "out": str(sims["root"] / "count"), "sigma": sims["sigma"],
            "batch": 3}
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", COUNT, json.dumps(args)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    compiles = json.loads(out.stdout.split("RESULT")[-1])["compiles"]
    assert 8 <= compiles <= 4 * 2 + 6, compiles
