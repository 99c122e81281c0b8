"""Noise-corrected PSNR against COSMOS truths, for benchmarks/posterior.py and
benchmarks/em_cosmos.py.

An HST COSMOS stamp used as the truth carries its own noise (per-pixel variance ``s2``,
`deconvjax.diffusion.data.cosmos_noise_variance`). If an estimate's error against the
noiseless galaxy is independent of that noise, its mean squared error against the stamp
is the error against the noiseless galaxy plus ``s2``: ``MSE - s2`` estimates the former.
"""

from __future__ import annotations

import numpy as np

__all__ = ["noise_corrected_excess", "noise_corrected_psnr", "json_safe"]


def noise_corrected_excess(estimates, truths, noise_var) -> np.ndarray:
    """Per-galaxy ``(MSE - s2) / peak^2``: the excess of the mean squared error over the
    truth's own noise variance, in units of the truth's squared data range (``max - min``,
    the peak of ``psnr`` in benchmarks/posterior.py).

    Not clipped: a value at or below zero is an estimate whose error against the stamp is
    within the sampling scatter of the truth's noise (its MSE over a finite stamp, and the
    Monte Carlo ``s2``), or one that reproduces part of that noise (a view made from the
    stamp carries a blurred copy of it). Clipping each galaxy at zero or a floor would bias
    the average, so the sign is kept and only the average is floored (`noise_corrected_psnr`).

    **Arguments:**

    - `estimates`: ``(n, ...)`` estimates, one per galaxy.
    - `truths`: ``(n, ...)`` truths of the same shape.
    - `noise_var`: ``(n,)`` per-pixel variance of each truth's own noise.
    """
    est = np.asarray(estimates, np.float64)
    tru = np.asarray(truths, np.float64)
    var = np.asarray(noise_var, np.float64).reshape(-1)
    if est.shape != tru.shape:
        raise ValueError(f"estimates, truths: expected the same shape, got {est.shape} and {tru.shape}")
    if var.shape != (len(tru),):
        raise ValueError(f"noise_var: expected shape ({len(tru)},), got {var.shape}")
    axes = tuple(range(1, tru.ndim))
    mse = np.mean((est - tru) ** 2, axis=axes)
    peak2 = (tru.max(axis=axes) - tru.min(axis=axes)) ** 2
    return (mse - var) / peak2


def noise_corrected_psnr(estimates, truths, noise_var) -> float:
    """``10 log10(1 / mean_g[(MSE_g - s2_g) / peak_g^2])``: the noise-corrected PSNR,
    averaged over galaxies before the logarithm (the normalised excess error is averaged,
    so one galaxy whose ``MSE - s2`` is near zero cannot dominate the mean, as it would
    in an average of ``peak^2 / (MSE - s2)``).

    Returns ``inf`` when the average excess is at or below zero: the estimates are then
    as close to the stamps as the stamps' own noise allows to tell. See
    `noise_corrected_excess` for the arguments.
    """
    mean = float(np.mean(noise_corrected_excess(estimates, truths, noise_var)))
    return float(-10 * np.log10(mean)) if mean > 0 else float("inf")


def json_safe(value):
    """``value`` with every non-finite float (a noise-corrected PSNR of ``inf``, a gain of
    ``nan``) replaced by None, in nested dicts and lists, so that the JSON line is strict
    JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
