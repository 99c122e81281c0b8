"""The shipped galaxy prior and the MAP score regulariser."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from conftest import COSMOS  # noqa: E402  ($DECONVJAX_COSMOS, else the shipped subset)
from helpers import cosmos_sample_rows  # noqa: E402

import deconvjax.diffusion as dd
from deconvjax.diffusion import GaussianDenoiser, load_prior, prior_score, prior_score_penalty
from deconvjax.diffusion.evaluate import best_gaussian_smoothing, psnr, tweedie_denoise

PRIOR_FILE = Path(dd.__file__).parent.parent / "data" / "prior" / "galaxy32.eqx"


@pytest.fixture(scope="module")
def prior():
    return load_prior()


def test_shipped_prior_loads(prior):
    assert prior.shape == (1, 32, 32)
    assert prior.flux_scale > 0
    assert PRIOR_FILE.stat().st_size < 5e6
    x = jnp.zeros(prior.shape)
    assert jnp.all(jnp.isfinite(eqx.filter_jit(prior.denoiser)(x, 0.1)))


def test_tweedie_beats_gaussian_smoothing_on_held_out_cosmos(prior):
    from deconvjax.diffusion.data import cosmos_stamps

    rows = cosmos_sample_rows(COSMOS, prior.cosmos_heldout(100))  # not trained on (the shipped subset's 20)
    held = prior.normalise(cosmos_stamps(COSMOS, 32, rows))
    rng = np.random.default_rng(0)
    sigma = 0.03
    noisy = held + sigma * rng.standard_normal(held.shape).astype(np.float32)
    den = tweedie_denoise(prior.denoiser, noisy, sigma)
    smooth, _ = best_gaussian_smoothing(noisy, held)  # oracle-tuned width
    assert psnr(den, held).mean() > psnr(smooth, held).mean() + 0.3


def test_penalty_gradient_is_minus_weight_times_score_analytic():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4)) * 0.3
    cov = a @ a.T + 0.2 * np.eye(4)
    mean = rng.standard_normal((1, 2, 2))
    den = GaussianDenoiser(mean, cov)
    m = jnp.asarray(rng.standard_normal((3, 1, 2, 2)), jnp.float32)
    sigma, scale = 0.1, 2.0
    w = jnp.array([0.5, 1.0, 0.0])

    loss = jax.jit(lambda m: jnp.sum(m**2) + prior_score_penalty(den, m, w, sigma, scale=scale))
    val, g = jax.value_and_grad(loss)(m)
    np.testing.assert_allclose(val, jnp.sum(m**2), rtol=1e-6)  # penalty value is 0
    # Analytic score of m = scale * x, x ~ N(mean, C + sigma^2): -(C+s^2)^-1 (m/scale - mean)/scale
    prec = np.linalg.inv(cov + sigma**2 * np.eye(4))
    d = (np.asarray(m) / scale - mean).reshape(3, 4)
    score = -(d @ prec.T).reshape(3, 1, 2, 2) / scale
    expected = 2 * np.asarray(m) - np.asarray(w)[:, None, None, None] * score
    np.testing.assert_allclose(g, expected, rtol=2e-3, atol=2e-4)
    # forward mode agrees
    t = jnp.ones_like(m)
    _, jv = jax.jvp(lambda m: prior_score_penalty(den, m, w, sigma, scale=scale), (m,), (t,))
    np.testing.assert_allclose(jv, -jnp.sum(w[:, None, None, None] * score * t), rtol=2e-3)


def _count_convs(jaxpr):
    n = 0
    for eq in jaxpr.eqns:
        if eq.primitive.name == "conv_general_dilated":
            n += 1
        for sub in jax.core.subjaxprs(eq) if hasattr(jax.core, "subjaxprs") else []:
            n += _count_convs(sub)
        for v in eq.params.values():
            if hasattr(v, "jaxpr"):
                n += _count_convs(v.jaxpr if hasattr(v.jaxpr, "eqns") else v.jaxpr.jaxpr)
    return n


def test_penalty_is_one_batched_call_for_all_sources(prior):
    def trace_for(n):
        m = jnp.zeros((n, *prior.shape))
        return jax.make_jaxpr(lambda m: prior_score(prior, m, 0.05))(m).jaxpr

    c2, c7 = _count_convs(trace_for(2)), _count_convs(trace_for(7))
    assert c2 == c7 > 0  # trace size does not grow with the number of sources
    # (gradient == -weight * score is checked against the analytic Gaussian above)
    with pytest.raises(ValueError, match="morphologies"):
        prior_score_penalty(prior, jnp.zeros((2, 1, 16, 16)), 1.0, 0.05)
    with pytest.raises(ValueError, match="weight"):
        prior_score_penalty(prior, jnp.zeros((2, *prior.shape)), jnp.ones(3), 0.05)


@pytest.mark.slow
def test_shipped_prior_samples_match_training_statistics(prior):
    """Samples vs the training set (README recipe). Measured (256 samples, dpm2m, 49 NFE):
    flux median 7.9 vs 7.0, half-light radius median 3.6 vs 4.0 px, second-moment size
    5.6 vs 4.9 px, per-image median power ratio 0.99-1.22 for |k| < 0.31 / px but 2-20x
    at the highest |k| (the samples carry COSMOS-like pixel noise while 79% of the training
    stamps are noiseless simulations). The high-|k| excess is reported, not asserted."""
    from deconvjax.diffusion.data import cosmos_stamps, simulate_galaxies
    from deconvjax.diffusion.evaluate import compare_statistics

    trained_on = cosmos_sample_rows(COSMOS, np.setdiff1d(np.arange(100), prior.cosmos_heldout(100)),
                                    "the prior's 80 training galaxies")
    train = prior.normalise(np.concatenate(
        [np.concatenate([cosmos_stamps(COSMOS, 32, trained_on)] * 4),
         simulate_galaxies(0, 1200, 32)]))
    s, _ = dd.sample(jr.key(0), prior.denoiser, sde=prior.sde, shape=prior.shape, n_samples=128)
    c = compare_statistics(np.asarray(s), train)
    print(c)
    flux = c["flux_q16_50_84_samples"][1] / c["flux_q16_50_84_reference"][1]
    assert abs(np.log(flux)) < np.log(1.5), flux
    assert abs(c["hlr_q16_50_84_samples"][1] - c["hlr_q16_50_84_reference"][1]) < 1.5
    assert abs(np.log(c["size_q16_50_84_samples"][1] / c["size_q16_50_84_reference"][1])) < 0.4
    low_k = np.array(c["power_ratio_median"][:5])
    assert np.all((low_k > 0.6) & (low_k < 1.6)), low_k


def test_cosmos_heldout_indices():
    from deconvjax.diffusion.data import cosmos_heldout_indices

    assert cosmos_heldout_indices(10, every=5).tolist() == [4, 9]
    assert cosmos_heldout_indices(10, last=3).tolist() == [7, 8, 9]
    assert cosmos_heldout_indices(10, last=2, every=4).tolist() == [3, 7, 8, 9]
    assert cosmos_heldout_indices(10).tolist() == []
    with pytest.raises(ValueError, match="every"):
        cosmos_heldout_indices(10, every=-1)


@pytest.mark.parametrize("n_in, size", [(90, 32), (40, 64), (50, 50)])
def test_resampled_noise_variance_white_matches_exact(n_in, size):
    import galsim

    from deconvjax.diffusion.data import _resampled_noise_variance, resampled_white_noise_variance

    exact = resampled_white_noise_variance(n_in, size, 2.0)
    mc = _resampled_noise_variance(n_in, size, galsim.GaussianNoise(sigma=np.sqrt(2.0)), 40,
                                   galsim.BaseDeviate(3))
    # 40 draws of size**2 pixels: the Monte Carlo variance is good to about 1%.
    assert abs(mc / exact - 1) < 0.05, (mc, exact)
    if n_in == size:  # the identity resampling keeps the variance
        assert exact == pytest.approx(2.0)


def test_cosmos_noise_variance_correlated_exceeds_white():
    from astropy.io import fits

    from deconvjax.diffusion.data import cosmos_noise_variance, resampled_white_noise_variance

    rows = cosmos_sample_rows(COSMOS, [4, 19])  # 92 and 76 px stamps, downsampled to 64
    var = cosmos_noise_variance(COSMOS, 64, rows, n_draws=4)
    cat = fits.getdata(COSMOS / "real_galaxy_catalog_26_extension_example.fits")
    with fits.open(COSMOS / "real_galaxy_images_extension.fits") as h:
        white = np.array([resampled_white_noise_variance(h[int(cat["GAL_HDU"][i])].data.shape[0], 64,
                                                         float(cat["NOISE_VARIANCE"][i])) for i in rows])
    # ACS noise is positively correlated between neighbouring pixels: rebinning averages
    # it down less than white noise.
    assert np.all(var > 1.2 * white), (var, white)
    with pytest.raises(ValueError, match="n_draws"):
        cosmos_noise_variance(COSMOS, 64, rows, n_draws=0)
