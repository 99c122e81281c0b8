"""Batched fits, saving and loading, and the `fit` command on FITS files."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

import deconvjax.sims as sims
from deconvjax import PixelMorphology, PointMorphology, Scene, SersicMorphology, Source
from deconvjax.fit import (
    AdamSolver,
    fit,
    fit_batch,
    init_batch,
    load_scene,
    save_scene,
    source_fluxes,
    stack,
    unstack,
)
from deconvjax.fit._cli import fit_command
from deconvjax.fit.batch import batch_compilation_count
from deconvjax.fit.measure import source_kinds
from deconvjax.io import write_field


@pytest.fixture(scope="module")
def fields():
    return list(sims.simulate_fields("lsst", 4, seed=7, shape=(40, 40), n_sources=2, bands=("g", "r"), progress=False))


def test_batched_fit_equals_individual_fits(fields):
    frame = fields[0].frame()
    obs = [f.to_observation(frame) for f in fields]
    # Cutouts with 1 and 2 sources, padded to 2, and a masked corner in one of them.
    pos = [np.stack([f.truth["y"], f.truth["x"]], 1)[: 1 + i % 2] for i, f in enumerate(fields)]
    fields[2].mask[:, :6, :6] = True
    obs[2] = fields[2].to_observation(frame)
    assert float(obs[2].n_valid) == 2 * (40 * 40 - 36)
    scenes, mask = init_batch(frame, obs, pos, n_max=2, stamp_size=21)
    assert mask.tolist() == [[True, False], [True, True], [True, False], [True, True]]
    # One worker of 8 slots for 4 cutouts: the one vmapped loop.
    fitted, result = fit_batch(scenes, stack(obs), AdamSolver(rtol=1e-3), source_mask=mask, max_iter=60, progress=False, workers=1)
    singles = unstack(scenes, len(fields))
    for i in range(len(fields)):
        one, r1 = fit(singles[i], obs[i], AdamSolver(rtol=1e-3), source_mask=mask[i], max_iter=60, progress=False)
        assert r1.iterations == result.iterations[i]
        a = np.asarray(one.render())
        b = np.asarray(unstack(fitted, len(fields))[i].render())
        # float32 rounding differs between the vmapped and the single program, and a fit
        # still descending after 60 steps amplifies it: cutout 0 (not converged at 60)
        # differs by up to 1.7e-3 of the peak, on 0.4% of its pixels beyond 3e-4, with
        # JAX 0.10 on CPU (2.7e-4 with the hand-written update before `AdamSolver`'s optax
        # chain); the converged cutouts by 2e-6. A logic error would differ by O(1), and
        # the iteration counts above agree exactly.
        np.testing.assert_allclose(b, a, atol=2.5e-3 * np.abs(a).max())
        assert np.mean(np.abs(b - a) > 3e-4 * np.abs(a).max()) < 0.01
        if result.converged[i]:
            np.testing.assert_allclose(b, a, atol=1e-4 * np.abs(a).max())
        np.testing.assert_allclose(result.chi2_per_pixel[i], r1.chi2_per_pixel, rtol=1e-4)
        np.testing.assert_allclose(result.chi2_per_dof[i], r1.chi2_per_dof, rtol=1e-3)
        # Padding sources keep zero flux.
        flux = source_fluxes(unstack(fitted, len(fields))[i])
        assert np.all(flux[~mask[i]] == 0)
    # Continuous batching fits every cutout exactly as the one vmapped loop does: one pool
    # of 2 slots refilled every 7 steps, the host touched every 9; two pools of 2 slots
    # in two threads; three pools of one slot, over queues of 2, 1 and 1 cutouts.
    for workers, slots in ((1, 2), (2, 2), (3, 8)):
        pooled, pres = fit_batch(
            scenes, stack(obs), AdamSolver(rtol=1e-3), source_mask=mask, max_iter=60, progress=False, slots=slots, refill=7,
            chunk=9, workers=workers,
        )
        np.testing.assert_array_equal(pres.iterations, result.iterations)
        np.testing.assert_array_equal(pres.converged, result.converged)
        # (1e-4 apart on cutout 0 with JAX 0.10 on CPU: float32 rounding of the different
        # programs, amplified by a fit still descending at 60 steps)
        np.testing.assert_allclose(pres.chi2_per_pixel, result.chi2_per_pixel, rtol=5e-4)
        # The effective parameter count sums every stamp pixel's signal-to-noise, faint
        # pixels included, which agree to an absolute tolerance only.
        np.testing.assert_allclose(pres.chi2_per_dof, result.chi2_per_dof, rtol=1e-3)
        for a, b in zip(jax.tree.leaves(pooled), jax.tree.leaves(fitted)):
            # Same steps, same decisions (iterations and convergence above are exact); the
            # values agree to float32 rounding amplified by the slowest fit (7.7e-4 on
            # cutout 0's spectrum with JAX 0.10 on CPU).
            atol = 1e-5 * float(np.abs(np.asarray(b)).max())
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=atol)
    count = batch_compilation_count()
    # New data of the same shapes: no recompilation.
    fit_batch(scenes, stack(obs[::-1]), source_mask=mask[::-1], max_iter=10, progress=False, workers=1)
    fit_batch(scenes, stack(obs[::-1]), source_mask=mask[::-1], max_iter=10, progress=False, slots=2, refill=7, chunk=9,
              workers=2)
    assert batch_compilation_count() == count
    with pytest.raises(ValueError, match="workers"):
        fit_batch(scenes, stack(obs), source_mask=mask, max_iter=5, progress=False, workers=0)


def test_save_load_round_trip(fields, tmp_path):
    f = fields[1]
    frame = f.frame()
    pos = np.stack([f.truth["y"], f.truth["x"]], 1)
    rng = np.random.default_rng(0)
    scene = Scene(frame, [
        Source([10.0, 20.0], PointMorphology(shape=(11, 11)), pos[0]),
        Source([5.0, 7.0], PixelMorphology(rng.uniform(0, 1, (15, 15))), pos[1]),
        Source([3.0, 1.0], SersicMorphology(2.0, 3.0, 0.1, 0.2, shape=(15, 15)), pos[1] + 2),
    ])
    save_scene(tmp_path / "s", scene, frame)
    back, frame2, meta = load_scene(tmp_path / "s.json")
    assert frame2.bands == frame.bands and frame2.shape == frame.shape
    np.testing.assert_allclose(frame2.wcs.wcs.crval, frame.wcs.wcs.crval)
    assert back.order == scene.order
    for a, b in zip(jax.tree.leaves(scene), jax.tree.leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert source_kinds(back) == ["point", "pixel", "sersic"]
    with pytest.raises(ValueError, match="path"):
        load_scene(tmp_path / "missing")
    # One file, in the checkpoint format the priors use: a truncated copy is named as such.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.eqx"]
    raw = (tmp_path / "s.eqx").read_bytes()
    (tmp_path / "cut.eqx").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_scene(tmp_path / "cut")
    # A scene written before the one-file format (leaves + JSON beside them) still loads.
    import json

    import equinox as eqx

    eqx.tree_serialise_leaves(tmp_path / "old.eqx", scene.groups)
    (tmp_path / "old.json").write_text(json.dumps(meta))
    old, _, _ = load_scene(tmp_path / "old.eqx")
    for a, b in zip(jax.tree.leaves(scene), jax.tree.leaves(old)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_fit_on_fits_files(fields, tmp_path):
    f = fields[0]
    # One image per band with its own header, PSFs and variance maps as separate files.
    header = f.wcs.to_header()
    paths = {}
    for k, b in enumerate(f.bands):
        for name, arr in (("img", f.images[k]), ("psf", f.psf_images[k]), ("var", f.variance[k])):
            p = tmp_path / f"{name}_{b}.fits"
            h = header.copy() if name != "psf" else fits.Header()
            h["FILTER"] = b
            fits.PrimaryHDU(arr, header=h).writeto(p)
            paths[name, b] = p
    cat = Table({"ra": np.asarray(f.truth["ra"]), "dec": np.asarray(f.truth["dec"])})
    cat.write(tmp_path / "cat.ecsv")
    out = tmp_path / "out"
    args = [str(paths["img", b]) for b in f.bands]
    for b in f.bands:
        args += ["--psf", str(paths["psf", b])]
    for b in f.bands:
        args += ["--variance", str(paths["var", b])]
    args += ["--catalog", str(tmp_path / "cat.ecsv"), "--out", str(out), "--max-iter", "40", "--no-progress"]
    res = CliRunner().invoke(fit_command, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for name in ("model.fits", "residual.fits", "sources.fits", "catalog.ecsv", "results.fits", "panel.png", "scene.eqx"):
        assert (out / name).exists(), name
    table = Table.read(out / "catalog.ecsv")
    assert len(table) == len(f.truth)
    # Fitted centres land on the catalog's sky positions (same WCS both ways).
    np.testing.assert_allclose(table["y"], f.truth["y"], atol=1.0)
    truth_total = sum(np.sum(f.truth[f"flux_{b}"]) for b in f.bands)
    fitted_total = sum(np.sum(table[f"flux_{b}"]) for b in f.bands)
    assert abs(fitted_total / truth_total - 1) < 0.2
    with fits.open(out / "sources.fits") as h:
        assert h[0].data.shape == (len(f.truth), 2, 40, 40)
    # A deconvjax observation file is read whole, without --psf.
    write_field(tmp_path / "field.fits", f)
    res = CliRunner().invoke(fit_command, [str(tmp_path / "field.fits"), "--catalog", str(tmp_path / "cat.ecsv"), "--out", str(tmp_path / "o2"), "--max-iter", "5", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # Bad input is named.
    res = CliRunner().invoke(fit_command, [str(paths["img", "g"]), "--out", str(tmp_path / "o3")])
    assert res.exit_code != 0 and "--psf" in res.output
