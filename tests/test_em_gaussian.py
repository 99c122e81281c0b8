"""Closed-form Gaussian EM (lap 0 of prior learning): likelihood, posterior, fixed point."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402

from deconvjax.diffusion import GaussianDenoiser  # noqa: E402
from deconvjax.em import gaussian as ge  # noqa: E402

H = 4
N_PIX = H * H


def dense_operator(psf: np.ndarray, h: int) -> np.ndarray:
    """``A[(p, q), (p', q')] = psf[p - p' + c, q - q' + c]`` by explicit loops: the
    zero-padded 'same' convolution, independent of the module's FFTs."""
    k = psf.shape[0]
    c = k // 2
    A = np.zeros((h * h, h * h))
    for p in range(h):
        for q in range(h):
            for p2 in range(h):
                for q2 in range(h):
                    dy, dx = p - p2 + c, q - q2 + c
                    if 0 <= dy < k and 0 <= dx < k:
                        A[p * h + q, p2 * h + q2] = psf[dy, dx]
    return A


@pytest.fixture(scope="module")
def problem():
    """200 4x4 one-band cutouts, each with its own 3x3 PSF, noise map and random mask."""
    rng = np.random.default_rng(1)
    n_cut = 200
    Q = rng.normal(size=(N_PIX, N_PIX)) / np.sqrt(N_PIX)
    sigma = Q @ Q.T + 0.5 * np.eye(N_PIX)
    mu = rng.normal(size=N_PIX)
    x = rng.multivariate_normal(mu, sigma, size=n_cut)
    psfs = rng.uniform(0.0, 1.0, size=(n_cut, 1, 3, 3))
    psfs[:, :, 1, 1] += 6.0
    psfs /= psfs.sum(axis=(2, 3), keepdims=True)
    var = rng.uniform(0.02, 0.05, size=(n_cut, N_PIX))
    mask = rng.uniform(size=(n_cut, N_PIX)) > 0.2
    A = np.stack([dense_operator(p[0], H) for p in psfs])
    y = np.einsum("inm,im->in", A, x) + rng.normal(size=var.shape) * np.sqrt(var)
    w = np.where(mask, 1.0 / var, 0.0)
    y_nan = np.where(mask, y, np.nan)  # masked pixels may hold anything
    cut = ge.GaussianCutouts(y_nan.reshape(n_cut, 1, H, H), w.reshape(n_cut, 1, H, H), psfs)
    return dict(cut=cut, A=A, y=y, w=w, mu=mu, sigma=sigma)


def dense_loglik(mu, sigma, A, y, w, xp=np):
    """``sum_i log N(y_i; A_i mu, A_i sigma A_i^T + W_i^-1)`` on valid pixels."""
    total = 0.0
    for Ai, yi, wi in zip(A, y, w):
        v = np.flatnonzero(wi > 0)
        Av = Ai[v]
        C = Av @ sigma @ Av.T + xp.diag(1.0 / wi[v])
        r = yi[v] - Av @ mu
        _, logdet = xp.linalg.slogdet(C)
        total = total - 0.5 * (r @ xp.linalg.solve(C, r) + logdet + len(v) * np.log(2 * np.pi))
    return total


def test_marginal_likelihood_matches_dense(problem):
    p = problem
    rng = np.random.default_rng(2)
    mu = rng.normal(size=N_PIX)
    B = rng.normal(size=(N_PIX, N_PIX))
    sigma = B @ B.T / N_PIX + 0.1 * np.eye(N_PIX)
    ref = dense_loglik(mu, sigma, p["A"], p["y"], p["w"])
    with jax.enable_x64(True):
        got64 = ge.marginal_log_likelihood(mu.reshape(1, H, H), sigma, p["cut"], chunk_size=50)
    got32 = ge.marginal_log_likelihood(mu, sigma, p["cut"])
    assert got64 == pytest.approx(ref, rel=1e-10)
    assert got32 == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("covariance", ["full", "diagonal", "stationary"])
def test_likelihood_never_decreases(problem, covariance):
    res = ge.gaussian_em(problem["cut"], laps=25, covariance=covariance, chunk_size=32)
    ll = res.log_likelihood
    assert ll.shape == (26,) and np.all(np.isfinite(ll))
    # float32 accumulation: allow a relative 1e-6 wobble per lap
    assert np.all(np.diff(ll) >= -1e-6 * np.abs(ll[1:])), np.diff(ll).min()
    assert ll[-1] > ll[0] + 100
    p = problem
    assert ll[-1] == pytest.approx(dense_loglik(res.mean.reshape(-1), res.cov, p["A"], p["y"], p["w"]), rel=1e-5)
    if covariance == "diagonal":
        assert np.allclose(res.cov, np.diag(np.diag(res.cov)))
    if covariance == "stationary":
        d = np.fft.fft2(np.eye(N_PIX).reshape(N_PIX, H, H), norm="ortho").reshape(N_PIX, N_PIX)
        F = d.T  # F[k, i]: orthonormal 2-D DFT of pixel i at frequency k
        spec = F @ res.cov @ F.conj().T
        assert np.allclose(spec, np.diag(res.power.reshape(-1)), atol=1e-5)


def test_lowrank(problem):
    res = ge.gaussian_em(problem["cut"], laps=15, covariance="lowrank", rank=3)
    assert res.factor.shape == (N_PIX, 3) and res.diag.shape == (N_PIX,)
    assert np.allclose(res.cov, res.factor @ res.factor.T + np.diag(res.diag), atol=1e-5)
    assert res.log_likelihood[-1] > res.log_likelihood[0] + 100


def test_fixed_point_is_the_maximum_likelihood(problem):
    """EM's fixed point against a direct L-BFGS maximisation of the dense marginal
    likelihood over ``mu`` and a Cholesky factor of ``Sigma`` (float64)."""
    p = problem
    with jax.enable_x64(True):
        res = ge.gaussian_em(p["cut"], laps=150, covariance="full")
        A, y, w = (jnp.asarray(a) for a in (p["A"], p["y"], p["w"]))
        tril = np.tril_indices(N_PIX)

        def negll(theta):
            mu = theta[:N_PIX]
            L = jnp.zeros((N_PIX, N_PIX)).at[tril].set(theta[N_PIX:])
            sigma = L @ L.T
            valid = w > 0
            C = jnp.einsum("inm,mk,ijk->inj", A, sigma, A)
            C = jnp.where(valid[:, :, None] & valid[:, None, :], C, 0.0)
            C = C + jax.vmap(jnp.diag)(jnp.where(valid, 1.0 / jnp.where(valid, w, 1.0), 1.0))
            r = jnp.where(valid, y - A @ mu, 0.0)
            _, logdet = jnp.linalg.slogdet(C)
            quad = jnp.einsum("in,in->i", r, jnp.linalg.solve(C, r[..., None])[..., 0])
            return 0.5 * jnp.sum(quad + logdet + valid.sum(1) * np.log(2 * np.pi))

        f = jax.jit(jax.value_and_grad(negll))
        m0, c0 = ge.initial_moments(p["cut"])
        theta0 = np.concatenate([m0.reshape(-1), np.linalg.cholesky(c0)[tril]])
        opt = scipy.optimize.minimize(lambda t: tuple(np.asarray(v) for v in f(t)), theta0, jac=True,
                                      method="L-BFGS-B", options=dict(maxiter=20000, maxfun=40000,
                                                                      ftol=1e-15, gtol=1e-9))
    ll_opt = -opt.fun
    L = np.zeros((N_PIX, N_PIX))
    L[tril] = opt.x[N_PIX:]
    sigma_opt = L @ L.T
    ll_em = res.log_likelihood[-1]
    print(f"EM {ll_em:.6f}, direct {ll_opt:.6f}, gap {ll_opt - ll_em:.2e}")
    assert ll_em == pytest.approx(dense_loglik(res.mean.reshape(-1), res.cov, p["A"], p["y"], p["w"]), abs=1e-8)
    assert ll_opt - ll_em < 1e-5  # EM is no worse than the direct optimum
    assert ll_em - ll_opt < 1e-3  # and the optimiser reached it
    assert np.max(np.abs(res.mean.reshape(-1) - opt.x[:N_PIX])) < 0.02
    assert np.linalg.norm(res.cov - sigma_opt) / np.linalg.norm(sigma_opt) < 0.02


def test_posterior_matches_dense(problem):
    p = problem
    rng = np.random.default_rng(3)
    mu = rng.normal(size=N_PIX)
    sigma = p["sigma"]
    with jax.enable_x64(True):
        means, covs = ge.posterior_moments(mu, sigma, p["cut"], chunk_size=7)
    for i in (0, 5, 199):
        Ai, wi, yi = p["A"][i], p["w"][i], p["y"][i]
        AtW = Ai.T * wi
        prec = np.linalg.inv(sigma) + AtW @ Ai
        cov = np.linalg.inv(prec)
        mean = cov @ (np.linalg.solve(sigma, mu) + AtW @ np.where(wi > 0, yi, 0.0))
        np.testing.assert_allclose(means[i].reshape(-1), mean, atol=1e-9)
        np.testing.assert_allclose(covs[i], cov, atol=1e-9)


def test_posterior_samples_statistics(problem):
    p = problem
    res_mu, res_cov = p["mu"], p["sigma"]
    ns = 4000
    c = p["cut"]
    cut = ge.GaussianCutouts(c.data[:5], c.weights[:5], c.psfs[:5])
    s = ge.posterior_samples(jax.random.key(0), res_mu, res_cov, cut, ns, chunk_size=2)
    assert s.shape == (5, ns, 1, H, H)
    means, covs = ge.posterior_moments(res_mu, res_cov, cut)
    for i in (0, 4):
        x = s[i].reshape(ns, -1)
        C = covs[i]
        sd = np.sqrt(np.diag(C))
        assert np.all(np.abs(x.mean(0) - means[i].reshape(-1)) < 5 * sd / np.sqrt(ns))
        tol = 5 * np.sqrt((np.outer(np.diag(C), np.diag(C)) + C**2) / ns)
        assert np.all(np.abs(np.cov(x.T) - C) < tol)
    # each cutout's samples depend on the key and its index only, not on chunking
    s2 = ge.posterior_samples(jax.random.key(0), res_mu, res_cov, cut, ns, chunk_size=5)
    np.testing.assert_allclose(s2[4], s[4], atol=1e-5)


def test_no_recompilation_between_chunks_or_laps(problem):
    before = ge.compilation_count()
    ge.gaussian_em(problem["cut"], laps=3, chunk_size=64)  # 4 chunks, the last padded
    first = ge.compilation_count()
    assert first - before <= 3  # _root, the E-step chunk and the M-step, once each
    ge.gaussian_em(problem["cut"], laps=6, chunk_size=64)
    assert ge.compilation_count() == first


def test_denoiser(problem):
    res = ge.gaussian_em(problem["cut"], laps=3)
    d = res.denoiser()
    assert isinstance(d, GaussianDenoiser) and d.exact_jacobian
    assert d.mean.shape == (1, H, H)
    np.testing.assert_allclose(np.asarray(d.cov), res.cov, atol=1e-4)
    x = jnp.asarray(res.mean) + 0.3
    np.testing.assert_allclose(np.asarray(d(x, 1e-4)), np.asarray(x), atol=1e-3)


def _good():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(5, 1, H, H))
    return data, np.ones_like(data), np.ones((1, 3, 3))


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda d, w, p: (d[0], w[0], p), "data"),
        (lambda d, w, p: (d, w[:, :, :3], p), "weights"),
        (lambda d, w, p: (d, np.zeros_like(w), p), "weights"),
        (lambda d, w, p: (d, np.where(w > 0, np.inf, 0), p), "weights"),
        (lambda d, w, p: (d, -w, p), "weights"),
        (lambda d, w, p: (np.where(d > 0, np.nan, d), w, p), "data"),
        (lambda d, w, p: (d, w, np.ones((2, 3, 3))), "psfs"),
        (lambda d, w, p: (d, w, np.zeros((1, 3, 3))), "psfs"),
        (lambda d, w, p: (d, w, np.full((1, 3, 3), np.nan)), "psfs"),
    ],
)
def test_bad_cutouts(change, name):
    with pytest.raises(ValueError, match=name):
        ge.GaussianCutouts(*change(*_good()))


def test_bad_arguments():
    cut = ge.GaussianCutouts(*_good())
    with pytest.raises(ValueError, match="covariance"):
        ge.gaussian_em(cut, laps=1, covariance="banded")
    with pytest.raises(ValueError, match="rank"):
        ge.gaussian_em(cut, laps=1, covariance="lowrank")
    with pytest.raises(ValueError, match="init_cov"):
        ge.gaussian_em(cut, laps=1, init_cov=np.eye(3))
    with pytest.raises(ValueError, match="flux_scale"):
        ge.GaussianCutouts(*_good(), flux_scale=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        ge.marginal_log_likelihood(np.zeros(N_PIX), np.eye(N_PIX), cut, chunk_size=0)
    # masked pixels may hold NaN
    d, w, p = _good()
    d[0, 0, 0, 0], w[0, 0, 0, 0] = np.nan, 0.0
    assert np.isfinite(ge.GaussianCutouts(d, w, p).data).all()


def test_data_moments_recover_the_covariance_with_a_delta_psf():
    """With a delta PSF and no mask the data covariance less the noise is the prior's
    covariance: the start matches the sample covariance of the true images (numpy) to
    the noise's sampling error, and its eigenvalues are positive."""
    rng = np.random.default_rng(4)
    n_cut = 4000
    Q = rng.normal(size=(N_PIX, N_PIX)) / np.sqrt(N_PIX)
    sigma = Q @ Q.T + 0.3 * np.eye(N_PIX)
    x = rng.multivariate_normal(np.full(N_PIX, 2.0), sigma, size=n_cut)
    var = rng.uniform(0.05, 0.15, size=(n_cut, N_PIX))
    y = x + rng.normal(size=x.shape) * np.sqrt(var)
    psf = np.zeros((n_cut, 1, 3, 3))
    psf[:, :, 1, 1] = 1.0
    cut = ge.GaussianCutouts(y.reshape(n_cut, 1, H, H), (1.0 / var).reshape(n_cut, 1, H, H), psf)
    mean, cov = ge.data_moments(cut)
    expected = np.cov(x.T, bias=True)
    assert np.abs(mean.reshape(-1) - x.mean(0)).max() < 0.04  # inverse-variance weighted mean
    assert np.linalg.norm(cov - expected) / np.linalg.norm(expected) < 0.05
    assert np.linalg.eigvalsh(cov).min() > 0
    # The isotropic start is far from it: the data start is the better one here.
    _, iso = ge.initial_moments(cut)
    assert np.linalg.norm(iso - expected) > 5 * np.linalg.norm(cov - expected)
    with pytest.raises(ValueError, match="clip"):
        ge.data_moments(cut, clip=0.0)
