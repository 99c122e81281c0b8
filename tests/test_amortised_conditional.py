"""Conditional diffusion, CVAE and retention metrics of deconvjax.amortised."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.signal

from deconvjax.amortised.conditional import (
    ConditionalConfig,
    ConditionalDenoiser,
    NoDataConsistency,
    WienerDataConsistency,
    load_conditional,
    pad_psf,
    sample_conditional,
    train_conditional,
)
from deconvjax.amortised.cvae import CVAE, CVAEConfig, cvae_loss, load_cvae, sample_cvae, train_cvae
from deconvjax.amortised.pairs import Pairs, make_pairs
from deconvjax.amortised.retention import (
    chi2_per_pixel,
    conditional_variance,
    conditional_variances,
    image_features,
    is_retained,
)
from deconvjax.diffusion.unet import UNet


def _gaussian_blob(size, s=2.0, amp=1.0):
    yy, xx = np.mgrid[:size, :size] - size // 2
    return amp * np.exp(-(yy**2 + xx**2) / (2 * s**2))


def _pairs_of_one_blob(n, size=16, psf_size=5, sigma=1e-3, seed=0):
    rng = np.random.default_rng(seed)
    truth = np.broadcast_to(_gaussian_blob(size), (n, 1, size, size)).astype(np.float32)
    psf = _gaussian_blob(psf_size, 1.0)
    psf = np.broadcast_to(psf / psf.sum(), (n, 1, psf_size, psf_size)).astype(np.float32)
    blurred = np.stack([scipy.signal.fftconvolve(np.pad(t[0], psf_size, mode="wrap"), psf[0, 0], mode="same")
                        [psf_size:-psf_size, psf_size:-psf_size] for t in truth])[:, None]
    obs = blurred + sigma * rng.standard_normal(blurred.shape)
    return Pairs(truth.copy(), obs.astype(np.float32), psf.copy(), np.full(n, sigma))


# --- retention metrics -------------------------------------------------------------------

def test_chi2_per_pixel_hand_values():
    # Delta PSF: the re-convolution is the identity, chi2 = mean(residual^2) / sigma^2.
    psf = np.zeros((1, 3, 3))
    psf[0, 1, 1] = 1.0
    obs = np.zeros((1, 4, 4))
    sample = np.zeros((2, 1, 4, 4))
    sample[0, 0, 0, 0] = 2.0
    sample[1] += 1.0
    got = np.asarray(chi2_per_pixel(sample, obs, psf, 0.5))
    np.testing.assert_allclose(got, [4.0 / 16 / 0.25, 1.0 / 0.25], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(is_retained(sample, obs, psf, 0.5, slack=0.1)), [True, False])


def test_chi2_uses_the_pairs_convolution():
    # The truth of a noiseless pair has chi2 0; a blurred sample against scipy's circular
    # convolution (independent reference) as well.
    p = _pairs_of_one_blob(1, sigma=0.0)
    assert float(chi2_per_pixel(p.truth[0], p.observed[0], p.psf[0], 1.0)) < 1e-10


def test_image_features_hand_values():
    img = np.zeros((1, 1, 8, 8))
    img[0, 0, 2, 3] = 2.0
    img[0, 0, 4, 3] = 2.0
    f = image_features(img)
    assert f.shape == (1, 8 // 2 + 1 + 6)
    # Power spectrum of two points: |FFT|^2 / 64; the k = 0 bin is flux^2 / n_pix.
    np.testing.assert_allclose(f[0, 0], 16.0 / 64)
    flux, yc, xc, qyy, qxx, qxy = f[0, -6:]
    np.testing.assert_allclose([flux, yc, xc, qyy, qxx, qxy], [4.0, 3.0, 3.0, 1.0, 0.0, 0.0])
    # The radial bins against a direct average of numpy's power spectrum at |k| = 1.
    power = np.abs(np.fft.fft2(img[0, 0])) ** 2 / 64
    np.testing.assert_allclose(f[0, 1], np.mean([power[1, 0], power[0, 1], power[-1, 0], power[0, -1],
                                                 power[1, 1], power[1, -1], power[-1, 1], power[-1, -1]]))


def test_conditional_variance_hand_values():
    rng = np.random.default_rng(0)
    s = rng.random((2, 3, 1, 8, 8))
    mask = np.array([[True, True, False], [True, False, False]])
    want = image_features(s[0, :2]).var(axis=0, ddof=1).sum()  # the second has < 2 retained
    np.testing.assert_allclose(conditional_variance(s, mask), want)
    # Identical retained samples: zero variance.
    same = np.broadcast_to(s[:, :1], s.shape)
    assert conditional_variance(same, np.ones((2, 3), bool)) == pytest.approx(0.0, abs=1e-20)
    assert np.isnan(conditional_variance(s, np.zeros((2, 3), bool)))


def test_conditional_variances_per_observation():
    rng = np.random.default_rng(1)
    s = rng.random((3, 4, 1, 8, 8))
    mask = np.array([[True, True, True, False], [True, False, False, False], [True] * 4])
    got = conditional_variances(s, mask)
    assert np.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], [image_features(s[0, :3]).var(axis=0, ddof=1).sum(),
                                             image_features(s[2]).var(axis=0, ddof=1).sum()])
    np.testing.assert_allclose(conditional_variance(s, mask), np.mean(got[[0, 2]]))


def test_metric_bad_input():
    with pytest.raises(ValueError, match="psf"):
        chi2_per_pixel(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), np.ones((1, 9, 9)), 1.0)
    with pytest.raises(ValueError, match="sample"):
        chi2_per_pixel(np.zeros((1, 8, 7)), np.zeros((1, 8, 8)), np.ones((1, 3, 3)), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        chi2_per_pixel(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), np.ones((1, 3, 3)), 0.0)
    with pytest.raises(ValueError, match="retained_mask"):
        conditional_variance(np.zeros((2, 3, 1, 8, 8)), np.ones((2, 2), bool))


# --- conditional denoiser ----------------------------------------------------------------

def test_pad_psf_centre_and_errors():
    psf = np.arange(9.0).reshape(1, 3, 3) + 1
    out = np.asarray(pad_psf(jnp.asarray(psf), 8))
    np.testing.assert_allclose(out[0, 3:6, 3:6], psf[0] / 9.0)
    assert out.sum() == pytest.approx(psf.sum() / 9.0)
    with pytest.raises(ValueError, match="psf"):
        pad_psf(jnp.ones((1, 9, 9)), 8)
    with pytest.raises(ValueError, match="psf"):
        pad_psf(jnp.ones((1, 4, 4)), 8)


def test_conditional_denoiser_limits_and_shapes():
    net = UNet(3, (8,), 1, 16, key=jr.key(0))
    model = ConditionalDenoiser(net, 0.5, 2.0, 8, 3)
    x = jr.normal(jr.key(1), (1, 8, 8))
    bound = model.bind(jnp.ones((1, 8, 8)), jnp.ones((1, 3, 3)) / 9)
    # EDM preconditioning: D(x, sigma) -> x as sigma -> 0 (c_skip -> 1, c_out -> 0).
    np.testing.assert_allclose(np.asarray(bound(x, 1e-6)), np.asarray(x), atol=1e-5)
    with pytest.raises(ValueError, match="psf"):
        model.bind(jnp.ones((1, 8, 8)), jnp.ones((1, 5, 5)))
    with pytest.raises(ValueError, match="observed"):
        model.bind(jnp.ones((1, 8, 9)), jnp.ones((1, 3, 3)))
    with pytest.raises(ValueError, match="net"):
        ConditionalDenoiser(UNet(1, (8,), key=jr.key(0)), 0.5, 2.0, 8, 3)


def _circulant(psf, size):
    """Dense periodic convolution matrix, column j the circular convolution of the j-th
    basis image (scipy on a wrap-padded image: independent of the package's FFT code)."""
    r = psf.shape[-1]
    cols = []
    for j in range(size * size):
        e = np.zeros((size, size))
        e.flat[j] = 1.0
        cols.append(scipy.signal.convolve(np.pad(e, r, mode="wrap"), psf, mode="same")[r:-r, r:-r].ravel())
    return np.stack(cols, axis=1)


def test_wiener_consistency_against_dense_solve():
    # D' = D + v H^T (v H H^T + s2 I)^-1 (y - H D), v = sigma^2 sd^2 / (sigma^2 + sd^2),
    # by dense linear algebra on an 8 x 8 grid with an asymmetric 5 x 5 PSF.
    from deconvjax.amortised.convolution import transfer_function

    rng = np.random.default_rng(2)
    size, sigma, sd, s2 = 8, 0.7, 0.4, 0.05
    psf = rng.random((5, 5))
    psf /= psf.sum()
    den, y = rng.standard_normal((1, size, size)), rng.standard_normal((1, size, size))
    h = _circulant(psf, size)
    v = sigma**2 * sd**2 / (sigma**2 + sd**2)
    want = den.ravel() + v * h.T @ np.linalg.solve(v * h @ h.T + s2 * np.eye(size * size),
                                                   y.ravel() - h @ den.ravel())
    got = WienerDataConsistency()(jnp.asarray(den, jnp.float32), jnp.asarray(sigma), sd, jnp.asarray(y),
                                  transfer_function(psf[None], (size, size)), jnp.asarray(s2))
    np.testing.assert_allclose(np.asarray(got).ravel(), want, atol=1e-5)
    # No-op when sigma -> 0 (v -> 0): the network's estimate is kept.
    got0 = WienerDataConsistency()(jnp.asarray(den, jnp.float32), jnp.asarray(1e-6), sd, jnp.asarray(y),
                                   transfer_function(psf[None], (size, size)), jnp.asarray(s2))
    np.testing.assert_allclose(np.asarray(got0), den, atol=1e-5)


def test_bind_consistency_arguments():
    net = UNet(3, (8,), 1, 16, key=jr.key(0))
    model = ConditionalDenoiser(net, 0.5, 2.0, 8, 3)
    y, psf = jnp.ones((1, 8, 8)), jnp.ones((1, 3, 3)) / 9
    x = jr.normal(jr.key(1), (1, 8, 8))
    with pytest.raises(ValueError, match="noise_sigma"):
        model.bind(y, psf, consistency=WienerDataConsistency())
    with pytest.raises(ValueError, match="noise_sigma"):
        model.bind(y, psf, -1.0, WienerDataConsistency())
    with pytest.raises(ValueError, match="consistency"):
        model.bind(y, psf, 0.1, consistency="wiener")
    # The network alone: the bound denoiser is the model's call on flux-scale units.
    plain = model.bind(y, psf)
    assert isinstance(plain.consistency, NoDataConsistency)
    np.testing.assert_allclose(np.asarray(plain(x, 0.3)),
                               np.asarray(model(x, 0.3, y / 2.0, pad_psf(psf, 8))), rtol=1e-6)
    # Wiener: noise variance in flux-scale units, (0.1 / 2)^2.
    bound = model.bind(y, psf, 0.1, WienerDataConsistency())
    assert float(bound.noise_var) == pytest.approx(0.0025)


def test_benchmark_mmps_operator_is_the_periodic_convolution():
    # The conditional benchmark's MMPS observation: its operator on the wrapped frame, read
    # on the data's pixels, is the pairs' periodic convolution (scipy on wrap padding).
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _amortised_conditional import _WrapEmbedding, periodic_observation

    p = make_pairs(3, 1, 32, noise_sigma=0.003)
    obs, pad = periodic_observation(p.observed[0], p.psf[0], 0.003)
    assert pad == 7
    x = p.truth[0]
    got = np.asarray(obs(_WrapEmbedding(1.0, pad)(jnp.asarray(x))))[0, pad:-pad, pad:-pad]
    want = scipy.signal.fftconvolve(np.pad(x[0], 7, mode="wrap").astype(np.float64),
                                    p.psf[0, 0].astype(np.float64), mode="same")[7:-7, 7:-7]
    np.testing.assert_allclose(got, want, atol=1e-6 * np.abs(want).max())
    # Only the data's pixels carry weight.
    w = np.asarray(obs.weights)[0]
    assert np.all(w[pad:-pad, pad:-pad] == pytest.approx(1 / 0.003**2)) and w.sum() == pytest.approx(
        32 * 32 / 0.003**2)


def test_pairs_of_mismatched_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="observed"):
        Pairs(np.zeros((2, 1, 8, 8)), np.zeros((2, 1, 8, 7)), np.zeros((2, 1, 3, 3)), np.ones(2))
    p = _pairs_of_one_blob(4, size=16, psf_size=5)
    with pytest.raises(ValueError, match="pairs"):
        train_conditional(p, tmp_path / "c.eqx", ConditionalConfig(image_size=16, psf_size=7, steps=1))
    with pytest.raises(ValueError, match="pairs"):
        train_cvae(p, tmp_path / "v.eqx", CVAEConfig(image_size=32, psf_size=5, steps=1))


_TINY = dict(image_size=16, psf_size=5, channels=(8, 16), emb_dim=16, batch_size=8, warmup_steps=10,
             steps_per_call=5, augment=False)


@pytest.mark.slow  # three compiled trainings: ~70 s on the shared 2-core CPU
def test_conditional_training_resumes_exactly(tmp_path):
    p = _pairs_of_one_blob(8)
    full = train_conditional(p, tmp_path / "a.eqx", ConditionalConfig(**_TINY, steps=10, checkpoint_every=5),
                             progress=False)
    # Interrupted after 5 steps (max_seconds=0 stops at the first sync), then resumed.
    train_conditional(p, tmp_path / "b.eqx", ConditionalConfig(**_TINY, steps=10, checkpoint_every=5),
                      progress=False, max_seconds=0.0)
    resumed = train_conditional(p, tmp_path / "b.eqx", ConditionalConfig(**_TINY, steps=10, checkpoint_every=5),
                                progress=False)
    for a, b in zip(jnp.ravel(full.net.conv_in.weight), jnp.ravel(resumed.net.conv_in.weight), strict=True):
        assert a == b
    loaded = load_conditional(tmp_path / "a.eqx")
    np.testing.assert_array_equal(np.asarray(loaded.net.conv_out.weight), np.asarray(full.net.conv_out.weight))
    with pytest.raises(ValueError, match="cfg"):
        train_conditional(p, tmp_path / "b.eqx", ConditionalConfig(**_TINY, steps=10, seed=3), progress=False)


@pytest.mark.slow
def test_conditional_diffusion_recovers_a_known_galaxy(tmp_path):
    # Every training truth is the same Gaussian blob: the conditional law is a point mass,
    # so the samples must be that blob and re-convolve to the observation.
    p = _pairs_of_one_blob(32)
    model = train_conditional(p, tmp_path / "c.eqx", ConditionalConfig(**_TINY, steps=400), progress=False)
    s = np.asarray(sample_conditional(jr.key(0), model, p.observed[0], p.psf[0], 4))
    truth = p.truth[0]
    assert np.sqrt(np.mean((s - truth) ** 2)) < 0.05 * truth.max()
    # With the data-consistency step the samples also fit the observation to its noise.
    s = np.asarray(sample_conditional(jr.key(0), model, p.observed[0], p.psf[0], 4,
                                      noise_sigma=float(p.noise_sigma[0])))
    assert np.sqrt(np.mean((s - truth) ** 2)) < 0.05 * truth.max()
    assert np.all(np.asarray(is_retained(s, p.observed[0], p.psf[0], p.noise_sigma[0])))


# --- CVAE --------------------------------------------------------------------------------

def test_cvae_loss_matches_hand_computation():
    model = CVAE(16, 5, 4, 8, 1.0, key=jr.key(0))
    p = _pairs_of_one_blob(2)
    x, y = jnp.asarray(p.truth), jnp.asarray(p.observed)
    pp = jnp.stack([pad_psf(jnp.asarray(q), 16) for q in p.psf])
    sigma = jnp.asarray([0.1, 0.2])
    key = jr.key(3)
    got = float(cvae_loss(model, key, (x, y, pp), sigma, 2.0, 0.5))
    # Reference: the same network pieces, the re-convolution by scipy (circular, via wrap
    # padding) and the Gaussian KL formula written out.
    want = []
    import jax
    mu_q, lv_q = jax.vmap(model.encode)(x, y, pp)
    mu_p, lv_p = jax.vmap(model.conditional_prior)(y, pp)
    z = mu_q + jnp.exp(0.5 * lv_q) * jr.normal(key, mu_q.shape)
    xh = np.asarray(jax.vmap(model.decode)(z, y, pp), np.float64)
    for i in range(2):
        k = p.psf[i, 0].astype(np.float64)
        conv = scipy.signal.fftconvolve(np.pad(xh[i, 0], 5, mode="wrap"), k, mode="same")[5:-5, 5:-5]
        vq, vp = np.exp(np.asarray(lv_q[i])), np.exp(np.asarray(lv_p[i]))
        dm = np.asarray(mu_q[i] - mu_p[i])
        kl = 0.5 * np.sum(np.log(vp / vq) + (vq + dm**2) / vp - 1)
        want.append(2.0 * np.sum((p.truth[i] - xh[i]) ** 2) + 0.5 * np.sum((conv - p.observed[i, 0]) ** 2)
                    / float(sigma[i]) ** 2 + kl)
    np.testing.assert_allclose(got, np.mean(want), rtol=1e-4)


@pytest.mark.slow  # compiling the CVAE's training step: minutes on the loaded shared CPU
def test_cvae_trains_resumes_and_loads(tmp_path):
    p = _pairs_of_one_blob(8)
    cfg = dict(image_size=16, psf_size=5, latent_dim=4, width=8, batch_size=8, warmup_steps=10,
               steps_per_call=5, augment=False, steps=10, checkpoint_every=5)
    full = train_cvae(p, tmp_path / "a.eqx", CVAEConfig(**cfg), progress=False)
    train_cvae(p, tmp_path / "b.eqx", CVAEConfig(**cfg), progress=False, max_seconds=0.0)
    resumed = train_cvae(p, tmp_path / "b.eqx", CVAEConfig(**cfg), progress=False)
    np.testing.assert_array_equal(np.asarray(full.z_map.weight), np.asarray(resumed.z_map.weight))
    loaded = load_cvae(tmp_path / "a.eqx")
    s1 = sample_cvae(jr.key(0), loaded, p.observed[0], p.psf[0], 3)
    s2 = sample_cvae(jr.key(0), full, p.observed[0], p.psf[0], 3)
    assert s1.shape == (3, 1, 16, 16)
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(s2))
    with pytest.raises(ValueError, match="psf"):
        sample_cvae(jr.key(0), full, p.observed[0], np.ones((1, 7, 7)), 3)


@pytest.mark.slow
def test_cvae_recovers_a_known_galaxy(tmp_path):
    p = _pairs_of_one_blob(32)
    cfg = CVAEConfig(image_size=16, psf_size=5, latent_dim=4, width=16, batch_size=8, warmup_steps=20,
                     steps=600, augment=False)
    model = train_cvae(p, tmp_path / "v.eqx", cfg, progress=False)
    s = np.asarray(sample_cvae(jr.key(0), model, p.observed[0], p.psf[0], 4))
    assert np.sqrt(np.mean((s - p.truth[0]) ** 2)) < 0.05 * p.truth[0].max()


def test_pairs_retention_of_the_truth():
    # The truth of real pairs is retained at the default slack; a blank image is not.
    p = make_pairs(1, 2, 32, noise_sigma=0.003)
    for i in range(2):
        assert bool(is_retained(p.truth[i], p.observed[i], p.psf[i], p.noise_sigma[i]))
        assert not bool(is_retained(np.zeros_like(p.truth[i]), p.observed[i], p.psf[i], p.noise_sigma[i]))
