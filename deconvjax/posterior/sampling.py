"""Drawing posterior samples: `deconvjax.diffusion.samplers.sample` run on a `PosteriorDenoiser`.

Any sampler object works (`DPMSolver2M` by default); inside ``jit`` / ``vmap`` (e.g. a batch
of posteriors in one compiled program) pass ``traceable=True``, which runs the same sampler
as a ``lax.scan`` (``unroll=True`` on the sampler to unroll it)."""

from __future__ import annotations

from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..diffusion.samplers import DEFAULT_SAMPLER, AbstractSampler, sample
from ..diffusion.sde import AbstractSDE
from .base import PosteriorDenoiser

__all__ = ["sample_posterior"]


def sample_posterior(key: PRNGKeyArray, posterior: PosteriorDenoiser, sde: AbstractSDE,
                     n_samples: int, sampler: AbstractSampler = DEFAULT_SAMPLER,
                     **kwargs) -> tuple[Float[Array, " n *xshape"], Int[Array, ""]]:
    """``n_samples`` posterior samples of the prior variable (``posterior.x_shape``):
    ``sample(key, posterior, sampler, sde=sde, shape=posterior.x_shape, ...)``.

    ``sampler``: any `deconvjax.diffusion.samplers` sampler (default `DPMSolver2M()`;
    `AdaptiveODE()` is the exact choice for analytic priors). Extra keyword arguments
    (``batch_size``, ``progress``, ``traceable``, ...) go to ``sample``.
    """
    if not isinstance(posterior, PosteriorDenoiser):
        raise TypeError(f"posterior: expected a PosteriorDenoiser, got {type(posterior).__name__}")
    return sample(key, posterior, sampler, sde=sde, shape=posterior.x_shape,
                  n_samples=n_samples, **kwargs)
