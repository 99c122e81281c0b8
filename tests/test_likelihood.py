import jax.numpy as jnp
import numpy as np
import pytest
from astropy.io import fits

import deconvjax as dj


def test_gaussian_log_prob_is_the_normal_density():
    rng = np.random.default_rng(0)
    data, model = rng.normal(size=(2, 6, 7)), rng.normal(size=(2, 6, 7))
    w = rng.uniform(0.5, 2.0, size=(2, 6, 7))
    w[0, 0, 0] = 0.0
    lik = dj.GaussianLikelihood()
    valid = w > 0
    ref = np.sum((-0.5 * w * (data - model) ** 2 + 0.5 * np.log(w / (2 * np.pi)))[valid])
    np.testing.assert_allclose(float(lik.log_prob(jnp.asarray(data), jnp.asarray(model), jnp.asarray(w))), ref, rtol=1e-5)


def test_correlated_likelihood_matches_dense_covariance():
    ny, nx = 8, 9
    yy, xx = np.mgrid[-3:4, -3:4]
    cf = 0.04 * np.exp(-(yy**2 + xx**2) / 2.0)
    lik = dj.CorrelatedGaussianLikelihood.from_correlation_function(cf, (ny, nx))
    # Dense circulant covariance on the (ny, nx) torus.
    idx = np.stack(np.mgrid[:ny, :nx], -1).reshape(-1, 2)
    d = idx[:, None, :] - idx[None, :, :]
    dy = (d[..., 0] + ny // 2) % ny - ny // 2
    dx = (d[..., 1] + nx // 2) % nx - nx // 2
    inside = (np.abs(dy) <= 3) & (np.abs(dx) <= 3)
    cov = np.where(inside, 0.04 * np.exp(-(dy**2 + dx**2) / 2.0), 0.0)
    rng = np.random.default_rng(1)
    r = rng.multivariate_normal(np.zeros(ny * nx), cov)
    sign, logdet = np.linalg.slogdet(2 * np.pi * cov)
    ref = -0.5 * r @ np.linalg.solve(cov, r) - 0.5 * logdet
    ours = lik.log_prob(jnp.asarray(r.reshape(1, ny, nx)), jnp.zeros((1, ny, nx)), jnp.ones((1, ny, nx)))
    np.testing.assert_allclose(float(ours), ref, rtol=1e-4)


def test_chi2_per_dof_near_one_on_noise(cosmos_dir):
    # Real ACS correlated noise: drawn with GalSim from the correlation function in the
    # COSMOS folder, whitened by our likelihood to chi2/dof ~ 1; the diagonal likelihood
    # is wrong on it.
    import galsim
    cf_img = fits.getdata(cosmos_dir / "acs_I_unrot_sci_20_cf.fits").astype(np.float64)
    noise = galsim.getCOSMOSNoise(file_name=str(cosmos_dir / "acs_I_unrot_sci_20_cf.fits"),
                                  rng=galsim.BaseDeviate(5), variance=1e-4)
    img = galsim.ImageD(96, 96, scale=0.03)
    img.addNoise(noise)
    data = img.array[None]
    frame = dj.Frame(["F814W"], (96, 96), pixel_scale=0.03, psf=dj.GaussianPSF(0.03))
    lik = dj.CorrelatedGaussianLikelihood.from_correlation_function(cf_img, (96, 96), variance=1e-4)
    obs = dj.Observation(data, frame=frame, psf=dj.GaussianPSF(0.05), variance=1e-4, likelihood=lik)
    empty = dj.Scene(frame, [dj.Source([0.0], dj.PointMorphology(), (48.0, 48.0))])
    corr = float(dj.chi2_per_dof(empty, [obs]))
    assert abs(corr - 1) < 0.1, corr
    diag = dj.Observation(data, frame=frame, psf=dj.GaussianPSF(0.05), variance=1e-4)
    assert abs(float(dj.chi2_per_dof(empty, [diag])) - 1) < 0.05  # marginal variance is right...


def test_gaussian_noise_model_score_is_the_analytic_one():
    """-(C + sigma^2)^-1 n against a dense covariance built from the correlation function."""
    from deconvjax.likelihood.noise_model import GaussianNoiseModel

    rng = np.random.default_rng(3)
    ny, nx = 6, 8
    cf = np.zeros((3, 3))
    cf[1, 1], cf[1, 0], cf[1, 2], cf[0, 1], cf[2, 1] = 1.0, 0.2, 0.2, 0.1, 0.1
    like = dj.CorrelatedGaussianLikelihood.from_correlation_function(cf, (ny, nx))
    model = GaussianNoiseModel.from_likelihood(like, nx)
    assert model.shape == (1, ny, nx)
    # Dense circulant covariance: C[i, j] = cf(wrapped offset j - i).
    cov = np.zeros((ny * nx, ny * nx))
    for i in range(ny * nx):
        iy, ix = divmod(i, nx)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                j = ((iy + dy) % ny) * nx + (ix + dx) % nx
                cov[i, j] += cf[1 + dy, 1 + dx]
    n = rng.normal(size=(1, ny, nx))
    sigma = 0.5
    expected = -np.linalg.solve(cov + sigma**2 * np.eye(ny * nx), n.ravel()).reshape(1, ny, nx)
    assert np.allclose(model.score(n, sigma), expected, atol=1e-5)
    with pytest.raises(ValueError, match="noise model"):
        model.check_shape((2, ny, nx))
