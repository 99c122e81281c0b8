"""`sample`: the one entry point to every sampler, for priors and posteriors alike.

It draws the starting points from the reference Gaussian, solves the batch in chunks, and
applies the final Tweedie denoising ``D(x, sigma(t_min))``; the sampler object does the
integration (`AbstractSampler`). By default a sampler runs in its host form (fast on CPU,
see `deconvjax.diffusion.samplers.base`); ``traceable=True`` runs its pure form, so that
``sample`` can be called inside ``jit`` / ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..sde import AbstractSDE
from .base import AbstractSampler
from .dpm import DPMSolver2M

__all__ = ["sample", "DEFAULT_SAMPLER"]

#: The default sampler of `sample` and of everything that samples (posteriors, the CLI).
DEFAULT_SAMPLER: AbstractSampler = DPMSolver2M()


def _final_impl(denoiser, sde, x, final_denoise):
    if final_denoise:
        sig = jnp.asarray(sde.sigma(sde.t_min), dtype=x.dtype)
        return jax.vmap(denoiser, in_axes=(0, None))(x, sig)
    return x


_final = eqx.filter_jit(_final_impl)


def sample(
    key: PRNGKeyArray,
    denoiser: Callable,
    sampler: AbstractSampler = DEFAULT_SAMPLER,
    *,
    sde: AbstractSDE,
    shape: tuple[int, ...],
    n_samples: int,
    batch_size: int | None = None,
    final_denoise: bool = True,
    x_init: Float[Array, "n_samples ..."] | None = None,
    progress: bool = False,
    traceable: bool = False,
) -> tuple[Float[Array, "n_samples ..."], Int[Array, ""]]:
    """Draw ``n_samples`` from the distribution whose denoiser is ``denoiser``.

    **Arguments:**

    - `key`: PRNG key (reference Gaussian draw and the sampler's noise).
    - `denoiser`: unbatched ``D(x, sigma)`` on arrays of ``shape``: any `AbstractDenoiser`,
      a `PosteriorDenoiser`, or any callable.
    - `sampler`: the sampler and its options (default `DPMSolver2M()`, 48 steps, 49 NFE).
    - `sde`: the forward SDE whose reverse is integrated, from ``t = 1`` to ``sde.t_min``.
    - `shape`: shape of one sample, e.g. ``(band, y, x)``.
    - `n_samples`: number of samples.
    - `batch_size`: samples per batched solve (default: all at once). Chunks are solved one
      after the other; each uses one batched denoiser call per stage.
    - `final_denoise`: apply ``D(x, sigma(t_min))`` at the end (Tweedie; one more NFE).
    - `x_init`: starting points at ``t = 1`` (``n_samples`` of them) instead of draws from
      the reference Gaussian ``N(0, sde.prior_std()^2)``.
    - `progress`: a progress bar per chunk (host loops: tqdm; diffrax: its tqdm meter).
    - `traceable`: run the sampler's pure form (`AbstractSampler.run`: ``lax.scan`` or the
      diffrax loop) so that ``sample`` can be called inside ``jit`` / ``vmap``;
      ``False`` (default): its host form (`AbstractSampler.run_host`), faster for
      networks on CPU. Same numbers either way, to float rounding.

    **Returns:**

    ``(samples, nfe)``: samples of shape ``(n_samples, *shape)`` and the number of
    denoiser evaluations per trajectory (the largest over chunks).
    """
    if not isinstance(sampler, AbstractSampler):
        raise TypeError(f"sampler: expected an AbstractSampler (e.g. DPMSolver2M()), got "
                        f"{type(sampler).__name__}")
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"sde: expected an AbstractSDE, got {type(sde).__name__}")
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples}")
    shape = tuple(int(s) for s in shape)
    batch_size = n_samples if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    k_init, k_path = jr.split(key)
    if x_init is None:
        x_init = sde.prior_std() * jr.normal(k_init, (n_samples, *shape))
    elif x_init.shape != (n_samples, *shape):
        raise ValueError(f"x_init: expected shape {(n_samples, *shape)}, got {x_init.shape}")
    final_denoise, progress = bool(final_denoise), bool(progress)
    outs, nfes = [], []
    for i, start in enumerate(range(0, n_samples, batch_size)):
        x1 = x_init[start:start + batch_size]
        k = jr.fold_in(k_path, i)
        if traceable:
            x, nfe = sampler.run(k, denoiser, sde, x1, progress=progress)
            x = _final_impl(denoiser, sde, x, final_denoise)
        else:
            x, nfe = sampler.run_host(k, denoiser, sde, x1, progress=progress)
            x = _final(denoiser, sde, x, final_denoise)
        outs.append(x)
        nfes.append(jnp.asarray(nfe, jnp.int32) + int(final_denoise))
    return jnp.concatenate(outs, axis=0), jnp.max(jnp.stack(nfes))
