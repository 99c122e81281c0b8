"""Joint multi-survey deconvolution (`deconvjax.amortised.joint`), checked against dense
linear algebra built independently here (circulant matrices from scipy.ndimage's wrapped
convolution, an explicit 2x2 binning matrix, numpy least squares and eigenvalues)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from deconvjax.amortised.joint import (
    FISTA,
    ColourRegulariser,
    DiffusionPriorRegulariser,
    GradientDescent,
    JointObservations,
    LaplacianRegulariser,
    ground_only_deconvolve,
    joint_deconvolve,
    joint_objective,
    lipschitz_constant,
    minimise,
    simulate_joint,
    space_only_deconvolve,
)
from deconvjax.diffusion.denoiser import GaussianDenoiser


def _gauss_psf(sigma, size):
    r = np.arange(size) - size // 2
    p = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return p / p.sum()


def _conv_matrix(psf, n):
    cols = []
    for k in range(n * n):
        e = np.zeros(n * n)
        e[k] = 1.0
        cols.append(ndimage.convolve(e.reshape(n, n), psf, mode="wrap").ravel())
    return np.stack(cols, axis=1)


def _bin_matrix(n):
    m = np.zeros(((n // 2) ** 2, n * n))
    for i in range(n):
        for j in range(n):
            m[(i // 2) * (n // 2) + j // 2, i * n + j] = 1.0
    return m


def _lap_matrix(n):
    lap = np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
    return _conv_matrix(lap, n)


def _dense(gpsf, gsig, spsf, ssig, w, n, space_weight=1.0):
    """The stacked operator and weights of the joint problem on an (n, n) fine grid."""
    nb = len(w)
    Bm = _bin_matrix(n)
    rows, wts = [], []
    for b in range(nb):
        blk = np.zeros(((n // 2) ** 2, nb * n * n))
        blk[:, b * n * n:(b + 1) * n * n] = Bm @ _conv_matrix(gpsf[b], n)
        rows.append(blk)
        wts.append(np.full((n // 2) ** 2, 1.0 / gsig[b] ** 2))
    Cs = _conv_matrix(spsf, n)
    rows.append(np.concatenate([wb * Cs for wb in w], axis=1))
    wts.append(np.full(n * n, space_weight / ssig**2))
    return np.concatenate(rows), np.concatenate(wts)


N = 8
W = np.array([0.5, 0.3])
GPSF = np.stack([_gauss_psf(0.8, 5), _gauss_psf(1.0, 5)])
SPSF = _gauss_psf(0.5, 3)
GSIG = np.array([0.05, 0.08])
SSIG = 0.03


def _tiny_obs(truth, noise_key=None):
    A, _ = _dense(GPSF, GSIG, SPSF, SSIG, W, N)
    d = A @ truth.ravel()
    if noise_key is not None:
        sig = np.concatenate([np.full((N // 2) ** 2, s) for s in GSIG] + [np.full(N * N, SSIG)])
        d = d + sig * np.random.default_rng(noise_key).standard_normal(d.shape)
    m = (N // 2) ** 2
    ground = d[: 2 * m].reshape(2, N // 2, N // 2)
    space = d[2 * m:].reshape(N, N)
    return JointObservations(ground, GPSF, GSIG, space, SPSF, SSIG, W)


@pytest.mark.slow
def test_lipschitz_matches_dense_hessian():
    with jax.enable_x64(True):
        obs = _tiny_obs(np.zeros((2, N, N)))
        lam = 0.3
        A, wt = _dense(GPSF, GSIG, SPSF, SSIG, W, N)
        Lm = np.kron(np.eye(2), _lap_matrix(N))
        H = A.T @ (wt[:, None] * A) + lam * Lm.T @ Lm
        ref = np.linalg.eigvalsh(H)[-1]
        regs = (LaplacianRegulariser(lam),)
        L = lipschitz_constant(lambda x, a: joint_objective(x, obs, 1.0, regs), jnp.zeros((2, N, N)), n_iter=500)
        assert float(L) == pytest.approx(ref, rel=1e-6)


def test_gradient_descent_converges_monotonically_at_lipschitz_step():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        truth = ndimage.gaussian_filter(rng.uniform(0, 1, (2, N, N)), (0, 1, 1), mode="wrap")
        obs = _tiny_obs(truth, noise_key=1)
        regs = (LaplacianRegulariser(0.1),)
        sol = joint_deconvolve(obs, regularisers=regs, solver=GradientDescent(step_scale=1.0, max_steps=3000, rtol=0.0))
        f = np.asarray(sol.objective)
        assert np.all(np.isfinite(f)) and int(sol.n_steps) == 3000
        # Descent lemma at step 1/L: never increases (up to rounding).
        assert np.all(np.diff(f) <= 1e-10 * np.abs(f[:-1]))
        # Converges to the dense minimiser.
        A, wt = _dense(GPSF, GSIG, SPSF, SSIG, W, N)
        d = np.concatenate([np.asarray(obs.ground).ravel(), np.asarray(obs.space).ravel()])
        Lm = np.kron(np.eye(2), _lap_matrix(N))
        H = A.T @ (wt[:, None] * A) + 0.1 * Lm.T @ Lm
        xstar = np.linalg.solve(H, A.T @ (wt * d))
        fstar = float(joint_objective(jnp.asarray(xstar.reshape(2, N, N)), obs, 1.0, regs))
        # Converges to the dense minimiser: the gap to its objective shrinks by 1e4 (plain
        # gradient descent is linear at rate 1 - mu/L on this ill-conditioned problem).
        assert f[-1] - fstar >= -1e-9 * abs(fstar)
        assert f[-1] - fstar < 1e-4 * (f[0] - fstar)

        # A step of 2.1 / L is refused by the solver, and taken by hand it diverges.
        with pytest.raises(ValueError, match="step_scale"):
            GradientDescent(step_scale=2.1)

        def fn(x, a):
            return joint_objective(x, obs, 1.0, regs)

        big = minimise(fn, jnp.asarray(obs.space)[None].repeat(2, 0), GradientDescent(max_steps=300, rtol=0.0),
                       lipschitz=sol.lipschitz / 2.1)
        fb = np.asarray(big.objective)
        assert not np.isfinite(fb[-1]) or fb[-1] > 1e3 * fb[0]


def test_noiseless_single_band_recovers_the_truth():
    """One ground band plus the space image: more data than unknowns, so the noiseless
    truth is the unique minimiser."""
    with jax.enable_x64(True):
        truth = np.random.default_rng(3).uniform(0.0, 1.0, (1, N, N))
        A, _ = _dense(GPSF[:1], GSIG[:1], SPSF, SSIG, [1.0], N)
        assert np.linalg.matrix_rank(A) == N * N
        d = A @ truth.ravel()
        m = (N // 2) ** 2
        obs = JointObservations(d[:m].reshape(1, N // 2, N // 2), GPSF[:1], GSIG[:1], d[m:].reshape(N, N), SPSF,
                                SSIG, [1.0])
        sol = joint_deconvolve(obs, regularisers=(), solver=FISTA(max_steps=20000, rtol=1e-13))
        err = np.max(np.abs(np.asarray(sol.model) - truth))
        assert err < 1e-5, err


def test_noiseless_two_bands_reach_the_projection_of_the_start():
    """Two bands on the fine grid are underdetermined (96 data, 128 unknowns): without a
    regulariser the iterates stay in ``x0 + range(A^T)``, so the answer is the Euclidean
    projection of the start onto ``{x : A x = d}``, ``x0 + pinv(A) (d - A x0)``."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        truth = rng.uniform(0.0, 1.0, (2, N, N))
        obs = _tiny_obs(truth)
        A, _ = _dense(GPSF, GSIG, SPSF, SSIG, W, N)
        d = A @ truth.ravel()
        x0 = rng.uniform(0.0, 1.0, (2, N, N))
        ref = x0.ravel() + np.linalg.pinv(A) @ (d - A @ x0.ravel())
        sol = joint_deconvolve(obs, regularisers=(), x0=x0, solver=FISTA(max_steps=20000, rtol=1e-13))
        x = np.asarray(sol.model).ravel()
        # The operator has singular values down to ~1e-3 on range(A^T) (a slow direction for
        # any first-order method), hence tolerances well above rounding.
        assert np.max(np.abs(A @ x - d)) < 2e-5
        assert np.max(np.abs(x - ref)) < 1e-3


def test_space_only_recovers_a_grey_source():
    with jax.enable_x64(True):
        rng = np.random.default_rng(4)
        z = rng.uniform(0.0, 1.0, (N, N))
        truth = np.stack([z, z])  # same image in both bands: the grey split is exact
        obs = _tiny_obs(truth)
        sol = space_only_deconvolve(obs, regularisers=(), solver=FISTA(max_steps=5000, rtol=1e-13))
        assert np.max(np.abs(np.asarray(sol.model) - truth)) < 1e-5


def test_flux_stays_in_its_band():
    """One Gaussian source per band at separate places: each band's model keeps under 3% of
    any other band's source flux in that source's aperture (noiseless data, weak Laplacian)."""
    with jax.enable_x64(True):
        n = 32
        yy, xx = np.mgrid[:n, :n]
        centres = [(8, 8), (8, 23), (23, 15)]
        truth = np.stack([100 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2)) for cy, cx in centres])
        w = np.array([0.3, 0.4, 0.3])
        gpsf = np.stack([_gauss_psf(s, 15) for s in (2.5, 2.2, 2.0)])
        spsf = _gauss_psf(0.7, 7)
        ground = np.stack([ndimage.convolve(t, p, mode="wrap") for t, p in zip(truth, gpsf)])
        ground = ground.reshape(3, n // 2, 2, n // 2, 2).sum(axis=(2, 4))
        space = ndimage.convolve(np.tensordot(w, truth, axes=1), spsf, mode="wrap")
        obs = JointObservations(ground, gpsf, 0.1, space, spsf, 0.05, w)
        sol = joint_deconvolve(obs, regularisers=(LaplacianRegulariser(1e-3),), solver=FISTA(max_steps=3000))
        m = np.asarray(sol.model)
        for b in range(3):
            for c, (cy, cx) in enumerate(centres):
                ap = (yy - cy) ** 2 + (xx - cx) ** 2 <= 5**2
                own = truth[c][ap].sum()
                if b == c:
                    assert m[b][ap].sum() == pytest.approx(own, rel=0.03)
                else:
                    assert abs(m[b][ap].sum()) < 0.03 * own, (b, c, m[b][ap].sum() / own)


def test_diffusion_prior_regulariser_matches_its_quadratic_penalty():
    """With an exact Gaussian denoiser ``N(m0, c I)`` the prior's score term is the gradient of
    ``w |x - m0|^2 / (2 (c + sigma^2))``: the solve must land on that dense minimiser."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        truth = rng.uniform(0.0, 1.0, (2, N, N))
        obs = _tiny_obs(truth, noise_key=6)
        m0 = np.full((1, N, N), 0.5)
        c, sig, wgt = 0.2, 0.1, 50.0
        prior = GaussianDenoiser(m0, c * np.eye(N * N))
        reg = DiffusionPriorRegulariser(prior, weight=wgt, sigma=sig, scale=1.0)
        sol = joint_deconvolve(obs, regularisers=(reg,), solver=FISTA(step_scale=0.5, max_steps=5000, rtol=1e-13))
        A, wt = _dense(GPSF, GSIG, SPSF, SSIG, W, N)
        d = np.concatenate([np.asarray(obs.ground).ravel(), np.asarray(obs.space).ravel()])
        k = wgt / (c + sig**2)
        H = A.T @ (wt[:, None] * A) + k * np.eye(2 * N * N)
        xstar = np.linalg.solve(H, A.T @ (wt * d) + k * np.tile(m0.ravel(), 2))
        assert np.max(np.abs(np.asarray(sol.model).ravel() - xstar)) < 1e-6


def test_simulation_shapes_and_space_relation():
    obs, truth = simulate_joint(0, 1, 16, psf_size=15)
    o = obs[0]
    assert truth.shape == (1, 3, 32, 32) and o.ground.shape == (3, 16, 16) and o.space.shape == (32, 32)
    # The space image's flux is the SED-weighted sum of the band truths' (noise aside).
    ref = float(np.tensordot(np.asarray(o.sed_weights), truth[0], axes=1).sum())
    assert float(o.space.sum()) == pytest.approx(ref, abs=6 * float(o.space_sigma) * 32)
    # The bands differ in morphology, not only in flux.
    t = truth[0] / truth[0].sum(axis=(-2, -1), keepdims=True)
    assert np.max(np.abs(t[0] - t[2])) > 0.05 * t[0].max()


@pytest.mark.slow
def test_baselines_run():
    obs, _ = simulate_joint(0, 1, 16, psf_size=15)
    o = obs[0]
    s = FISTA(max_steps=20)
    for f in (joint_deconvolve, ground_only_deconvolve, space_only_deconvolve):
        assert f(o, solver=s).model.shape == (3, 32, 32)
    assert joint_deconvolve(o, regularisers=(ColourRegulariser(1.0),), solver=s).model.shape == (3, 32, 32)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(sed_weights=None), "sed_weights"),
        (dict(sed_weights=[0.5, 0.3, 0.2]), "sed_weights"),
        (dict(space=np.zeros((N, N + 2))), "space"),
        (dict(ground=np.zeros((2, N // 2, N // 2 + 1))), "space"),
        (dict(ground_psf=np.ones((2, 4, 4)) / 16), "ground_psf"),
        (dict(ground_psf=np.ones((2, 11, 11)) / 121), "ground_psf"),
        (dict(ground_psf=GPSF[:1]), "ground_psf"),
        (dict(space_psf=np.ones((9, 9)) / 81), "space_psf"),
        (dict(ground_sigma=[0.1, 0.1, 0.1]), "ground_sigma"),
        (dict(space_sigma=0.0), "space_sigma"),
    ],
)
def test_bad_input(change, match):
    kw = dict(ground=np.zeros((2, N // 2, N // 2)), ground_psf=GPSF, ground_sigma=GSIG, space=np.zeros((N, N)),
              space_psf=SPSF, space_sigma=SSIG, sed_weights=W)
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        JointObservations(**kw)


def test_bad_solver_and_start():
    obs = _tiny_obs(np.zeros((2, N, N)))
    with pytest.raises(ValueError, match="step_scale"):
        FISTA(step_scale=1.5)
    with pytest.raises(ValueError, match="x0"):
        joint_deconvolve(obs, x0=np.zeros((2, N // 2, N // 2)))
    with pytest.raises(ValueError, match="regularisers"):
        joint_deconvolve(obs, regularisers=("laplacian",))
