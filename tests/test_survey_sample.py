"""deconvjax.survey.SampleTask / `deconvjax sample-survey`: every cutout's posterior
samples, drawn with a key of its manifest row alone, so that the rows do not depend on
the shard size or the number of workers; reruns skip finished shards; bad input errors.

The sampling tests compile the E-step's sampler (tens of seconds on a loaded 2-core
machine): they are marked slow; the input checks run in the default suite."""

import dataclasses
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from deconvjax.survey import SampleTask, read_catalog, read_images_of, run_survey
from deconvjax.survey._cli_sample import sample_survey

N_CUT = 4
SEED = 5


def save_tiny_prior(path, seed=0):
    import jax.random as jr

    from deconvjax.diffusion import VESDE, ScorePrior, UNet, UNetDenoiser, save_prior

    net = UNet(bands=1, channels=(8, 16), num_res_blocks=1, emb_dim=16, key=jr.key(seed))
    save_prior(path, ScorePrior(UNetDenoiser(net, 0.5, 16), VESDE(1e-2, 20.0), 2.0))
    return path


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    """An untrained tiny 16x16 prior (the survey plumbing is under test, not the prior)."""
    root = tmp_path_factory.mktemp("sample_survey")
    save_tiny_prior(root / "prior.eqx")
    return root


@pytest.fixture(scope="module")
def files(prior_dir):
    """Four simulated 40x40 one-band cutouts of two galaxies, beside the tiny prior."""
    from deconvjax.cli import main

    res = CliRunner().invoke(main, ["simulate", "--n-fields", str(N_CUT), "--size", "40", "--n-sources", "2",
                                    "--bands", "r", "--star-fraction", "0", "--seed", "3", "--out",
                                    str(prior_dir / "sims"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return prior_dir


def task_of(files, **kw):
    from deconvjax.diffusion.samplers import DPMSolver2M

    return SampleTask(prior=str(files / "prior.eqx"), sampler=DPMSolver2M(steps=2), n_samples=3, **kw)


def by_cutout(table):
    order = np.lexsort((np.asarray(table["band"]), np.asarray(table["cutout_id"])))
    return table[order]


# ---------------------------------------------------------------------------------------
# Input checks (default suite)
# ---------------------------------------------------------------------------------------


def test_bad_settings_name_the_argument(tmp_path):
    from deconvjax.diffusion.samplers import DPMSolver2M

    with pytest.raises(ValueError, match="n_samples"):
        SampleTask(n_samples=0)
    with pytest.raises(ValueError, match="prior"):
        SampleTask(prior=str(tmp_path / "missing.eqx"))
    with pytest.raises(ValueError, match="sampler"):
        SampleTask(sampler="dpm2m")
    with pytest.raises(ValueError, match="model_psf_sigma"):
        SampleTask(model_psf_sigma=0.0)
    with pytest.raises(ValueError, match="n_spectrum_iters"):
        SampleTask(n_spectrum_iters=-1)
    assert SampleTask(sampler=DPMSolver2M(steps=3)).config()["sampler"] == repr(DPMSolver2M(steps=3))


def test_cli_rejects_bad_options(tmp_path):
    sims = str(tmp_path)
    runner = CliRunner()
    res = runner.invoke(sample_survey, [sims, "--out", str(tmp_path / "o"), "--n-samples", "0"])
    assert res.exit_code == 2 and "n-samples" in res.output
    res = runner.invoke(sample_survey, [sims, "--out", str(tmp_path / "o"), "--prior", str(tmp_path / "no.eqx")])
    assert res.exit_code == 2 and "prior" in res.output
    res = runner.invoke(sample_survey, [str(tmp_path), "--out", str(tmp_path / "o"), "--no-progress"])
    assert res.exit_code == 2 and "CUTOUTS" in res.output and "manifest.json" in res.output
    assert not (tmp_path / "o").exists()


def test_rerun_with_another_prior_is_refused(tmp_path):
    """The run's settings record the prior's checksum: sampling into the folder of a run
    with another prior would mix two posteriors in one catalog (refused before reading
    any cutout or loading the prior: neither file need be valid)."""
    from deconvjax.diffusion.samplers import DPMSolver2M
    from deconvjax.survey import SurveyError, write_manifest

    first, other = tmp_path / "first.eqx", tmp_path / "other.eqx"
    first.write_bytes(b"prior one")
    other.write_bytes(b"prior two")
    manifest = write_manifest(tmp_path / "m.parquet", {
        "cutout_id": ["a", "b"], "file": ["a.fits", "b.fits"], "y": [[5.0], [6.0]], "x": [[5.0], [6.0]],
        "ny": [40, 40], "nx": [40, 40]})
    out = tmp_path / "out"
    out.mkdir()
    # The record a run with the first prior leaves.
    (out / "survey.json").write_text(json.dumps({
        "manifest": str(manifest.resolve()), "n_cutouts": 2, "shard_size": 2, "seed": SEED,
        "task": SampleTask(prior=str(first), sampler=DPMSolver2M(steps=2), n_samples=3).config()}))
    with pytest.raises(SurveyError, match="task"):
        run_survey(manifest, out, SampleTask(prior=str(other), sampler=DPMSolver2M(steps=2), n_samples=3),
                   shard_size=2, seed=SEED, progress=False, cache_dir="off")
    assert not (out / "catalog").exists()


# ---------------------------------------------------------------------------------------
# Sampling (slow: compiles the sampler)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def in_process(files):
    """The survey sampled in this process with shards of 3 (two shards)."""
    out = files / "shards3"
    res = run_survey(files / "sims", out, task_of(files), shard_size=3, seed=SEED, progress=False, cache_dir="off")
    return out, res


@pytest.mark.slow  # ~1-3 min: compiles the sampler and the posterior
def test_rows_are_each_cutouts_estep_with_its_own_key(files, in_process):
    """Reference: `deconvjax.em.estep` on each cutout alone with ``fold_in(key(seed), row)``;
    its samples placed into the frame here by plain numpy (corners, spectra, flux scale)."""
    import jax.random as jr

    from deconvjax.diffusion import load_prior
    from deconvjax.diffusion.samplers import DPMSolver2M
    from deconvjax.em import Cutouts, estep
    from deconvjax.io import read_arrays
    from deconvjax.survey import read_manifest_rows

    out, res = in_process
    assert res["ran"] == 2
    cat = read_catalog(out)
    assert len(cat) == N_CUT  # one band: one row per cutout
    assert set(cat["n_samples"]) == {3} and set(cat["seed"]) == {SEED}
    assert set(cat["sampler"]) == {repr(DPMSolver2M(steps=2))}
    mean_img, std_img = read_images_of(out, cat)
    prior = load_prior(files / "prior.eqx")
    rows = read_manifest_rows(files / "sims" / "survey_manifest.parquet", 0, N_CUT)
    for i, row in enumerate(rows):
        assert cat["cutout_id"][i] == row["cutout_id"]  # manifest order
        data = read_arrays(files / "sims" / row["file"])
        cut = Cutouts.from_observations([data], centers=[np.stack([row["y"], row["x"]], 1)])
        # The cutout brought to the prior's typical brightness: its flux per source over the
        # shipped training reference's median flux (5.43 prior units).
        f = float(np.where(cut.mask, 0.0, cut.data).sum() / len(row["y"]) / (5.43 * prior.flux_scale))
        np.testing.assert_allclose(cat["flux_factor"][i], f, rtol=1e-6)
        cut = dataclasses.replace(cut, data=cut.data / f, weights=cut.weights * f**2)
        r = estep(jr.fold_in(jr.key(SEED), i), prior, cut, sampler=DPMSolver2M(steps=2), n_samples=3, chunk=1,
                  progress=False)
        x = np.asarray(r.samples[0], np.float64)  # (sample, source, 1, 16, 16)
        frames = np.zeros((3, 40, 40))
        for s in range(3):
            for k, (y0, x0) in enumerate(np.asarray(r.corners[0])):
                ys, xs = np.arange(y0, y0 + 16), np.arange(x0, x0 + 16)
                iy, ix = (ys >= 0) & (ys < 40), (xs >= 0) & (xs < 40)
                frames[s][np.ix_(ys[iy], xs[ix])] += f * prior.flux_scale * x[s, k, 0][np.ix_(iy, ix)]
        flux = frames.sum(axis=(1, 2))
        # Float32 rounding of samples in data units (the factor is ~1e4 here), batch against alone.
        tol = 1e-4 * np.abs(frames).max()
        np.testing.assert_allclose(mean_img[i], frames.mean(0), rtol=1e-3, atol=tol)
        np.testing.assert_allclose(std_img[i], frames.std(0, ddof=1), rtol=1e-3, atol=tol)
        np.testing.assert_allclose(cat["flux_mean"][i], flux.mean(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(cat["flux_std"][i], flux.std(ddof=1), rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(cat["chi2_per_pixel"][i], float(r.chi2_mean[0]), rtol=1e-4)
    assert np.all(np.asarray(cat["flux_std"]) > 0)


@pytest.mark.slow  # reuses the compiled sampler of this process: ~10-30 s
def test_other_shard_size_same_rows_and_rerun_skips(files, in_process):
    out3, _ = in_process
    out2 = files / "shards2"
    res = run_survey(files / "sims", out2, task_of(files), shard_size=2, seed=SEED, progress=False, cache_dir="off")
    assert res["ran"] == 2
    a, b = by_cutout(read_catalog(out3)), by_cutout(read_catalog(out2))
    for name in ("cutout_id", "band"):
        assert list(a[name]) == list(b[name])
    for name in ("flux_mean", "flux_std", "chi2_per_pixel"):
        # Other chunks (shard sizes 2 and 3): float rounding of the batched solves only.
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=1e-4, atol=1e-6, err_msg=name)
    img2, img3 = read_images_of(out2, b)[0], read_images_of(out3, a)[0]
    np.testing.assert_allclose(img2, img3, rtol=1e-3, atol=1e-4 * np.abs(img3).max())

    # A rerun does nothing; a shard whose images file is gone is run again, alone.
    again = run_survey(files / "sims", out2, task_of(files), shard_size=2, seed=SEED, progress=False,
                       cache_dir="off")
    assert again["ran"] == 0
    before = (out2 / "images" / "shard-000001.npz").read_bytes()
    (out2 / "images" / "shard-000001.npz").unlink()
    again = run_survey(files / "sims", out2, task_of(files), shard_size=2, seed=SEED, progress=False,
                       cache_dir="off")
    assert again["ran"] == 1
    with np.load(out2 / "images" / "shard-000001.npz") as z, np.load(io.BytesIO(before)) as z0:
        for k in z0.files:
            np.testing.assert_array_equal(z[k], z0[k])
    assert not list((out2 / "images").glob(".*"))  # no temporary files left


@pytest.mark.slow  # two worker processes compile the sampler: ~1-4 min
def test_two_workers_give_the_rows_of_one_process(files, in_process, tmp_path):
    out3, _ = in_process
    out = tmp_path / "dask"
    res = CliRunner().invoke(sample_survey, [
        str(files / "sims"), "--out", str(out), "--workers", "2", "--shard-size", "1", "--n-samples", "3",
        "--sampler", "dpm2m", "--sampler-steps", "2", "--prior", str(files / "prior.eqx"), "--seed", str(SEED),
        "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert f"{N_CUT} shard(s) run" in res.output
    pids = {r["pid"] for r in json.loads((out / "shards.json").read_text()).values()}
    assert len(pids) == 2  # both workers sampled
    a, b = by_cutout(read_catalog(out3)), by_cutout(read_catalog(out))
    assert list(a["cutout_id"]) == list(b["cutout_id"])
    for name in ("flux_mean", "flux_std", "chi2_per_pixel"):
        np.testing.assert_allclose(np.asarray(b[name]), np.asarray(a[name]), rtol=1e-4, atol=1e-5, err_msg=name)
    img, img3 = read_images_of(out, b)[0], read_images_of(out3, a)[0]
    np.testing.assert_allclose(img, img3, rtol=1e-3, atol=1e-4 * np.abs(img3).max())


def test_command_follows_the_cli_conventions():
    """What tests/test_cli_consistency.py checks of registered commands (sample-survey is
    registered in deconvjax/cli.py separately)."""
    import click

    opts = [p for p in sample_survey.params if isinstance(p, click.Option) and not p.hidden]
    assert all((p.help or "").strip() for p in opts)
    names = {o for p in opts for o in (*p.opts, *p.secondary_opts)}
    assert {"--progress", "--no-progress", "--sampler", "--sampler-steps", "--n-samples"} <= names
    assert not [n for n in names if n.startswith("--model-psf")] and "--steps" not in names
    assert sample_survey.get_short_help_str(limit=100).startswith("Posterior samples of every cutout")
