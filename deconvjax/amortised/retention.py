"""Sample-quality metrics of amortised deconvolution (after Xue et al.): the share of
samples consistent with the observation ("percent retained") and the spread of the retained
samples over image features ("conditional variance").

A sample ``x`` of an observation ``y = h * x + n`` (white noise of standard deviation
``sigma``, periodic convolution of `deconvjax.amortised.convolution`) is *retained* when the
chi2 per pixel of its re-convolved residual, ``mean((h * x - y)^2) / sigma^2``, is at most
``1 + slack``: the truth itself scores about 1 (spread ``sqrt(2 / n_pixels)``, 0.04 for a
32 x 32 image), so the default ``slack = 0.25`` accepts samples whose residual is at most a
quarter of the noise variance above the noise floor.

Features (`image_features`), fixed and weight-free, per image (summed over bands):

- the azimuthally averaged power spectrum ``|FFT(x)|^2 / n_pixels`` in integer radial
  frequency bins ``0 .. min(y, x) // 2`` (the k = 0 bin is ``flux^2 / n_pixels``);
- the image moments: flux ``sum x``, centroid ``(y_c, x_c)`` and the central second moments
  ``(Q_yy, Q_xx, Q_xy)`` (unweighted, in pixels^2, normalised by the flux).

The conditional variance of one observation is the total variance (trace of the covariance)
of these features over its retained samples (`conditional_variances`, one value per
observation); `conditional_variance` averages it over the observations that retain at least
two samples. The mean can be driven by one observation whose samples disagree in a dominant
feature (the flux, through the k = 0 power bin), so the median over observations is worth
reporting beside it.
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from .convolution import convolve

__all__ = ["DEFAULT_SLACK", "chi2_per_pixel", "is_retained", "image_features",
           "conditional_variances", "conditional_variance"]

#: Default slack of `is_retained`: chi2 per pixel at most ``1 + 0.25``.
DEFAULT_SLACK = 0.25


def _check_image_args(sample, observed, psf):
    if observed.ndim != 3:
        raise ValueError(f"observed: expected one (band, y, x) image, got shape {observed.shape}")
    if sample.shape[-3:] != observed.shape:
        raise ValueError(f"sample: expected trailing shape {observed.shape} (the observation's), "
                         f"got {sample.shape}")
    if psf.ndim != 3 or psf.shape[0] != observed.shape[0]:
        raise ValueError(f"psf: expected ({observed.shape[0]}, h, w), got {psf.shape}")
    if psf.shape[-2] > observed.shape[-2] or psf.shape[-1] > observed.shape[-1]:
        raise ValueError(f"psf: expected at most the image's size {observed.shape[-2:]}, "
                         f"got {psf.shape[-2:]}")


def chi2_per_pixel(sample: Float[ArrayLike, "*batch band y x"], observed: Float[ArrayLike, "band y x"],
                   psf: Float[ArrayLike, "band h w"], sigma: float) -> Float[Array, "*batch"]:
    """``mean((psf * sample - observed)^2) / sigma^2`` over the ``(band, y, x)`` axes, with
    the periodic convolution of `deconvjax.amortised.convolution.convolve`."""
    sample, observed, psf = jnp.asarray(sample, float), jnp.asarray(observed, float), jnp.asarray(psf, float)
    _check_image_args(sample, observed, psf)
    if not float(sigma) > 0:
        raise ValueError(f"sigma: expected a positive noise standard deviation, got {sigma}")
    resid = convolve(sample, psf) - observed
    return jnp.mean(resid**2, axis=(-3, -2, -1)) / float(sigma) ** 2


def is_retained(sample: Float[ArrayLike, "*batch band y x"], observed: Float[ArrayLike, "band y x"],
                psf: Float[ArrayLike, "band h w"], sigma: float,
                slack: float = DEFAULT_SLACK) -> Bool[Array, "*batch"]:
    """Whether ``chi2_per_pixel(sample, observed, psf, sigma) <= 1 + slack``."""
    if not slack >= 0:
        raise ValueError(f"slack: expected a non-negative number, got {slack}")
    return chi2_per_pixel(sample, observed, psf, sigma) <= 1.0 + slack


def image_features(images: Float[ArrayLike, "n band y x"]) -> Float[np.ndarray, "n f"]:
    """Radial power spectrum and moments of each image (see the module docstring):
    ``min(y, x) // 2 + 1`` spectrum bins then 6 moments (flux, y_c, x_c, Q_yy, Q_xx, Q_xy)."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"images: expected (n, band, y, x), got shape {x.shape}")
    x = x.sum(axis=1)
    n, ny, nx = x.shape
    power = np.abs(np.fft.fft2(x)) ** 2 / (ny * nx)
    ky = np.fft.fftfreq(ny) * ny
    kx = np.fft.fftfreq(nx) * nx
    k = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(int)
    kmax = min(ny, nx) // 2
    spectrum = np.stack([power[:, k == r].mean(axis=1) for r in range(kmax + 1)], axis=1)
    yy, xx = np.meshgrid(np.arange(ny, dtype=float), np.arange(nx, dtype=float), indexing="ij")
    flux = x.sum(axis=(1, 2))
    # A zero-flux image has no centroid; its moments are reported as 0 rather than NaN.
    safe = np.where(flux == 0, 1.0, flux)
    yc = (x * yy).sum(axis=(1, 2)) / safe
    xc = (x * xx).sum(axis=(1, 2)) / safe
    dy = yy[None] - yc[:, None, None]
    dx = xx[None] - xc[:, None, None]
    qyy = (x * dy**2).sum(axis=(1, 2)) / safe
    qxx = (x * dx**2).sum(axis=(1, 2)) / safe
    qxy = (x * dx * dy).sum(axis=(1, 2)) / safe
    moments = np.stack([flux, yc, xc, qyy, qxx, qxy], axis=1)
    return np.concatenate([spectrum, moments], axis=1)


def conditional_variances(samples_per_obs: Float[ArrayLike, "n_obs n_samples band y x"],
                          retained_mask: Bool[ArrayLike, "n_obs n_samples"]) -> Float[np.ndarray, " n_obs"]:
    """Per observation, the total feature variance (`image_features`, sample variance with
    ``ddof=1``) of its retained samples; NaN where fewer than two are retained."""
    s = np.asarray(samples_per_obs, dtype=np.float64)
    mask = np.asarray(retained_mask, dtype=bool)
    if s.ndim != 5:
        raise ValueError(f"samples_per_obs: expected (n_obs, n_samples, band, y, x), got {s.shape}")
    if mask.shape != s.shape[:2]:
        raise ValueError(f"retained_mask: expected shape {s.shape[:2]}, got {mask.shape}")
    values = np.full(len(s), np.nan)
    for i, (obs, keep) in enumerate(zip(s, mask, strict=True)):
        if keep.sum() >= 2:
            values[i] = float(image_features(obs[keep]).var(axis=0, ddof=1).sum())
    return values


def conditional_variance(samples_per_obs: Float[ArrayLike, "n_obs n_samples band y x"],
                         retained_mask: Bool[ArrayLike, "n_obs n_samples"]) -> float:
    """Mean over observations of `conditional_variances`. Observations with fewer than two
    retained samples are left out; NaN when none has two."""
    values = conditional_variances(samples_per_obs, retained_mask)
    values = values[np.isfinite(values)]
    return float(np.mean(values)) if len(values) else float("nan")
