"""Tikhonov + learned denoiser, MRS debiasing and the hallucination rate, against dense linear
algebra, Monte Carlo and hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from deconvjax.amortised.hallucination import hallucination_rate
from deconvjax.amortised.learned_denoiser import (
    TikhonovUNetConfig,
    deconvolve_batch,
    load_tikhonov_unet,
    residual_chi2,
    save_tikhonov_unet,
    tikhonov_batch,
    train_tikhonov_unet,
)
from deconvjax.amortised.mrs import (
    mrs_debias,
    multiresolution_support,
    starlet_noise_levels,
    starlet_operator_norm,
)
from deconvjax.amortised.pairs import Pairs
from deconvjax.model.starlet import starlet_transform


def _gaussian_psf(size, width):
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-(x**2 + y**2) / (2 * width**2))
    return p / p.sum()


def _dense_conv(psf, n):
    """The periodic convolution with a centred PSF as an (n*n, n*n) matrix, column by column
    (direct sums, no FFT)."""
    h = psf.shape[0]
    c = h // 2
    m = np.zeros((n * n, n * n))
    for iy in range(n):
        for ix in range(n):
            img = np.zeros((n, n))
            for dy in range(h):
                for dx in range(h):
                    img[(iy + dy - c) % n, (ix + dx - c) % n] += psf[dy, dx]
            m[:, iy * n + ix] = img.ravel()
    return m


def _dense_laplacian(n):
    m = np.zeros((n * n, n * n))
    for iy in range(n):
        for ix in range(n):
            i = iy * n + ix
            m[i, i] = -4
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                m[i, ((iy + dy) % n) * n + (ix + dx) % n] += 1
    return m


def _toy_pairs(n=64, size=16, seed=0, sigma=0.02):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size].astype(float)
    truth = np.zeros((n, 1, size, size))
    for i in range(n):
        cy, cx = rng.uniform(size / 3, 2 * size / 3, 2)
        w = rng.uniform(1.0, 2.5)
        truth[i, 0] = rng.uniform(0.5, 1.5) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * w**2))
    psf = np.stack([_gaussian_psf(7, 1.5)] * n)[:, None]
    h = _dense_conv(psf[0, 0], size)
    blurred = (truth.reshape(n, -1) @ h.T).reshape(truth.shape)
    observed = blurred + sigma * rng.standard_normal(truth.shape)
    return Pairs(truth.astype(np.float32), observed.astype(np.float32), psf.astype(np.float32), np.full(n, sigma))


def test_tikhonov_matches_dense_normal_equations():
    n, sigma, alpha = 8, 0.1, 3.0
    rng = np.random.default_rng(1)
    psf = _gaussian_psf(5, 1.0)
    y = rng.standard_normal((n, n))
    h, lap = _dense_conv(psf, n), _dense_laplacian(n)
    a = h.T @ h / sigma**2 + alpha * lap.T @ lap
    expected = np.linalg.solve(a, h.T @ y.ravel() / sigma**2).reshape(n, n)
    got = tikhonov_batch(y[None, None], psf[None, None], np.array([sigma]), alpha)
    np.testing.assert_allclose(np.asarray(got)[0, 0], expected, atol=2e-4 * np.abs(expected).max())


def test_residual_chi2_hand_computed():
    p = _toy_pairs(n=4, size=8)
    h = _dense_conv(np.asarray(p.psf[0, 0], float), 8)
    noise = p.observed.reshape(4, -1) - p.truth.reshape(4, -1) @ h.T
    expected = np.mean(noise**2, axis=1) / p.noise_sigma**2
    got = residual_chi2(p.truth, p.observed, p.psf, p.noise_sigma)
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_bad_inputs():
    p = _toy_pairs(n=2, size=8)
    with pytest.raises(ValueError, match="psf"):
        tikhonov_batch(p.observed, np.ones((2, 1, 9, 9)), p.noise_sigma, 1.0)  # larger than the image
    with pytest.raises(ValueError, match="psf"):
        tikhonov_batch(p.observed, np.ones((2, 1, 4, 4)) / 16, p.noise_sigma, 1.0)  # even size
    with pytest.raises(ValueError, match="psf"):
        tikhonov_batch(p.observed, p.psf[:1], p.noise_sigma, 1.0)  # one PSF for two images
    with pytest.raises(ValueError, match="sigma"):
        tikhonov_batch(p.observed, p.psf, np.ones(3), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        tikhonov_batch(p.observed, p.psf, p.noise_sigma, -1.0)
    with pytest.raises(ValueError, match="estimate"):
        residual_chi2(p.truth[:, :, :4], p.observed, p.psf, p.noise_sigma)
    with pytest.raises(ValueError, match="estimate"):
        hallucination_rate(p.truth[:1], p.truth, 0.1)
    with pytest.raises(ValueError, match="observed"):
        Pairs(p.truth, p.observed[:, :, :4], p.psf, p.noise_sigma)
    with pytest.raises(ValueError, match="observed"):
        mrs_debias(p.truth[:, 0], p.observed[:1, 0], p.psf[:, 0], np.ones((2, 2, 8, 8), bool))
    with pytest.raises(ValueError, match="sigma"):
        multiresolution_support(p.observed[:, 0], np.ones(3), 1)


def test_starlet_noise_levels_monte_carlo():
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((200, 64, 64))
    w = starlet_transform(noise, 3)[:, :3, 16:48, 16:48]  # away from the mirrored edges
    np.testing.assert_allclose(starlet_noise_levels(3), w.std(axis=(0, 2, 3)), rtol=0.02)


def test_starlet_operator_norm_dense():
    n, scales = 16, 2
    cols = [starlet_transform(e.reshape(n, n), scales).ravel() for e in np.eye(n * n)]
    dense = np.stack(cols, axis=1)
    expected = np.linalg.svd(dense, compute_uv=False)[0]
    got = starlet_operator_norm((n, n), scales)
    assert expected <= got <= 1.02 * expected


def test_support_hand_computed():
    # A delta of amplitude a: its finest coefficient is a (1 - (6/16)^2) at the centre,
    # its neighbours' -a (4/16)(6/16).
    img = np.zeros((1, 16, 16))
    img[0, 8, 8] = 10.0
    s0 = starlet_noise_levels(1)[0]
    k = 0.5 * 10 * (1 - (6 / 16) ** 2) / s0  # threshold between the centre and its neighbours
    sup = np.asarray(multiresolution_support(img, np.array([1.0]), 2, k=k))
    assert sup[0, 0].sum() == 1 and sup[0, 0, 8, 8]
    assert sup[0, -1].all()


def test_mrs_debias_is_projected_gradient_descent():
    n = 16
    rng = np.random.default_rng(3)
    psf = _gaussian_psf(5, 1.2)
    h = _dense_conv(psf, n)
    cols = [starlet_transform(e.reshape(n, n), 2).ravel() for e in np.eye(n * n)]
    w = np.stack(cols, axis=1)
    truth = np.exp(-((np.mgrid[:n, :n] - 8.0) ** 2).sum(0) / 6)
    y = (h @ truth.ravel()).reshape(n, n) + 0.01 * rng.standard_normal((n, n))
    support = rng.uniform(size=(3, n, n)) < 0.6
    support[-1] = True
    m = support.ravel().astype(float)

    def objective(x):
        return 0.5 * np.sum((m * (w @ (y.ravel() - h @ x.ravel()))) ** 2)

    x0 = np.zeros((n, n))
    step = 1.0 / (np.abs(np.fft.fft2(np.fft.ifftshift(np.pad(psf, ((5, 6), (5, 6)))))).max() ** 2
                  * starlet_operator_norm((n, n), 2) ** 2)
    grad = -(h.T @ w.T @ (m * (w @ (y.ravel() - h @ x0.ravel())))).reshape(n, n)
    one = np.asarray(mrs_debias(x0[None], y[None], psf[None], support[None], steps=1))[0]
    np.testing.assert_allclose(one, x0 - step * grad, atol=1e-4 * np.abs(step * grad).max())
    values = [objective(np.asarray(mrs_debias(x0[None], y[None], psf[None], support[None], steps=s))[0])
              for s in (0, 5, 20, 50)]
    assert all(b < a for a, b in zip(values, values[1:]))


def test_hallucination_hand_computed():
    truth = np.zeros((3, 1, 16, 16))
    truth[:, 0, 4, 4] = 1.0
    est = truth.copy()
    est[1, 0, 11, 11] = 1.0           # one invented point source: 1 of 2 significant
    est[2, 0, 4, 4] = 0.0             # the true source lost: nothing significant
    # Finest coefficient of a unit delta: 1 - (6/16)^2 = 0.859 at the centre, -0.094 around.
    rate = hallucination_rate(est, truth, 0.5)
    np.testing.assert_allclose(rate, [0.0, 0.5, 0.0])
    # An opposite-sign structure at a true one counts as hallucinated.
    est2 = truth.copy()
    est2[0, 0, 4, 4] = -1.0
    assert hallucination_rate(est2[:1], truth[:1], 0.5)[0] == 1.0


_CONFIG = TikhonovUNetConfig(channels=(8,), emb_dim=8, steps=300, batch=16, learning_rate=3e-3,
                             checkpoint_every=100)


@pytest.mark.slow
def test_training_gains_over_tikhonov(tmp_path):
    train = _toy_pairs(n=128, size=16, seed=0)
    test = _toy_pairs(n=32, size=16, seed=1)
    alpha = 1.0
    model = train_tikhonov_unet(train, tmp_path / "a.ckpt", _CONFIG, alpha=alpha, progress=False)
    x_tik = np.asarray(tikhonov_batch(test.observed, test.psf, test.noise_sigma, alpha))
    x_net = np.asarray(deconvolve_batch(model, test.observed, test.psf, test.noise_sigma))
    mse_tik = np.mean((x_tik - test.truth) ** 2)
    mse_net = np.mean((x_net - test.truth) ** 2)
    assert mse_net < 0.7 * mse_tik
    assert jnp.isfinite(x_net).all()


@pytest.mark.slow
def test_resume_and_save(tmp_path):
    train = _toy_pairs(n=32, size=16, seed=0)
    test = _toy_pairs(n=8, size=16, seed=1)
    alpha = 1.0
    # Resume: stop after the first step (max_seconds=0), then finish; same weights.
    short = TikhonovUNetConfig(**{**_CONFIG.__dict__, "steps": 5})
    ref = train_tikhonov_unet(train, tmp_path / "b.ckpt", short, alpha=alpha, progress=False)
    train_tikhonov_unet(train, tmp_path / "c.ckpt", short, alpha=alpha, progress=False, max_seconds=0)
    resumed = train_tikhonov_unet(train, tmp_path / "c.ckpt", short, alpha=alpha, progress=False)
    a = deconvolve_batch(ref, test.observed, test.psf, test.noise_sigma)
    b = deconvolve_batch(resumed, test.observed, test.psf, test.noise_sigma)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    assert not np.allclose(np.asarray(a), np.asarray(tikhonov_batch(test.observed, test.psf, test.noise_sigma,
                                                                      alpha)))  # the network moved
    with pytest.raises(ValueError, match="configuration"):
        train_tikhonov_unet(train, tmp_path / "c.ckpt", TikhonovUNetConfig(**{**short.__dict__, "steps": 6}),
                            alpha=alpha, progress=False)

    save_tikhonov_unet(tmp_path / "m.eqx", ref)
    loaded = load_tikhonov_unet(tmp_path / "m.eqx")
    np.testing.assert_array_equal(np.asarray(deconvolve_batch(loaded, test.observed, test.psf, test.noise_sigma)),
                                  np.asarray(a))
