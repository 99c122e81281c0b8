import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from deconvjax.classical import laplacian, richardson_lucy, tikhonov, wiener  # noqa: E402
from deconvjax.frame import Frame  # noqa: E402
from deconvjax.observation import Observation  # noqa: E402
from deconvjax.psf import GaussianPSF  # noqa: E402

N = 16


def _truth():
    yy, xx = np.mgrid[:N, :N]
    img = 3.0 * np.exp(-((yy - 7.3) ** 2 + (xx - 8.1) ** 2) / (2 * 1.5**2))
    img += 1.5 * np.exp(-((yy - 4) ** 2 / 4.0 + (xx - 11) ** 2 / 1.0) / 2)
    return img[None]


def _obs(data, rms=0.05, psf=2.0):
    frame = Frame(["a"], (N, N), psf=GaussianPSF(0.3))
    return Observation(data, frame=frame, psf=GaussianPSF(psf), rms=rms)


def _dense(o):
    n = N * N
    eye = jnp.eye(n, dtype=jnp.float32).reshape(n, 1, N, N)
    return np.asarray(jax.vmap(o)(eye).reshape(n, -1), np.float64).T


def _lap_dense():
    n = N * N
    eye = np.eye(n).reshape(n, 1, N, N)
    return np.asarray(jax.vmap(laplacian)(jnp.asarray(eye)).reshape(n, -1), np.float64).T


def test_tikhonov_solves_the_normal_equations():
    rng = np.random.default_rng(0)
    o0 = _obs(np.zeros((1, N, N)))
    y = np.asarray(o0(jnp.asarray(_truth()))) + 0.05 * rng.normal(size=(1, N, N))
    o = _obs(y)
    lam = 3.0
    a, lap = _dense(o), _lap_dense()
    w = 1 / 0.05**2
    exact = np.linalg.solve(w * a.T @ a + lam * lap.T @ lap, w * a.T @ y.ravel())
    got = np.asarray(tikhonov(o, lam)).ravel()
    assert np.abs(got - exact).max() < 2e-3 * np.abs(exact).max()


def test_wiener_matches_dense_periodic_solution():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(1, N, N))
    yy, xx = np.mgrid[:N, :N]
    psf = np.exp(-((yy - N // 2) ** 2 + (xx - N // 2) ** 2) / (2 * 1.2**2))[None]
    psf /= psf.sum()
    n = N * N
    # Dense periodic convolution matrix.
    a = np.stack([np.fft.ifft2(np.fft.fft2(e.reshape(N, N)) * np.fft.fft2(np.fft.ifftshift(psf[0]))).real.ravel()
                  for e in np.eye(n)], 1)
    lap = _lap_dense()
    lam, w = 0.1, 4.0
    exact = np.linalg.solve(w * a.T @ a + lam * lap.T @ lap, w * a.T @ img.ravel())
    got = np.asarray(wiener(img, psf, lam, weight=w)).ravel()
    assert np.abs(got - exact).max() < 1e-4 * np.abs(exact).max()


def test_richardson_lucy_matches_dense_iteration_and_improves():
    o0 = _obs(np.zeros((1, N, N)))
    truth = _truth()
    y = np.asarray(o0(jnp.asarray(truth)), np.float64)
    o = _obs(y, rms=0.01)
    a = _dense(o)
    b = 3.0 / np.sqrt(float(jnp.min(o.weights)))
    x = np.full(N * N, y.sum() / (N * N))
    norm = a.T @ np.ones(N * N)
    for _ in range(20):
        x = np.clip(x * (a.T @ ((y.ravel() + b) / (a @ x + b))) / norm, 0, None)
    got = np.asarray(richardson_lucy(o, 20)).ravel()
    assert np.abs(got - x).max() < 1e-3 * np.abs(x).max()
    err = [np.linalg.norm(np.asarray(richardson_lucy(o, k)) - truth) for k in (5, 50, 200)]
    assert err[0] > err[1] > err[2]


def test_bad_input():
    with pytest.raises(TypeError, match="observations"):
        tikhonov([np.zeros((N, N))])
    with pytest.raises(ValueError, match="psf"):
        wiener(np.zeros((N, N)), np.zeros((5, 5)), 0.1)
    with pytest.raises(ValueError, match="n_iter"):
        richardson_lucy(_obs(np.zeros((1, N, N))), -1)
