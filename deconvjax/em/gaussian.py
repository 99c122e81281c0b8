"""Lap 0 of prior learning by expectation-maximisation: a Gaussian prior fitted to the
cutouts themselves, in closed form.

Each cutout ``i`` is modelled as a linear-Gaussian observation of its own galaxy image,

    ``y_i = A_i x_i + n_i``,  ``x_i ~ N(mu, Sigma)``,  ``n_i ~ N(0, W_i^{-1})``,

where ``x_i`` is a ``(band, h, w)`` image in prior units (the data's flux units divided
by one global ``flux_scale``), ``A_i`` the convolution by the cutout's own PSF (one image
per band) and ``W_i`` the per-pixel inverse noise variance (0 for masked pixels). With a
Gaussian prior the posterior of every ``x_i`` is Gaussian and known exactly, so
expectation-maximisation (EM) of the marginal likelihood ``sum_i log p(y_i | mu, Sigma)``
has closed-form steps:

- E-step, per cutout: ``Sigma_i = (Sigma^-1 + A_i^T W_i A_i)^-1`` and
  ``mu_i = Sigma_i (Sigma^-1 mu + A_i^T W_i y_i)``;
- M-step: ``mu = mean_i mu_i``, ``Sigma = mean_i [Sigma_i + (mu_i - mu)(mu_i - mu)^T]``,
  then, when asked, the nearest covariance of a cheaper family (diagonal, stationary, or
  low-rank plus diagonal).

Every lap increases the marginal likelihood (for ``"full"``, ``"diagonal"`` and
``"stationary"``, whose M-steps are exact within the family; the low-rank projection is
a heuristic, as the PPCA projection of Rozet et al. 2024, and may not). This is the
starting prior of Rozet et al. 2024 ("Learning diffusion priors from observations by
expectation maximization"), who reach it by Monte Carlo EM with posterior samples; here
the posterior moments are exact. The fitted Gaussian is a `GaussianDenoiser` for the
package's posterior samplers, and exact posterior samples per cutout are what the
M-step of the next, learned, lap trains on.

**Numerics.** The prior covariance enters only through a square root ``R`` (``Sigma =
R R^T``, from its eigendecomposition, so singular covariances are fine) and every solve
is a Cholesky factorisation of ``M_i = I + R^T A_i^T W_i A_i R``, whose eigenvalues are
all >= 1: the E-step never inverts ``Sigma`` and stays accurate in float32 (JAX's
default; with ``jax_enable_x64`` on, everything runs in float64). The data-space
quadratic form of the likelihood is evaluated as a sum of squares (no cancellation).
The dense covariances cost ``O(n^3)`` per cutout for ``n = band * h * w`` pixels, which
suits stamps up to ~1-2 thousand pixels.

**Operator.** ``A_i`` is a zero-padded ("same"-size, linear) convolution evaluated by
FFT on a grid of at least ``h + ph - 1`` by ``w + pw - 1`` pixels, so no light wraps
from one edge of a stamp to the other (a periodic convolution would carry a bright core
near one edge into the far edge, which no telescope does); light from outside the stamp
is taken to be zero. PSF images are centred on pixel ``(ph // 2, pw // 2)`` and
normalised to unit sum per band, as `deconvjax.psf.ArrayPSF` does.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._checks import real_array
from .._fft import centred_to_origin, good_fft_size
from .._jit import CountingJit
from ..diffusion.denoiser import GaussianDenoiser

__all__ = [
    "GaussianCutouts",
    "GaussianEMResult",
    "gaussian_em",
    "marginal_log_likelihood",
    "posterior_moments",
    "posterior_samples",
    "initial_moments",
    "data_moments",
    "compilation_count",
]

COVARIANCES = ("full", "lowrank", "diagonal", "stationary")


def _dtype():
    return jnp.result_type(float)


class GaussianCutouts:
    """A batch of cutouts with their own PSFs and noise, in prior units.

    **Arguments:**

    - `data`: ``(cutout, band, h, w)`` images in the data's flux units. Masked pixels
      (weight 0) may hold anything, NaN included.
    - `weights`: same shape, the inverse noise variance of every pixel; 0 masks it.
    - `psfs`: ``(cutout, band, ph, pw)`` PSF images, one per cutout and band, or
      ``(band, ph, pw)`` shared by all; centred on pixel ``(ph // 2, pw // 2)``,
      normalised here to unit sum per band.
    - `flux_scale`: the prior's flux unit in data units: the model works with
      ``data / flux_scale`` (weights ``* flux_scale**2``).

    Raises `ValueError`, naming the argument, for shapes that differ, negative or
    non-finite weights (a zero noise variance is an infinite weight: give the noise),
    no unmasked pixel at all, non-finite data on unmasked pixels, and PSFs that are not
    finite or do not sum to a positive number.
    """

    def __init__(self, data: Float[ArrayLike, "cutout band h w"],
                 weights: Float[ArrayLike, "cutout band h w"],
                 psfs: Float[ArrayLike, "*cutout band ph pw"], *, flux_scale: float = 1.0):
        data = real_array(data, "data")
        if data.ndim != 4 or min(data.shape) < 1:
            raise ValueError(f"data: expected a (cutout, band, h, w) array, got shape {data.shape}")
        weights = real_array(weights, "weights")
        if weights.shape != data.shape:
            raise ValueError(f"weights: expected the shape of data {data.shape}, got {weights.shape}")
        if not np.all(np.isfinite(weights)):
            raise ValueError(
                "weights: must be finite (inverse noise variances; a zero variance gives an "
                "infinite weight: every pixel needs noise)"
            )
        if np.any(weights < 0):
            raise ValueError("weights: must be >= 0 (inverse noise variances, 0 = masked)")
        valid = weights > 0
        if not valid.any():
            raise ValueError("weights: every pixel of every cutout is masked (all weights are 0)")
        bad = valid & ~np.isfinite(data)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise ValueError(
                f"data: {int(bad.sum())} unmasked pixel(s) are not finite (first in cutout "
                f"{first}); mask them with weight 0"
            )
        n, nb, h, w = data.shape
        psfs = real_array(psfs, "psfs")
        if psfs.ndim == 3:
            psfs = np.broadcast_to(psfs, (n,) + psfs.shape)
        if psfs.ndim != 4 or psfs.shape[:2] != (n, nb) or min(psfs.shape[2:]) < 1:
            raise ValueError(
                f"psfs: expected ({n}, {nb}, ph, pw) or ({nb}, ph, pw) for data of shape "
                f"{data.shape}, got {psfs.shape}"
            )
        if not np.all(np.isfinite(psfs)):
            raise ValueError("psfs: must be finite")
        total = psfs.sum(axis=(2, 3), keepdims=True)
        if np.any(total <= 0):
            raise ValueError("psfs: every PSF image must sum to a positive number")
        flux_scale = float(flux_scale)
        if not (math.isfinite(flux_scale) and flux_scale > 0):
            raise ValueError(f"flux_scale: expected a positive number, got {flux_scale}")
        ph, pw = psfs.shape[2:]
        self.fft_shape = (good_fft_size(h + ph - 1), good_fft_size(w + pw - 1))
        self.psfs = psfs / total
        self.kernel_fft = np.fft.rfft2(centred_to_origin(self.psfs, self.fft_shape))
        self.data = np.where(valid, data, 0.0) / flux_scale
        self.weights = weights * flux_scale**2
        self.flux_scale = flux_scale

    @classmethod
    def from_cutouts(cls, cutouts, flux_scale: float = 1.0) -> GaussianCutouts:
        """The isolated cutouts of a `deconvjax.em.Cutouts` batch (one source each, at the
        centre) as a linear-Gaussian problem in units of ``flux_scale``."""
        from .cutouts import Cutouts

        if not isinstance(cutouts, Cutouts):
            raise TypeError(f"cutouts: expected a deconvjax.em.Cutouts, got {type(cutouts).__name__}")
        return cls(np.where(cutouts.mask, np.nan, cutouts.data), np.where(cutouts.mask, 0.0, cutouts.weights),
                   cutouts.psf, flux_scale=flux_scale)

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[1:])

    def chunks(self, chunk_size: int):
        """``(index, data, weights, kernel_fft, valid)`` device arrays of ``chunk_size``
        cutouts each, the last one padded with masked copies (``valid`` False)."""
        n, dt = len(self), _dtype()
        for start in range(0, n, chunk_size):
            idx = np.arange(start, start + chunk_size)
            take = np.minimum(idx, n - 1)
            ok = idx < n
            w = self.weights[take] * ok[:, None, None, None]
            yield (jnp.asarray(idx), jnp.asarray(self.data[take], dt), jnp.asarray(w, dt),
                   jnp.asarray(self.kernel_fft[take], jnp.result_type(dt, jnp.complex64)),
                   jnp.asarray(ok))


# ----------------------------------------------------------------------------- core


def _blur(kfft, img, fft_shape):
    h, w = img.shape[-2:]
    return jnp.fft.irfft2(jnp.fft.rfft2(img, s=fft_shape) * kfft, s=fft_shape)[..., :h, :w]


def _blur_columns(kfft, R, shape, fft_shape):
    """``A R`` for the columns of ``R`` (each a flattened ``(band, h, w)`` image)."""
    cols = R.T.reshape((R.shape[1],) + shape)
    return jax.vmap(lambda c: _blur(kfft, c, fft_shape))(cols).reshape(R.shape[1], -1).T


def _posterior_one(mu, R, y, w, kfft, fft_shape):
    """Exact posterior of one cutout: its mean, a factor ``B`` of its covariance
    (``Sigma_i = B B^T``) and the cutout's marginal log-likelihood."""
    shape = y.shape
    wf = w.reshape(-1)
    sw = jnp.sqrt(wf)
    V = sw[:, None] * _blur_columns(kfft, R, shape, fft_shape)  # W^1/2 A R
    u = sw * (y.reshape(-1) - _blur(kfft, mu.reshape(shape), fft_shape).reshape(-1))
    M = jnp.eye(R.shape[1], dtype=R.dtype) + V.T @ V
    C = jnp.linalg.cholesky(M)
    z = jsl.cho_solve((C, True), V.T @ u)
    mean = mu + R @ z
    B = jsl.solve_triangular(C, R.T, lower=True).T  # R C^-T
    valid = wf > 0
    # u^T (I + V V^T)^-1 u = min_z |u - V z|^2 + |z|^2, a sum of squares.
    quad = jnp.sum((u - V @ z) ** 2) + jnp.sum(z**2)
    logdet = 2 * jnp.sum(jnp.log(jnp.diag(C))) - jnp.sum(jnp.where(valid, jnp.log(jnp.where(valid, wf, 1.0)), 0.0))
    ll = -0.5 * (quad + logdet + jnp.sum(valid) * jnp.log(2 * jnp.pi))
    return mean, B, ll


@CountingJit
def _estep_chunk(mu, R, acc, y, w, kfft, valid, fft_shape):
    """Add one chunk's posterior moments (about the current ``mu``) and log-likelihoods
    to the accumulators ``(sum d, sum d d^T + Sigma_i, sum log p)``."""
    mean, B, ll = jax.vmap(_posterior_one, in_axes=(None, None, 0, 0, 0, None))(mu, R, y, w, kfft, fft_shape)
    v = valid.astype(mu.dtype)
    d = (mean - mu) * v[:, None]
    s1, s2, sl = acc
    s2 = s2 + jnp.einsum("cnk,cmk,c->nm", B, B, v) + d.T @ d
    return s1 + d.sum(0), s2, sl + jnp.sum(ll * v)


@CountingJit
def _moments_chunk(mu, R, y, w, kfft, fft_shape):
    mean, B, _ = jax.vmap(_posterior_one, in_axes=(None, None, 0, 0, 0, None))(mu, R, y, w, kfft, fft_shape)
    return mean, jnp.einsum("cnk,cmk->cnm", B, B)


@CountingJit
def _sample_chunk(key, idx, mu, R, y, w, kfft, n_samples, fft_shape):
    def one(i, y, w, kfft):
        mean, B, _ = _posterior_one(mu, R, y, w, kfft, fft_shape)
        eps = jax.random.normal(jax.random.fold_in(key, i), (n_samples, B.shape[1]), B.dtype)
        return mean + eps @ B.T
    return jax.vmap(one)(idx, y, w, kfft)


def _dft_matrix(h, w, dtype):
    fy = np.fft.fft(np.eye(h), norm="ortho")
    fx = np.fft.fft(np.eye(w), norm="ortho")
    return jnp.asarray(np.kron(fy, fx), jnp.result_type(dtype, jnp.complex64))


@CountingJit
def _mstep(mu, acc, n_total, kind, rank, shape, floor):
    """New ``(mu, Sigma, R, extra)`` from the accumulated moments; ``extra`` holds the
    family's own parameters (``power`` for stationary, ``(U, d)`` for low-rank)."""
    s1, s2, _ = acc
    dbar = s1 / n_total
    S = s2 / n_total - jnp.outer(dbar, dbar)
    S = 0.5 * (S + S.T)
    n = S.shape[0]
    extra = ()
    if kind == "diagonal":
        S = jnp.diag(jnp.maximum(jnp.diag(S), floor))
    elif kind == "stationary":
        nb, h, w = shape
        F = _dft_matrix(h, w, S.dtype)
        blocks = S.reshape(nb, h * w, nb, h * w)[jnp.arange(nb), :, jnp.arange(nb), :]
        power = jnp.einsum("ki,bij,kj->bk", F, blocks, jnp.conj(F)).real
        power = jnp.maximum(power, floor)
        cov_b = jnp.einsum("ki,bk,kj->bij", jnp.conj(F), power, F).real
        S = jax.scipy.linalg.block_diag(*[cov_b[b] for b in range(nb)])
        extra = (power.reshape(shape),)
    elif kind == "lowrank":
        lam, vec = jnp.linalg.eigh(S)
        lam, vec = lam[::-1], vec[:, ::-1]
        sig2 = jnp.mean(lam[rank:]) if rank < n else jnp.zeros((), S.dtype)
        U = vec[:, :rank] * jnp.sqrt(jnp.maximum(lam[:rank] - sig2, 0.0))
        d = jnp.maximum(jnp.diag(S) - jnp.sum(U**2, axis=1), floor)
        S = U @ U.T + jnp.diag(d)
        extra = (U, d)
    lam, vec = jnp.linalg.eigh(S)
    R = vec * jnp.sqrt(jnp.maximum(lam, 0.0))
    return mu + dbar, S, R, extra


@CountingJit
def _root(cov):
    lam, vec = jnp.linalg.eigh(0.5 * (cov + cov.T))
    return vec * jnp.sqrt(jnp.maximum(lam, 0.0))


def compilation_count() -> int:
    """Programs compiled so far by this module's jitted functions (a test hook: it must
    not grow between chunks or laps)."""
    fns = (_estep_chunk, _moments_chunk, _sample_chunk, _mstep, _root)
    return sum(f.traces for f in fns)


# ----------------------------------------------------------------------------- API


def _default_chunk(n_pix: int, n_cutouts: int) -> int:
    # ~2**25 numbers for the chunk's stacked posterior factors (128 MiB in float32).
    return int(max(1, min(n_cutouts, 2**25 // max(n_pix**2, 1))))


def _check_params(mean, cov, shape, name_mean="mean", name_cov="cov"):
    n = int(np.prod(shape))
    mean = real_array(mean, name_mean)
    if mean.size != n:
        raise ValueError(f"{name_mean}: expected {n} values (shape {shape}), got shape {mean.shape}")
    cov = real_array(cov, name_cov)
    if cov.shape != (n, n):
        raise ValueError(f"{name_cov}: expected shape ({n}, {n}), got {cov.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError(f"{name_mean}, {name_cov}: must be finite")
    return mean.reshape(-1), cov


def _check_cutouts(cutouts):
    if not isinstance(cutouts, GaussianCutouts):
        raise TypeError(f"cutouts: expected a GaussianCutouts, got {type(cutouts).__name__}")


def _check_chunk(chunk_size, cutouts):
    n_pix = int(np.prod(cutouts.image_shape))
    if chunk_size is None:
        return _default_chunk(n_pix, len(cutouts))
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    return int(chunk_size)


def _estep(mu, R, cutouts, chunk_size):
    n = mu.shape[0]
    acc = (jnp.zeros(n, mu.dtype), jnp.zeros((n, n), mu.dtype), jnp.zeros((), mu.dtype))
    for _, y, w, k, ok in cutouts.chunks(chunk_size):
        acc = _estep_chunk(mu, R, acc, y, w, k, ok, cutouts.fft_shape)
    return acc


def marginal_log_likelihood(mean: Float[ArrayLike, "band h w"], cov: Float[ArrayLike, "n n"],
                            cutouts: GaussianCutouts, *, chunk_size: int | None = None) -> float:
    """``sum_i log N(y_i; A_i mean, A_i cov A_i^T + W_i^-1)`` over the unmasked pixels,
    in prior units (``data / flux_scale``).

    **Arguments:**

    - `mean`: prior mean, ``(band, h, w)`` (or flattened).
    - `cov`: prior covariance, ``(n, n)`` for ``n = band * h * w``, positive
      semi-definite.
    - `cutouts`: the `GaussianCutouts`.
    - `chunk_size`: cutouts per compiled call (default: as many as fit ~128 MiB).
    """
    _check_cutouts(cutouts)
    mean, cov = _check_params(mean, cov, cutouts.image_shape)
    dt = _dtype()
    mu, R = jnp.asarray(mean, dt), _root(jnp.asarray(cov, dt))
    return float(_estep(mu, R, cutouts, _check_chunk(chunk_size, cutouts))[2])


def posterior_moments(mean: Float[ArrayLike, "band h w"], cov: Float[ArrayLike, "n n"],
                      cutouts: GaussianCutouts, *, chunk_size: int | None = None
                      ) -> tuple[Float[np.ndarray, "cutout band h w"], Float[np.ndarray, "cutout n n"]]:
    """Exact posterior mean and covariance of every cutout's image under the prior
    ``N(mean, cov)``: ``Sigma_i = (cov^-1 + A_i^T W_i A_i)^-1``,
    ``mu_i = Sigma_i (cov^-1 mean + A_i^T W_i y_i)`` (computed without inverting ``cov``).

    **Arguments:** as `marginal_log_likelihood`. Returns host arrays ``(means, covs)``
    (``covs`` holds ``cutout * n**2`` numbers).
    """
    _check_cutouts(cutouts)
    mean, cov = _check_params(mean, cov, cutouts.image_shape)
    dt = _dtype()
    mu, R = jnp.asarray(mean, dt), _root(jnp.asarray(cov, dt))
    means, covs = [], []
    for _, y, w, k, _ok in cutouts.chunks(_check_chunk(chunk_size, cutouts)):
        m, c = _moments_chunk(mu, R, y, w, k, cutouts.fft_shape)
        means.append(np.asarray(m))
        covs.append(np.asarray(c))
    n = len(cutouts)
    return (np.concatenate(means)[:n].reshape((n,) + cutouts.image_shape),
            np.concatenate(covs)[:n])


def posterior_samples(key: PRNGKeyArray, mean: Float[ArrayLike, "band h w"],
                      cov: Float[ArrayLike, "n n"], cutouts: GaussianCutouts, n_samples: int, *,
                      chunk_size: int | None = None) -> Float[np.ndarray, "cutout sample band h w"]:
    """Exact samples of every cutout's posterior ``N(mu_i, Sigma_i)`` (see
    `posterior_moments`), in prior units.

    **Arguments:**

    - `key`: PRNG key; cutout ``i`` draws from ``jax.random.fold_in(key, i)``, so its
      samples do not depend on ``chunk_size``.
    - `mean`, `cov`, `cutouts`, `chunk_size`: as `marginal_log_likelihood`.
    - `n_samples`: samples per cutout.
    """
    _check_cutouts(cutouts)
    mean, cov = _check_params(mean, cov, cutouts.image_shape)
    if int(n_samples) < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples}")
    dt = _dtype()
    mu, R = jnp.asarray(mean, dt), _root(jnp.asarray(cov, dt))
    out = []
    for idx, y, w, k, _ok in cutouts.chunks(_check_chunk(chunk_size, cutouts)):
        out.append(np.asarray(_sample_chunk(key, idx, mu, R, y, w, k, int(n_samples), cutouts.fft_shape)))
    n = len(cutouts)
    return np.concatenate(out)[:n].reshape((n, int(n_samples)) + cutouts.image_shape)


@dataclasses.dataclass
class GaussianEMResult:
    """A Gaussian prior ``N(mean, cov)`` fitted by `gaussian_em`, in prior units.

    **Attributes:**

    - `mean`: ``(band, h, w)``.
    - `cov`: ``(n, n)`` dense covariance, ``n = band * h * w`` (flattened in C order).
    - `covariance`: the family fitted (``"full"``, ``"lowrank"``, ``"diagonal"``,
      ``"stationary"``).
    - `factor`, `diag`: for ``"lowrank"``, ``cov = factor @ factor.T + diag(diag)``.
    - `power`: for ``"stationary"``, the ``(band, h, w)`` variance of each orthonormal
      FFT coefficient (`deconvjax.diffusion.StationaryGaussianDenoiser`'s ``power``).
    - `log_likelihood`: ``laps + 1`` marginal log-likelihoods, at the start and after
      every lap (prior units).
    - `lap_seconds`: wall time of every lap (compilation included in the first).
    - `flux_scale`: the cutouts' flux scale.
    """

    mean: np.ndarray
    cov: np.ndarray
    covariance: str
    log_likelihood: np.ndarray
    lap_seconds: np.ndarray
    flux_scale: float
    factor: np.ndarray | None = None
    diag: np.ndarray | None = None
    power: np.ndarray | None = None

    def denoiser(self) -> GaussianDenoiser:
        """The exact denoiser of ``N(mean, cov)`` (``exact_jacobian=True``): a prior for
        `deconvjax.posterior.deconvolve` together with an SDE, e.g.
        ``deconvolve(key, result.denoiser(), observations, sde=VESDE(), embed=...)``
        (the samples are in prior units; multiply by `flux_scale`, or pass an embedding
        that does, for data units)."""
        return GaussianDenoiser(self.mean, self.cov)

    def posterior_moments(self, cutouts: GaussianCutouts, **kwargs):
        """`posterior_moments` under this prior."""
        return posterior_moments(self.mean, self.cov, cutouts, **kwargs)

    def posterior_samples(self, key: PRNGKeyArray, cutouts: GaussianCutouts, n_samples: int, **kwargs):
        """`posterior_samples` under this prior."""
        return posterior_samples(key, self.mean, self.cov, cutouts, n_samples, **kwargs)

    def marginal_log_likelihood(self, cutouts: GaussianCutouts, **kwargs) -> float:
        """`marginal_log_likelihood` under this prior."""
        return marginal_log_likelihood(self.mean, self.cov, cutouts, **kwargs)


def initial_moments(cutouts: GaussianCutouts) -> tuple[Float[np.ndarray, "band h w"], Float[np.ndarray, "n n"]]:
    """EM's default start: the inverse-variance weighted mean of the (PSF-blurred) data
    per pixel (0 where no cutout sees the pixel), and a scaled identity whose variance
    is the weighted mean square of the data about that mean (signal plus noise: a broad
    start, which EM narrows)."""
    _check_cutouts(cutouts)
    y, w = cutouts.data, cutouts.weights
    wsum = w.sum(0)
    mean = np.where(wsum > 0, (w * y).sum(0) / np.where(wsum > 0, wsum, 1.0), 0.0)
    valid = w > 0
    var = float(np.sum(valid * (y - mean) ** 2) / valid.sum())
    var = var if var > 0 else 1.0
    return mean, var * np.eye(mean.size)


def data_moments(cutouts: GaussianCutouts, *, clip: float = 1e-4
                 ) -> tuple[Float[np.ndarray, "band h w"], Float[np.ndarray, "n n"]]:
    """A start from the data's own covariance: the weighted data mean of `initial_moments`,
    and the empirical covariance of the (PSF-blurred) data over the cutouts (each pixel
    pair over the cutouts that see both) minus the mean noise variance on the diagonal,
    made positive definite by clipping its eigenvalues at ``clip`` times the largest.

    It is the covariance of the blurred images, not of the images, so still a start; but
    it already has the galaxies' shapes, where the scaled identity spends its first laps
    shedding the noise variance it starts with (measured in benchmarks/RESULTS.md: a
    better posterior mean after three laps)."""
    _check_cutouts(cutouts)
    if not (0.0 < float(clip) < 1.0):
        raise ValueError(f"clip: expected a number in (0, 1), got {clip!r}")
    mean, _ = initial_moments(cutouts)
    w = np.asarray(cutouts.weights, np.float64).reshape(len(cutouts), -1)
    y = np.asarray(cutouts.data, np.float64).reshape(len(cutouts), -1)
    seen = (w > 0).astype(np.float64)
    dev = np.where(w > 0, y - mean.reshape(1, -1), 0.0)
    pairs = seen.T @ seen
    cov = (dev.T @ dev) / np.maximum(pairs, 1.0)
    noise = np.where(w > 0, 1.0 / np.where(w > 0, w, 1.0), 0.0).sum(0) / np.maximum(seen.sum(0), 1.0)
    cov -= np.diag(noise)
    cov = 0.5 * (cov + cov.T)
    vals, vecs = np.linalg.eigh(cov)
    top = float(vals.max())
    if not top > 0:
        # No signal above the noise: fall back on the broad start.
        return initial_moments(cutouts)
    vals = np.maximum(vals, clip * top)
    return mean, (vecs * vals) @ vecs.T


def gaussian_em(
    cutouts: GaussianCutouts,
    *,
    laps: int,
    covariance: str = "full",
    rank: int | None = None,
    init_mean: Float[ArrayLike, "band h w"] | None = None,
    init_cov: Float[ArrayLike, "n n"] | None = None,
    chunk_size: int | None = None,
    floor: float = 1e-8,
    progress: bool = False,
) -> GaussianEMResult:
    """Fit ``N(mean, cov)`` to the cutouts by closed-form EM with the exact posterior.

    Per lap: one pass over the cutouts in chunks of ``chunk_size`` (one compiled,
    vmapped E-step serves every chunk and lap; the last chunk is padded), then the
    M-step and the projection onto the covariance family. The marginal log-likelihood
    of the parameters entering each lap comes from the same pass.

    **Arguments:**

    - `cutouts`: the `GaussianCutouts` (data, weights, PSFs, flux scale).
    - `laps`: EM iterations (>= 0).
    - `covariance`: ``"full"``; ``"diagonal"`` (independent pixels); ``"stationary"``
      (per band, diagonal in the periodic FFT basis: a translation-invariant field, no
      cross-band correlation); ``"lowrank"`` (``U U^T + diag(d)``, ``U`` of ``rank``
      columns: the leading eigenvectors of the full update, shrunk by the mean of the
      remaining eigenvalues as in probabilistic PCA, and ``d`` the rest of each pixel's
      variance). The first three are exact EM within their family and never decrease
      the likelihood; the low-rank projection is not guaranteed to.
    - `rank`: number of columns of ``U`` (``"lowrank"`` only, ``1 <= rank < n``).
    - `init_mean`, `init_cov`: the start (default `initial_moments`: weighted data mean
      and a scaled identity).
    - `chunk_size`: cutouts per compiled call (default: as many as keep the chunk's
      ``chunk * n**2`` posterior factors under ~2**25 numbers).
    - `floor`: smallest variance kept on the diagonal / power spectrum of the projected
      families.
    - `progress`: print the log-likelihood after every lap.
    """
    _check_cutouts(cutouts)
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance: expected one of {COVARIANCES}, got {covariance!r}")
    shape = cutouts.image_shape
    n = int(np.prod(shape))
    if covariance == "lowrank":
        if rank is None or not (1 <= int(rank) < n):
            raise ValueError(f"rank: covariance='lowrank' needs 1 <= rank < {n}, got {rank}")
        rank = int(rank)
    elif rank is not None:
        raise ValueError(f"rank: only used with covariance='lowrank', got rank={rank} with {covariance!r}")
    if int(laps) < 0:
        raise ValueError(f"laps: expected a non-negative integer, got {laps}")
    m0, c0 = initial_moments(cutouts)
    mean = m0 if init_mean is None else init_mean
    cov = c0 if init_cov is None else init_cov
    mean, cov = _check_params(mean, cov, shape, "init_mean", "init_cov")
    chunk = _check_chunk(chunk_size, cutouts)
    dt = _dtype()
    mu = jnp.asarray(mean, dt)
    S = jnp.asarray(cov, dt)
    R = _root(S)
    n_total = jnp.asarray(len(cutouts), dt)
    floor_a = jnp.asarray(floor, dt)
    history, seconds, extra = [], [], ()
    for lap in range(int(laps)):
        t0 = time.perf_counter()
        acc = _estep(mu, R, cutouts, chunk)
        mu, S, R, extra = _mstep(mu, acc, n_total, covariance, rank or 0, shape, floor_a)
        history.append(float(acc[2]))
        seconds.append(time.perf_counter() - t0)
        if progress:
            print(f"lap {lap}: log-likelihood {history[-1]:.6g} ({seconds[-1]:.2f} s)")
    history.append(float(_estep(mu, R, cutouts, chunk)[2]))
    res = GaussianEMResult(mean=np.asarray(mu, np.float64).reshape(shape), cov=np.asarray(S, np.float64),
                           covariance=covariance, log_likelihood=np.asarray(history),
                           lap_seconds=np.asarray(seconds), flux_scale=cutouts.flux_scale)
    if covariance == "lowrank" and extra:
        res.factor, res.diag = (np.asarray(e, np.float64) for e in extra)
    elif covariance == "stationary" and extra:
        res.power = np.asarray(extra[0], np.float64)
    return res
