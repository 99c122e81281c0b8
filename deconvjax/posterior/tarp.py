"""TARP expected-coverage test (Lemos et al. 2023), implemented here.

For each simulated problem ``j`` with truth ``theta_j`` and posterior samples
``theta_ji``, draw a reference point ``r_j``; the coverage statistic is the fraction of
samples closer to ``r_j`` than the truth is. For a calibrated posterior it is uniform on
[0, 1] for any choice of reference distribution, so the expected coverage probability
``ECP(alpha) = P(f < alpha)`` lies on the diagonal. Ties and the finite number of
samples are handled by a randomised rank, ``f = (rank + u) / (n_samples + 1)`` with
``u ~ U(0, 1)``, which is exactly uniform under calibration (without it ECP is a
staircase off the diagonal by up to ``1 / (n_samples + 1)``).
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["tarp_coverage", "tarp_max_deviation"]


def tarp_coverage(
    key: PRNGKeyArray,
    samples: Float[Array, " n_sims n_samples *dims"],
    truths: Float[Array, " n_sims *dims"],
    *,
    references: Float[Array, " n_sims *dims"] | None = None,
    n_alpha: int = 101,
) -> tuple[Float[Array, " n_alpha"], Float[Array, " n_alpha"], Float[Array, " n_sims"]]:
    """``(alpha, ecp, f)``: credibility levels, expected coverage at each, and the
    per-problem coverage statistic.

    Dimensions are standardised by the truths' per-dimension std (so that no pixel
    dominates the distance). Default references: uniform in the truths' bounding box,
    per dimension (the paper's choice).
    """
    samples = jnp.asarray(samples)
    truths = jnp.asarray(truths)
    if samples.ndim < 3 or samples.shape[0] != truths.shape[0] or samples.shape[2:] != truths.shape[1:]:
        raise ValueError(f"samples and truths: expected shapes (n_sims, n_samples, *dims) and "
                         f"(n_sims, *dims), got {samples.shape} and {truths.shape}")
    n_sims, n_samples = samples.shape[:2]
    s = samples.reshape(n_sims, n_samples, -1)
    t = truths.reshape(n_sims, -1)
    scale = jnp.std(t, axis=0) + 1e-12
    s, t = s / scale, t / scale
    k_ref, k_u = jr.split(key)
    if references is None:
        lo, hi = t.min(0), t.max(0)
        references = lo + (hi - lo) * jr.uniform(k_ref, t.shape)
    else:
        references = jnp.asarray(references).reshape(n_sims, -1) / scale
    d_true = jnp.linalg.norm(t - references, axis=-1)
    d_s = jnp.linalg.norm(s - references[:, None], axis=-1)
    rank = jnp.sum(d_s < d_true[:, None], axis=1)
    f = (rank + jr.uniform(k_u, (n_sims,))) / (n_samples + 1)
    alpha = jnp.linspace(0.0, 1.0, n_alpha)
    ecp = jnp.mean(f[None, :] < alpha[:, None], axis=1)
    return alpha, ecp, f


def tarp_max_deviation(alpha: Array, ecp: Array) -> Array:
    """``max |ECP(alpha) - alpha|``: 0 for a calibrated posterior (up to sampling noise,
    about ``0.87 / sqrt(n_sims)`` on average)."""
    return jnp.max(jnp.abs(ecp - alpha))
