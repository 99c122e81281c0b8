"""EM laps end to end on tiny cutouts: a Gaussian start, one network lap and a resumed
second lap that ends byte for byte where an uninterrupted run does; a run killed with
SIGKILL mid-lap resumes to the same bytes; a run with other settings is refused."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deconvjax.diffusion.train import TrainConfig
from deconvjax.em import Cutouts, EMConfig, run_em
from deconvjax.em.run import source_buckets
from deconvjax.em.start import is_gaussian_prior, load_gaussian_prior

N, SIZE = 12, 8
TRAIN = TrainConfig(image_size=SIZE, bands=1, channels=(8,), emb_dim=8, batch_size=8, steps=6,
                    steps_per_call=3, checkpoint_every=3, warmup_steps=2)
# One M-step round: these tests check other things; test_mstep_rounds_until_faithful the rounds.
CONFIG = EMConfig(laps=1, chunk=8, n_samples=1, train=TRAIN, sampler_steps=4, gaussian_laps=4,
                  n_prior_samples=4, mstep_rounds=1, seed=3)


def make_cutouts(seed: int = 0) -> Cutouts:
    """Gaussian galaxies of random size and ellipticity through a per-cutout Gaussian PSF."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] - SIZE // 2
    data, psfs = [], []
    for _ in range(N):
        s, e = rng.uniform(0.8, 1.6), rng.uniform(-0.3, 0.3)
        g = np.exp(-0.5 * (yy**2 / (s * (1 + e)) ** 2 + xx**2 / (s * (1 - e)) ** 2))
        p = rng.uniform(0.6, 1.0)
        k = np.exp(-0.5 * ((yy[2:-1, 2:-1]) ** 2 + (xx[2:-1, 2:-1]) ** 2) / p**2)
        img = np.real(np.fft.ifft2(np.fft.fft2(g) * np.fft.fft2(np.fft.ifftshift(np.pad(k / k.sum(), 2)[:SIZE, :SIZE]))))
        data.append(rng.uniform(20, 40) * img / img.sum() + rng.normal(0, 0.1, img.shape))
        psfs.append(k / k.sum())
    return Cutouts.from_arrays(np.asarray(data)[:, None], np.asarray(psfs)[:, None], rms=0.1)


def test_laps_resume_byte_for_byte(tmp_path):
    cutouts = make_cutouts()
    one = run_em(cutouts, tmp_path / "a", CONFIG, progress=False)
    assert is_gaussian_prior(load_gaussian_prior(tmp_path / "a" / "lap_000" / "gaussian.eqx"))
    assert len(one.history) == 1
    rec = one.history[0]
    assert 0.3 < rec["estep_chi2_per_pixel"] < 3.0  # exact posterior samples of the Gaussian start
    assert (tmp_path / "a" / "lap_001" / "prior_samples.png").exists()
    assert (tmp_path / "a" / "diagnostics.png").exists()
    # The M-step's fidelity to its training samples is logged, with a warning when off.
    assert np.isfinite(rec["mstep_flux_ratio"]) and np.isfinite(rec["mstep_statistics_distance"])
    assert ("mstep_warning" in rec) == (not 1 / 1.5 <= rec["mstep_flux_ratio"] <= 1.5)
    log = [json.loads(line) for line in (tmp_path / "a" / "em.log.jsonl").read_text().splitlines()]
    assert [r["lap"] for r in log] == [1]
    # Grow the same run to two laps (the second warm-started from the first network)...
    two = run_em(cutouts, tmp_path / "a", EMConfig(**{**CONFIG.__dict__, "laps": 2}), progress=False)
    assert [r["lap"] for r in two.history] == [1, 2] and "change_hlr_median" in two.history[1]
    # ... and compare with an uninterrupted two-lap run.
    run_em(cutouts, tmp_path / "b", EMConfig(**{**CONFIG.__dict__, "laps": 2}), progress=False)
    for name in ("lap_001/prior.eqx", "lap_002/prior.eqx", "lap_002/samples_00001.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # Other settings in the same folder are refused, naming the argument.
    with pytest.raises(ValueError, match="out"):
        run_em(cutouts, tmp_path / "a", EMConfig(**{**CONFIG.__dict__, "chunk": 4}), progress=False)


_CHILD = """
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, {tests!r})
from test_em_run import CONFIG, make_cutouts
from deconvjax.em import EMConfig, run_em
run_em(make_cutouts(), {out!r}, EMConfig(**{{**CONFIG.__dict__, "laps": 2}}), progress=False)
"""


@pytest.mark.slow
def test_sigkill_mid_lap_resumes_to_the_same_bytes(tmp_path):
    tests = str(Path(__file__).parent)
    run_em(make_cutouts(), tmp_path / "ref", EMConfig(**{**CONFIG.__dict__, "laps": 2}), progress=False)
    code = _CHILD.format(tests=tests, out=str(tmp_path / "killed"))
    child = subprocess.Popen([sys.executable, "-c", code])
    target = tmp_path / "killed" / "lap_002" / "samples_00000.npz"
    t0 = time.time()
    while not target.exists() and child.poll() is None and time.time() - t0 < 600:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in ("lap_001/prior.eqx", "lap_002/prior.eqx"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


def test_cli_runs_and_resumes_on_fits_cutouts(tmp_path):
    from click.testing import CliRunner

    from deconvjax.cli import main
    from deconvjax.io import write_observation

    cut = make_cutouts(1)
    paths = []
    for i in range(len(cut)):
        p = tmp_path / f"cutout_{i:02d}.fits"
        write_observation(p, images=cut.data[i], psf_images=cut.psf[i], bands=("i",), variance=1.0 / cut.weights[i])
        paths.append(str(p))
    args = ["em", *paths, "--out", str(tmp_path / "run"), "--laps", "1", "--steps-per-lap", "4",
            "--chunk", "8", "--sampler-steps", "4", "--channels", "8", "--mstep-rounds", "1", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "E-step chi2/pixel" in result.output
    prior_path = tmp_path / "run" / "lap_001" / "prior.eqx"
    first = prior_path.read_bytes()
    again = CliRunner().invoke(main, args)  # finished: resumes to the same prior, trains nothing
    assert again.exit_code == 0 and prior_path.read_bytes() == first
    # The prior it writes is a ScorePrior the rest of the package loads.
    from deconvjax.diffusion import load_prior

    assert load_prior(prior_path).shape == (1, SIZE, SIZE)
    # Bad input names the argument.
    bad = CliRunner().invoke(main, ["em", paths[0], "--out", str(tmp_path / "x"), "--channels", "a,b"])
    assert bad.exit_code != 0 and "--channels" in bad.output


_COMPILES = [0]


def _listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


@pytest.mark.slow
def test_blends_from_a_network_start_and_no_recompilation_between_laps(tmp_path):
    """Blends (two galaxies in a 16x16 cutout, 8x8 prior stamps; a third of the cutouts
    hold one galaxy) from a tiny network, lap by lap: the one-galaxy cutouts are sampled
    with one slot, and a later lap compiles nothing."""
    import jax

    from deconvjax.diffusion.train import train_prior

    rng = np.random.default_rng(5)
    start = train_prior(rng.normal(0, 1, (16, 1, SIZE, SIZE)).astype(np.float32) + 2.0, tmp_path / "start.eqx",
                        TRAIN, progress=False, flux_scale=5.0)
    yy, xx = np.mgrid[:16, :16]
    data, centres = [], []
    for i in range(N):
        c = [(rng.uniform(4, 7), rng.uniform(4, 7)), (rng.uniform(9, 12), rng.uniform(9, 12))][:1 if i % 3 == 0 else 2]
        img = sum(rng.uniform(10, 20) * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 1.2**2) for y, x in c)
        data.append(img + rng.normal(0, 0.1, img.shape))
        centres.append(np.asarray(c))
    psf = np.exp(-0.5 * (np.mgrid[:5, :5] - 2.0) ** 2 / 0.7**2).prod(axis=0)
    cutouts = Cutouts.from_arrays(np.asarray(data)[:, None], np.broadcast_to(psf / psf.sum(), (N, 1, 5, 5)),
                                  rms=0.1, centers=centres)
    run_em(cutouts, tmp_path / "run", CONFIG, start=start, progress=False)
    two = run_em(cutouts, tmp_path / "run", EMConfig(**{**CONFIG.__dict__, "laps": 2}), start=start,
                 progress=False)
    assert [r["lap"] for r in two.history] == [1, 2]
    assert source_buckets(cutouts)[0][0] == 1 and len(source_buckets(cutouts)[0][1]) == N // 3
    assert two.history[1]["n_training_images"] == 2 * N - N // 3  # every source of every cutout
    assert len(list((tmp_path / "run" / "lap_002").glob("samples_s1_*.npz"))) == 1
    # A third lap (the run resumed: its earlier priors are read back, as the second call
    # read the first's) compiles nothing: E-step chunks, M-step and diagnostics reuse the
    # programs of the laps before.
    jax.monitoring.register_event_duration_secs_listener(_listener)
    before = _COMPILES[0]
    run_em(cutouts, tmp_path / "run", EMConfig(**{**CONFIG.__dict__, "laps": 3}), start=start, progress=False)
    assert _COMPILES[0] == before, _COMPILES[0] - before


def test_training_shape_must_match_the_prior(tmp_path):
    bad = EMConfig(**{**CONFIG.__dict__, "train": TrainConfig(**{**TRAIN.__dict__, "image_size": 16})})
    with pytest.raises(ValueError, match="config"):
        run_em(make_cutouts(), tmp_path / "bad", bad, progress=False)
    with pytest.raises(TypeError, match="cutouts"):
        run_em("cutouts", tmp_path / "bad2", CONFIG, progress=False)


def test_mstep_fidelity_flags_a_network_off_its_training_images():
    """Samples 4x brighter than the training images (what an undertrained M-step gave in
    the EM benchmark) are flagged; the training images themselves are not."""
    from deconvjax.em.diagnostics import morphology_statistics, mstep_fidelity

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:16, :16] - 7.5
    images = np.stack([f * np.exp(-0.5 * (yy**2 + xx**2) / s**2)[None]
                       for f, s in zip(rng.lognormal(3, 0.5, 64), rng.uniform(1.5, 3.0, 64))])
    train = morphology_statistics(images)
    same = mstep_fidelity(morphology_statistics(images), train)
    assert same["mstep_flux_ratio"] == pytest.approx(1.0) and same["mstep_statistics_distance"] < 1e-9
    assert "mstep_warning" not in same
    bright = mstep_fidelity(morphology_statistics(4.0 * images), train)
    assert bright["mstep_flux_ratio"] == pytest.approx(4.0)
    assert bright["mstep_statistics_distance"] > 0.5 and "4.00 times" in bright["mstep_warning"]
    assert "mstep_warning" in mstep_fidelity(morphology_statistics(0.5 * images), train)
    with pytest.raises(ValueError, match="tolerance"):
        mstep_fidelity(train, train, tolerance=1.0)


def test_mstep_rounds_until_faithful(tmp_path):
    """A 6-step network does not reproduce its training images: the lap trains further
    rounds, each warm-started from the last, up to ``mstep_rounds``; the lap's prior is the
    last round's; a rerun replays the same rounds to the same bytes; the warning, still
    due, names the rounds."""
    from deconvjax.diffusion import load_prior

    config = EMConfig(**{**CONFIG.__dict__, "mstep_rounds": 2})
    with pytest.warns(RuntimeWarning, match="after 2 M-step rounds"):
        run = run_em(make_cutouts(), tmp_path / "a", config, progress=False)
    rec = run.history[0]
    assert rec["mstep_rounds"] == 2 and "mstep_warning" in rec
    lap = tmp_path / "a" / "lap_001"
    assert (lap / "prior.eqx").read_bytes() == (lap / "prior_round1.eqx").read_bytes()
    assert dict(load_prior(lap / "prior.eqx").info)["mstep_round"] == "1"
    # A lap interrupted after its M-step replays the same decisions: forget the lap's end
    # and rerun.
    state = json.loads((tmp_path / "a" / "em_state.json").read_text())
    state.update({"laps_done": 0, "chunks_done": 1, "history": []})
    (tmp_path / "a" / "em_state.json").write_text(json.dumps(state))
    final = (lap / "prior.eqx").read_bytes()
    with pytest.warns(RuntimeWarning):
        again = run_em(make_cutouts(), tmp_path / "a", config, progress=False)
    assert again.history[0]["mstep_rounds"] == 2 and (lap / "prior.eqx").read_bytes() == final


def test_shape_statistics_follow_the_galaxy_not_faint_noise():
    """The weighted ellipticity of an elongated Gaussian (sigmas 3 and 1.5 px) equals the
    analytic one (the product with the weight is a Gaussian of variances 1/(1/s^2 +
    1/w^2)), and stays there under per-pixel noise of 5% of the peak that makes the
    positive part of the whole stamp round; a centred symmetric image has no asymmetry."""
    from deconvjax.em.diagnostics import SHAPE_WEIGHT_SIGMA, morphology_statistics

    yy, xx = np.mgrid[:33, :33] - 16.0
    a, b, w2 = 3.0, 1.5, SHAPE_WEIGHT_SIGMA**2
    galaxy = np.exp(-0.5 * (yy**2 / a**2 + xx**2 / b**2))
    qa, qb = 1 / (1 / a**2 + 1 / w2), 1 / (1 / b**2 + 1 / w2)
    expected = (qa - qb) / (qa + qb)
    clean = morphology_statistics(galaxy[None, None])
    assert clean["ellipticity"][0] == pytest.approx(expected, abs=2e-3)
    assert clean["asymmetry"][0] == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = morphology_statistics(galaxy[None, None] + rng.normal(0.0, 0.05, (200, 1, 33, 33)))
    assert np.median(noisy["ellipticity"]) == pytest.approx(expected, abs=0.02)
    # What the unweighted moments of the positive part (the statistic before) made of it.
    pos = np.clip(galaxy + rng.normal(0.0, 0.05, (200, 33, 33)), 0, None)
    qy = (pos * yy**2).sum((1, 2)) / pos.sum((1, 2))
    qx = (pos * xx**2).sum((1, 2)) / pos.sum((1, 2))
    assert np.median((qy - qx) / (qy + qx)) < 0.5 * expected


def test_estep_fidelity_flags_samples_that_miss_their_data():
    from deconvjax.em.diagnostics import ESTEP_CHI2_TOLERANCE, estep_fidelity

    good = estep_fidelity(np.full(50, 1.004))
    assert good["estep_chi2_per_pixel"] == pytest.approx(1.004) and "estep_warning" not in good
    bad = estep_fidelity(np.r_[np.full(49, 1.09), np.nan])
    assert bad["estep_chi2_per_pixel"] == pytest.approx(1.09)
    assert f"1.090 > {ESTEP_CHI2_TOLERANCE}" in bad["estep_warning"] and "--sampler-steps" in bad["estep_warning"]
    with pytest.raises(ValueError, match="tolerance"):
        estep_fidelity(np.ones(3), tolerance=0.9)
