"""Drawing posterior samples: the diffusion samplers run on a `PosteriorDenoiser`."""

from __future__ import annotations

from jaxtyping import Array, Float, Int, PRNGKeyArray

from ..diffusion.sample import sample
from ..diffusion.sde import AbstractSDE
from .base import PosteriorDenoiser

__all__ = ["sample_posterior"]


def sample_posterior(key: PRNGKeyArray, posterior: PosteriorDenoiser, sde: AbstractSDE,
                     n_samples: int, *, method: str = "pf_ode",
                     **kwargs) -> tuple[Float[Array, "n *xshape"], Int[Array, ""]]:
    """``n_samples`` posterior samples of the prior variable (``posterior.x_shape``).

    ``method`` is any sampler of `deconvjax.diffusion.sample`: ``"pf_ode"`` (adaptive
    probability-flow ODE, default), ``"ode_fixed"``, ``"sde"`` (reverse SDE,
    Euler-Maruyama; the ancestral sampler's continuous-time limit), ``"sde_shark"``,
    ``"pc"``. Extra keyword arguments go to `deconvjax.diffusion.sample`.
    """
    if not isinstance(posterior, PosteriorDenoiser):
        raise TypeError(f"posterior: expected a PosteriorDenoiser, got {type(posterior).__name__}")
    return sample(key, posterior, sde, posterior.x_shape, n_samples, method=method, **kwargs)
