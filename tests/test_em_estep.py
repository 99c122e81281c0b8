"""The batched E-step: every cutout sampled under its own forward model.

Prior: an analytic Gaussian over 8x8 images (`GaussianDenoiser`, VE SDE). Cutouts with
different PSFs, noise levels and masks; each cutout's exact posterior is computed densely
(float64) from that cutout's own operator alone, and the batched samples must match it,
and equal `deconvolve` / `deblend` run on the cutout alone with the same key.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deconvjax.diffusion import GaussianDenoiser  # noqa: E402
from deconvjax.diffusion.samplers import DPMSolver2M  # noqa: E402
from deconvjax.diffusion.sde import VESDE  # noqa: E402
from deconvjax.em.cutouts import Cutouts  # noqa: E402
from deconvjax.em.estep import cutout_key, cutout_observation, estep  # noqa: E402
from deconvjax.posterior.deblend import deblend  # noqa: E402
from deconvjax.posterior.deconvolve import deconvolve  # noqa: E402

N = 8
SDE = VESDE(1e-3, 100.0)
N_CUT = 6
NOISE = np.array([0.05, 0.1, 0.2, 0.3, 0.5, 0.08])
PSF_SIGMA = np.array([0.7, 1.0, 1.3, 0.8, 1.6, 1.1])


def _cov(n=N, ell=1.5):
    yy, xx = np.mgrid[:n, :n]
    d2 = (yy.ravel()[:, None] - yy.ravel()) ** 2 + (xx.ravel()[:, None] - xx.ravel()) ** 2
    return np.exp(-d2 / (2 * ell**2)) + 1e-3 * np.eye(n * n)


def _gpsf(s, k=5, nb=1):
    y, x = np.mgrid[:k, :k] - k // 2
    p = np.exp(-(y**2 + x**2) / (2 * s**2))
    return np.repeat((p / p.sum())[None], nb, 0)


@pytest.fixture(scope="module")
def problem():
    cov = _cov()
    prior = GaussianDenoiser(np.zeros((1, N, N)), cov)
    rng = np.random.default_rng(1)
    psf = np.stack([_gpsf(s) for s in PSF_SIGMA])
    truth = np.linalg.cholesky(cov) @ rng.normal(size=(N * N, N_CUT))
    mask = np.zeros((N_CUT, 1, N, N), bool)
    mask[2, 0, 2:4, 3:6] = True  # a masked patch in one cutout
    clean = Cutouts.from_arrays(np.zeros((N_CUT, 1, N, N)), psf, rms=NOISE)
    data = np.stack([np.asarray(cutout_observation(clean, i)(jnp.asarray(truth[:, i].reshape(1, N, N),
                                                                           jnp.float32)))
                     for i in range(N_CUT)])
    data = data + NOISE[:, None, None, None] * rng.normal(size=data.shape)
    data[2, 0, 2, 3] = np.nan  # non-finite inside the mask: allowed
    cut = Cutouts.from_arrays(data, psf, rms=NOISE, mask=mask)
    return prior, cov, cut


def _exact(cov, cut, i):
    """Dense float64 posterior of cutout i from its own operator alone."""
    o = cutout_observation(cut, i)
    n = N * N
    eye = jnp.eye(n, dtype=jnp.float32).reshape(n, 1, N, N)
    a = np.asarray(jax.vmap(o)(eye).reshape(n, -1), np.float64).T
    w = cut.weights[i].ravel()
    y = cut.data[i].ravel()
    prec = np.linalg.inv(cov) + a.T @ (w[:, None] * a)
    post_cov = np.linalg.inv(prec)
    return post_cov @ (a.T @ (w * y)), post_cov


def test_samples_match_each_cutouts_exact_posterior(problem):
    prior, cov, cut = problem
    ns = 96
    r = estep(jr.key(0), prior, cut, sde=SDE, sampler=DPMSolver2M(steps=48), n_samples=ns,
              chunk=4, progress=False)
    assert r.samples.shape == (N_CUT, ns, 1, 1, N, N)
    ratios = []
    for i in range(N_CUT):
        mu, pc = _exact(cov, cut, i)
        s = np.asarray(r.samples[i, :, 0, 0], np.float64).reshape(ns, -1)
        sd = np.sqrt(np.diag(pc))
        z = (s.mean(0) - mu) / (sd / np.sqrt(ns))
        assert np.abs(z).max() < 5.0, (i, np.abs(z).max())
        ratio = np.mean(s.var(0, ddof=1) / sd**2)
        assert 0.8 < ratio < 1.25, (i, ratio)
        ratios.append(ratio)
        # Not some other cutout's posterior: the means differ by many standard errors.
        j = (i + 1) % N_CUT
        mu_j, _ = _exact(cov, cut, j)
        assert np.abs((s.mean(0) - mu_j) / (sd / np.sqrt(ns))).max() > 8.0
    assert np.all(np.isfinite(r.chi2_per_pixel)) and r.chi2_mean.shape == (N_CUT,)
    # Chi2 per pixel of calibrated samples is O(1).
    assert 0.2 < float(np.median(r.chi2_per_pixel)) < 3.0


def test_batched_equals_deconvolve_per_cutout_and_no_recompilation(problem):
    prior, _, cut = problem
    sampler = DPMSolver2M(steps=8)
    key = jr.key(3)
    r = estep(key, prior, cut, sde=SDE, sampler=sampler, n_samples=3, chunk=4, progress=False)
    # 6 cutouts in chunks of 4: the padded second chunk compiles nothing.
    assert r.timings["n_chunks"] == 2
    assert r.timings["compiles"][1:] == (0,), r.timings["compiles"]
    for i in range(N_CUT):
        ref = deconvolve(cutout_key(key, i, 4), prior, [cutout_observation(cut, i)], sde=SDE,
                         sampler=sampler, n_samples=3)
        np.testing.assert_allclose(np.asarray(r.samples[i, :, 0]), np.asarray(ref.samples),
                                   rtol=1e-3, atol=2e-4)
        np.testing.assert_allclose(np.asarray(r.chi2_per_pixel[i]),
                                   np.asarray(ref.chi2_per_pixel), rtol=2e-3)
    # The same key reproduces the samples exactly (chunk keys are fold_in(key, chunk)).
    again = estep(key, prior, cut, sde=SDE, sampler=sampler, n_samples=3, chunk=4,
                  progress=False)
    np.testing.assert_array_equal(np.asarray(again.samples), np.asarray(r.samples))


def test_per_cutout_keys_make_samples_independent_of_the_batch(problem):
    """With ``keys``, a cutout sampled among others (any chunk size, any position) gets the
    samples of a call on that cutout alone with its key: what lets a survey shard its
    cutouts freely."""
    prior, _, cut = problem
    sampler = DPMSolver2M(steps=4)
    keys = jnp.stack([jr.fold_in(jr.key(11), 100 + i) for i in range(N_CUT)])
    r = estep(jr.key(5), prior, cut, sde=SDE, sampler=sampler, n_samples=2, chunk=4, keys=keys,
              progress=False)
    for i in (0, 3, 5):  # first chunk, first chunk's last, the padded second chunk
        alone = estep(keys[i], prior, cut.select(np.array([i])), sde=SDE, sampler=sampler, n_samples=2,
                      chunk=1, progress=False)
        np.testing.assert_allclose(np.asarray(r.samples[i]), np.asarray(alone.samples[0]), rtol=1e-4, atol=1e-5)
    # Another run key changes nothing for a deterministic sampler; a key per cutout is required.
    r2 = estep(jr.key(6), prior, cut, sde=SDE, sampler=sampler, n_samples=2, chunk=3, keys=keys, progress=False)
    np.testing.assert_allclose(np.asarray(r2.samples), np.asarray(r.samples), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="keys: expected one PRNG key per cutout"):
        estep(jr.key(0), prior, cut, sde=SDE, sampler=sampler, keys=keys[:2], progress=False)


def _blend_cutouts(nb=1, spectra=None, noise=0.05, seed=2):
    size = 16
    rng = np.random.default_rng(seed)
    centers = [np.array([[5.2, 6.0], [10.0, 9.7]]), np.array([[8.0, 8.0]]),
               np.array([[4.0, 11.0], [11.0, 4.3]])]
    yy, xx = np.mgrid[:size, :size]
    data = np.zeros((3, nb, size, size))
    for i, cs in enumerate(centers):
        for k, (cy, cx) in enumerate(cs):
            blob = 3.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.2**2))
            sp = np.ones(nb) if spectra is None else spectra[k]
            data[i] += sp[:, None, None] * blob
    data += noise * rng.normal(size=data.shape)
    psf = np.stack([_gpsf(0.8 + 0.2 * i, nb=nb) for i in range(3)])
    return Cutouts.from_arrays(data, psf, rms=noise, centers=centers)


def test_blend_samples_per_source_equal_deblend():
    prior = GaussianDenoiser(np.zeros((1, N, N)), _cov())
    cut = _blend_cutouts()
    assert cut.n_max == 2 and cut.source_mask.tolist() == [[True, True], [True, False],
                                                           [True, True]]
    sampler = DPMSolver2M(steps=8)
    key = jr.key(5)
    r = estep(key, prior, cut, sde=SDE, sampler=sampler, n_samples=2, chunk=2, progress=False)
    assert r.samples.shape == (3, 2, 2, 1, N, N)
    assert np.all(np.asarray(r.samples[1, :, 1]) == 0.0)  # the padding slot
    for i in (0, 2):  # two real sources: the same prior variable as deblend's
        ref = deblend(cutout_key(key, i, 2), prior, [cutout_observation(cut, i)],
                      cut.centers[i], sde=SDE, sampler=sampler, n_samples=2)
        np.testing.assert_array_equal(np.asarray(r.corners[i]), np.asarray(ref.corners))
        np.testing.assert_allclose(np.asarray(r.samples[i]), np.asarray(ref.morphologies),
                                   rtol=1e-3, atol=2e-4)
    # Each source's stamp carries its own galaxy: flux near the stamp centre.
    m = np.asarray(r.samples[0].mean(0))[:, 0]
    assert (m[:, 3:6, 3:6].sum((1, 2)) > 0.5 * m.sum((1, 2))).all()


def test_multiband_blend_fits_spectra():
    prior = GaussianDenoiser(np.zeros((1, N, N)), _cov())
    true = np.array([[0.5, 1.5], [1.5, 0.5]])
    cut = _blend_cutouts(nb=2, spectra=true, noise=0.02)
    r = estep(jr.key(0), prior, cut, sde=SDE, sampler=DPMSolver2M(steps=12), n_samples=4,
              chunk=3, progress=False)
    assert r.spectra.shape == (3, 2, 2)
    np.testing.assert_allclose(np.asarray(r.spectra[0]), true, atol=0.15)
    np.testing.assert_allclose(np.asarray(r.spectra[2]), true, atol=0.15)
    np.testing.assert_allclose(np.asarray(r.spectra[1, 1]), 1.0)  # padding slot


def test_from_observations_and_fields():
    from astropy.table import Table

    from deconvjax.io.data import ObservationData, SimulatedField

    rng = np.random.default_rng(0)
    obs = [ObservationData(rng.normal(size=(2, 16, 16)).astype(np.float32),
                           variance=np.full((2, 16, 16), 0.5 + i), psf_images=_gpsf(1.0, nb=2),
                           bands=("g", "r")) for i in range(3)]
    cut = Cutouts.from_observations(obs)
    assert len(cut) == 3 and cut.shape == (2, 16, 16) and cut.bands == ("g", "r")
    assert not cut.is_blend and cut.source_centers()[0, 0].tolist() == [8.0, 8.0]
    np.testing.assert_allclose(cut.weights[2], 1 / 2.5)
    fields = [SimulatedField(o, Table({"y": [3.0, 9.0][: k + 1], "x": [4.0, 12.0][: k + 1]}),
                             np.zeros((k + 1, 2, 16, 16), np.float32)) for k, o in enumerate(obs[:2])]
    cut = Cutouts.from_fields(fields)
    assert cut.n_max == 2 and cut.source_mask.tolist() == [[True, False], [True, True]]
    assert cut.centers[1].tolist() == [[3.0, 4.0], [9.0, 12.0]]
    with pytest.raises(ValueError, match="observations: cutouts of different shapes"):
        Cutouts.from_observations([obs[0], ObservationData(np.zeros((2, 8, 8)), variance=np.ones((2, 8, 8)),
                                                           psf_images=_gpsf(1.0, nb=2))])


def test_bad_inputs_name_the_argument(problem):
    prior, _, cut = problem
    psf = _gpsf(1.0)
    with pytest.raises(ValueError, match="data: cutouts of different shapes"):
        Cutouts.from_arrays([np.zeros((1, 8, 8)), np.zeros((1, 9, 9))], [psf, psf], rms=1.0)
    with pytest.raises(ValueError, match="weights, variance, rms"):
        Cutouts.from_arrays(np.zeros((2, 1, 8, 8)), np.stack([psf, psf]))
    with pytest.raises(ValueError, match="centers: .*outside"):
        Cutouts.from_arrays(np.zeros((2, 1, 8, 8)), np.stack([psf, psf]), rms=1.0,
                            centers=[[[3.0, 3.0]], [[3.0, 9.5]]])
    bad = np.zeros((2, 1, 8, 8))
    bad[1, 0, 4, 4] = np.nan
    with pytest.raises(ValueError, match="data: .*non-finite"):
        Cutouts.from_arrays(bad, np.stack([psf, psf]), rms=1.0)
    with pytest.raises(ValueError, match="weights: .*no pixel"):
        Cutouts.from_arrays(np.zeros((2, 1, 8, 8)), np.stack([psf, psf]), rms=[1.0, np.inf])
    with pytest.raises(ValueError, match="prior: it has 3 band"):
        estep(jr.key(0), GaussianDenoiser(np.zeros((3, N, N)), np.eye(3 * N * N)), cut, sde=SDE,
              progress=False)
    with pytest.raises(ValueError, match="prior: its images are 4x4"):
        estep(jr.key(0), GaussianDenoiser(np.zeros((1, 4, 4)), np.eye(16)), cut, sde=SDE,
              progress=False)
    with pytest.raises(ValueError, match="sde"):
        estep(jr.key(0), prior, cut, progress=False)
    with pytest.raises(ValueError, match="chunk"):
        estep(jr.key(0), prior, cut, sde=SDE, chunk=0, progress=False)
