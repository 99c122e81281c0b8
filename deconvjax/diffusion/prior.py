"""`ScorePrior`: a trained denoiser bundled with its SDE, image shape and flux normalisation.

The prior's variable is ``x = image / flux_scale``: one global linear flux scale for the
whole training set (never per-image peak scaling, log or asinh stretches), so the forward
model stays linear in ``x``, fluxes are conserved and posterior guidance keeps its Gaussian
algebra. Images in physical units (e.g. counts/s) are converted with `normalise` /
`denormalise`.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float

from ..checkpoint import load_checkpoint, save_checkpoint
from .data import cosmos_heldout_indices
from .sde import VESDE, VPSDE, AbstractSDE
from .unet import UNet, UNetDenoiser

__all__ = ["ScorePrior", "load_prior", "save_prior", "build_denoiser", "sde_from_hyper",
           "SHIPPED_PRIOR"]

SHIPPED_PRIOR = "galaxy32.eqx"


class ScorePrior(eqx.Module):
    """A diffusion prior over ``(bands, size, size)`` images in units of ``flux_scale``."""

    denoiser: UNetDenoiser
    sde: AbstractSDE
    flux_scale: float = eqx.field(static=True)
    info: tuple = eqx.field(static=True, default=())

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.denoiser.shape

    @property
    def exact_jacobian(self) -> bool:
        """False for the U-Net: its Jacobian is neither symmetric nor PSD, so `MMPS`
        defaults to one CG iteration with it (see `deconvjax.posterior.MMPS`)."""
        return self.denoiser.exact_jacobian

    @property
    def bands(self) -> int:
        return self.denoiser.shape[0]

    @property
    def image_size(self) -> int:
        return self.denoiser.image_size

    def normalise(self, images: Float[Array, "... band y x"]) -> Float[Array, "... band y x"]:
        """Physical units -> prior units (divide by the global ``flux_scale``)."""
        return images / self.flux_scale

    def denormalise(self, x: Float[Array, "... band y x"]) -> Float[Array, "... band y x"]:
        return x * self.flux_scale

    def cosmos_heldout(self, n: int) -> np.ndarray:
        """Rows of an ``n``-galaxy COSMOS catalog left out of this prior's training (read
        off the training options recorded in `info`; empty when none were held out)."""
        info = dict(self.info)
        return cosmos_heldout_indices(n, int(info.get("cosmos_holdout", 0)),
                                      int(info.get("cosmos_holdout_every", 0)))

    def score(self, x: Float[Array, "band y x"], sigma) -> Float[Array, "band y x"]:
        """Score of the noised prior in prior units, ``(D(x, sigma) - x) / sigma^2``."""
        return self.denoiser.score(x, sigma)


def sde_from_hyper(h: dict) -> AbstractSDE:
    if h["type"] == "VESDE":
        return VESDE(h["sigma_min"], h["sigma_max"])
    if h["type"] == "VPSDE":
        return VPSDE(h["beta_min"], h["beta_max"], h.get("t_min", 1e-3))
    raise ValueError(f"sde: unknown type {h['type']!r}")


def sde_to_hyper(sde: AbstractSDE) -> dict:
    if isinstance(sde, VESDE):
        return {"type": "VESDE", "sigma_min": sde.sigma_min_, "sigma_max": sde.sigma_max_}
    if isinstance(sde, VPSDE):
        return {"type": "VPSDE", "beta_min": sde.beta_min, "beta_max": sde.beta_max,
                "t_min": sde.t_min}
    raise TypeError(f"sde: cannot serialise {type(sde).__name__}")


def build_denoiser(net_hyper: dict) -> UNetDenoiser:
    """An (untrained) `UNetDenoiser` from its hyperparameters (the checkpoint skeleton)."""
    net = UNet(bands=net_hyper["bands"], channels=tuple(net_hyper["channels"]),
               num_res_blocks=net_hyper["num_res_blocks"], emb_dim=net_hyper["emb_dim"],
               key=jr.key(0))
    return UNetDenoiser(net, net_hyper["sigma_data"], net_hyper["image_size"])


def net_hyper_of(den: UNetDenoiser) -> dict:
    n = den.net
    return {"bands": n.bands, "channels": list(n.channels), "num_res_blocks": n.num_res_blocks,
            "emb_dim": n.emb_dim, "sigma_data": den.sigma_data, "image_size": den.image_size}


def save_prior(path: str | os.PathLike, prior: ScorePrior, extra: dict | None = None) -> None:
    """Atomically write a prior checkpoint (EMA weights + JSON hyperparameters)."""
    hyper = {"net": net_hyper_of(prior.denoiser), "sde": sde_to_hyper(prior.sde),
             "flux_scale": prior.flux_scale, "extra": dict(extra or {})}
    save_checkpoint(path, "score_prior", hyper, prior.denoiser)


def load_prior(path: str | os.PathLike | None = None, *,
               shape: tuple[int, int, int] | None = None) -> ScorePrior:
    """Load a `ScorePrior`; ``path=None`` loads the galaxy prior shipped with deconvjax.

    ``shape`` (``(bands, size, size)``), when given, must match the checkpoint's, otherwise a
    `ValueError` says which image size / band count the checkpoint was trained for.
    """
    if path is None:
        ref = resources.files("deconvjax") / "data" / "prior" / SHIPPED_PRIOR
        path = Path(str(ref))
    # Shape-only skeleton: initialising the U-Net eagerly costs many small op compilations.
    den, header = load_checkpoint(
        path, lambda h: eqx.filter_eval_shape(build_denoiser, h["net"]), kind="score_prior")
    h = header["hyper"]
    if shape is not None and tuple(shape) != den.shape:
        raise ValueError(
            f"shape: the checkpoint {path} is a prior for images of shape (bands, y, x) = "
            f"{den.shape} ({den.shape[0]} band(s), {den.image_size}x{den.image_size}), "
            f"not {tuple(shape)}"
        )
    info = tuple(sorted((k, str(v)) for k, v in h.get("extra", {}).items()))
    return ScorePrior(den, sde_from_hyper(h["sde"]), float(h["flux_scale"]), info)

