"""A conditional VAE for PSF deconvolution, the amortised baseline of Xue et al.

- encoder ``q(z | x, y, h)``: strided convolutions on the truth, the observation and the
  padded PSF (`deconvjax.amortised.conditional.pad_psf`) -> Gaussian mean and log-variance;
- prior ``p(z | y, h)``: the same architecture on the observation and PSF only;
- decoder ``x_hat(z, y, h)``: ``z`` mapped to two image-sized channels, stacked with the
  observation and the padded PSF, through dilated convolutions (receptive field larger than
  the PSF) -> the deconvolved image.

Loss (the asymmetric loss of that work), in flux-scale units, per pair:
``w_x ||x - x_hat||^2 + w_y ||h * x_hat - y||^2 / sigma^2 + KL(q || p)``, with ``x_hat``
decoded from a reparameterised draw of ``q``. Samples decode draws of the conditional prior
``p(z | y, h)`` (the decoder mean, no pixel noise).
"""

from __future__ import annotations

import dataclasses
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..checkpoint import load_checkpoint, save_checkpoint
from ..diffusion.train import flux_scale_of
from .conditional import pad_psf, train_loop, training_arrays
from .convolution import convolve
from .pairs import Pairs

__all__ = ["CVAEConfig", "CVAE", "cvae_loss", "train_cvae", "sample_cvae", "save_cvae", "load_cvae"]


@dataclasses.dataclass(frozen=True)
class CVAEConfig:
    """Hyperparameters of `train_cvae` (network, loss weights, optimiser)."""

    image_size: int = 32
    psf_size: int = 15
    latent_dim: int = 16
    width: int = 32
    w_x: float = 1.0
    w_y: float = 1.0
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    steps: int = 2000
    steps_per_call: int = 10
    checkpoint_every: int = 200
    augment: bool = True
    seed: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class _Gaussian(eqx.Module):
    convs: list[eqx.nn.Conv2d]
    head: eqx.nn.Linear

    def __init__(self, cin: int, width: int, size: int, latent: int, *, key):
        keys = jr.split(key, 4)
        # Three stride-2 convolutions: size -> size / 8 before the dense head.
        self.convs = [eqx.nn.Conv2d(cin, width, 3, stride=2, padding=1, key=keys[0]),
                      eqx.nn.Conv2d(width, width, 3, stride=2, padding=1, key=keys[1]),
                      eqx.nn.Conv2d(width, width, 3, stride=2, padding=1, key=keys[2])]
        self.head = eqx.nn.Linear(width * (size // 8) ** 2, 2 * latent, key=keys[3])

    def __call__(self, h):
        for c in self.convs:
            h = jax.nn.silu(c(h))
        mu, logvar = jnp.split(self.head(h.reshape(-1)), 2)
        return mu, jnp.clip(logvar, -12.0, 6.0)


class CVAE(eqx.Module):
    """Conditional VAE on ``(1, size, size)`` images in flux-scale units (see the module
    docstring); ``flux_scale`` maps them to physical units."""

    encoder: _Gaussian
    prior: _Gaussian
    z_map: eqx.nn.Linear
    decoder: list[eqx.nn.Conv2d]
    image_size: int = eqx.field(static=True)
    psf_size: int = eqx.field(static=True)
    latent_dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    flux_scale: float = eqx.field(static=True)

    def __init__(self, image_size: int, psf_size: int, latent_dim: int, width: int, flux_scale: float,
                 *, key: PRNGKeyArray):
        if image_size % 8:
            raise ValueError(f"image_size: expected a multiple of 8, got {image_size}")
        if psf_size > image_size or psf_size % 2 == 0:
            raise ValueError(f"psf_size: expected an odd size of at most {image_size}, got {psf_size}")
        if not flux_scale > 0:
            raise ValueError(f"flux_scale: expected positive, got {flux_scale}")
        k = jr.split(key, 9)
        self.encoder = _Gaussian(3, width, image_size, latent_dim, key=k[0])
        self.prior = _Gaussian(2, width, image_size, latent_dim, key=k[1])
        self.z_map = eqx.nn.Linear(latent_dim, 2 * image_size * image_size, key=k[2])
        dil = (1, 2, 4, 8, 1)
        cin = 4
        dec = []
        for i, d in enumerate(dil):
            dec.append(eqx.nn.Conv2d(cin, width, 3, padding=d, dilation=d, key=k[3 + i]))
            cin = width
        dec.append(eqx.nn.Conv2d(cin, 1, 1, key=k[8]))
        self.decoder = dec
        self.image_size, self.psf_size = int(image_size), int(psf_size)
        self.latent_dim, self.width, self.flux_scale = int(latent_dim), int(width), float(flux_scale)

    def decode(self, z: Float[Array, " latent"], y: Float[Array, "1 s s"],
               p: Float[Array, "1 s s"]) -> Float[Array, "1 s s"]:
        s = self.image_size
        h = jnp.concatenate([self.z_map(z).reshape(2, s, s), y, p], axis=0)
        for c in self.decoder[:-1]:
            h = jax.nn.silu(c(h))
        # The observation is a good first guess of the (blurred) truth: predict a residual.
        return y + self.decoder[-1](h)

    def encode(self, x, y, p):
        return self.encoder(jnp.concatenate([x, y, p], axis=0))

    def conditional_prior(self, y, p):
        return self.prior(jnp.concatenate([y, p], axis=0))


def cvae_loss(model: CVAE, key: PRNGKeyArray, batch, sigma: Float[Array, " batch"],
              w_x: float, w_y: float) -> Float[Array, ""]:
    """Mean over the batch of ``w_x ||x - x_hat||^2 + w_y ||h * x_hat - y||^2 / sigma^2 +
    KL(q(z | x, y, h) || p(z | y, h))`` (sums over pixels and latents). ``batch`` is
    ``(x, y, psf_padded)`` in flux-scale units, ``sigma`` the noise std in those units."""
    x, y, p = batch
    mu_q, lv_q = jax.vmap(model.encode)(x, y, p)
    mu_p, lv_p = jax.vmap(model.conditional_prior)(y, p)
    z = mu_q + jnp.exp(0.5 * lv_q) * jr.normal(key, mu_q.shape)
    x_hat = jax.vmap(model.decode)(z, y, p)
    # Unit-peak padded PSF centred on (s//2, s//2) -> the convolution kernel (unit sum).
    kern = p / jnp.sum(p, axis=(-2, -1), keepdims=True)
    rec_x = jnp.sum((x - x_hat) ** 2, axis=(1, 2, 3))
    # (centred on pixel s // 2 as `convolve` expects of an s x s kernel)
    rec_y = jnp.sum((convolve(x_hat, kern) - y) ** 2, axis=(1, 2, 3)) / sigma**2
    kl = 0.5 * jnp.sum(lv_p - lv_q + (jnp.exp(lv_q) + (mu_q - mu_p) ** 2) / jnp.exp(lv_p) - 1.0, axis=1)
    return jnp.mean(w_x * rec_x + w_y * rec_y + kl)


def save_cvae(path: str | os.PathLike, model: CVAE, extra: dict | None = None) -> None:
    """Atomically save a `CVAE` (loadable by `load_cvae`)."""
    hyper = {"image_size": model.image_size, "psf_size": model.psf_size, "latent_dim": model.latent_dim,
             "width": model.width, "flux_scale": model.flux_scale, "info": dict(extra or {})}
    save_checkpoint(path, "cvae", hyper, model)


def load_cvae(path: str | os.PathLike) -> CVAE:
    """Load a `CVAE` written by `save_cvae` / `train_cvae`."""
    def skeleton(h):
        return eqx.filter_eval_shape(lambda: CVAE(h["image_size"], h["psf_size"], h["latent_dim"],
                                                  h["width"], h["flux_scale"], key=jr.key(0)))
    model, _ = load_checkpoint(path, skeleton, kind="cvae")
    return model


def train_cvae(pairs: Pairs, out: str | os.PathLike, config: CVAEConfig = CVAEConfig(), *,
               resume: bool = True, progress: bool = True, max_seconds: float | None = None) -> CVAE:
    """Train a `CVAE` on `pairs` with `cvae_loss`; checkpoints and exact resume as
    `deconvjax.amortised.conditional.train_loop`. Returns the EMA model."""
    if not isinstance(pairs, Pairs):
        raise ValueError(f"pairs: expected a Pairs, got {type(pairs).__name__}")
    s, q = config.image_size, config.psf_size
    if pairs.truth.shape[1:] != (1, s, s) or pairs.psf.shape[1:] != (1, q, q):
        raise ValueError(f"pairs: expected images (n, 1, {s}, {s}) and PSFs (n, 1, {q}, {q}), "
                         f"got {pairs.truth.shape} and {pairs.psf.shape}")
    flux_scale = flux_scale_of(pairs.truth)
    x, y, p = training_arrays(pairs, flux_scale, s)
    # The noise std rides along as a constant image so that it is drawn with its pair.
    sig = jnp.broadcast_to(jnp.asarray(pairs.noise_sigma / flux_scale, jnp.float32)[:, None, None, None], x.shape)
    model = eqx.filter_jit(lambda k: CVAE(s, q, config.latent_dim, config.width, flux_scale, key=k))(
        jr.key(config.seed))

    def loss(m, key, batch, step):
        bx, by, bp, bs = batch
        return cvae_loss(m, key, (bx, by, bp), bs[:, 0, 0, 0], config.w_x, config.w_y)

    return train_loop(loss, model, (x, y, p, sig), out, config, kind="cvae", hyper={},
                      save_model=lambda path, e, extra: save_cvae(path, e, {**extra, "config": config.to_json()}),
                      resume=resume, progress=progress, max_seconds=max_seconds, desc="train-cvae")


@eqx.filter_jit
def _sample(model, key, y, p, n):
    mu, lv = model.conditional_prior(y, p)
    z = mu + jnp.exp(0.5 * lv) * jr.normal(key, (n, model.latent_dim))
    return jax.vmap(model.decode, in_axes=(0, None, None))(z, y, p)


def sample_cvae(key: PRNGKeyArray, model: CVAE, observed: Float[Array, "1 y x"], psf: Float[Array, "1 h w"],
                n: int) -> Float[Array, "n 1 y x"]:
    """`n` samples of ``x | observed, psf`` in physical units: decoded draws of
    ``p(z | y, h)``."""
    observed, psf = jnp.asarray(observed, jnp.float32), jnp.asarray(psf, jnp.float32)
    s = model.image_size
    if observed.shape != (1, s, s):
        raise ValueError(f"observed: expected shape (1, {s}, {s}), got {observed.shape}")
    if psf.shape != (1, model.psf_size, model.psf_size):
        raise ValueError(f"psf: expected shape (1, {model.psf_size}, {model.psf_size}), got {psf.shape}")
    if not (isinstance(n, int | np.integer) and n >= 1):
        raise ValueError(f"n: expected a positive integer, got {n}")
    y = observed / model.flux_scale
    return _sample(model, key, y, pad_psf(psf, s), int(n)) * model.flux_scale
