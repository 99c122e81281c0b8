"""A small time-conditioned U-Net in Equinox, and the EDM-preconditioned denoiser around it.

The network is deliberately plain (ResNet blocks with GroupNorm and a noise embedding added
per block, average-pool down, nearest-neighbour up, no attention) because it has to train and
sample on a laptop CPU. Width (``channels``) and depth (``num_res_blocks``) are configurable;
image sizes must be divisible by ``2 ** (len(channels) - 1)``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .denoiser import AbstractDenoiser

__all__ = ["UNet", "UNetDenoiser"]


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class _ResBlock(eqx.Module):
    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    emb: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, cin: int, cout: int, emb_dim: int, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_groups(cin), cin)
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, padding=1, key=k1)
        self.emb = eqx.nn.Linear(emb_dim, cout, key=k2)
        self.norm2 = eqx.nn.GroupNorm(_groups(cout), cout)
        conv2 = eqx.nn.Conv2d(cout, cout, 3, padding=1, key=k3)
        # Residual branches start near zero so a deep net begins as (almost) identity.
        self.conv2 = eqx.tree_at(lambda c: c.weight, conv2, conv2.weight * 0.1)
        self.skip = eqx.nn.Conv2d(cin, cout, 1, key=k4) if cin != cout else None

    def __call__(self, x, emb):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, None, None]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        skip = x if self.skip is None else self.skip(x)
        return skip + h


def _down(x):
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _up(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNet(eqx.Module):
    """Unbatched U-Net ``F(x, c_noise)``: ``(band, y, x), scalar -> (band, y, x)``."""

    freqs: Float[Array, " half"]
    emb1: eqx.nn.Linear
    emb2: eqx.nn.Linear
    conv_in: eqx.nn.Conv2d
    down_blocks: list[list[_ResBlock]]
    mid: _ResBlock
    up_blocks: list[_ResBlock]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    bands: int = eqx.field(static=True)
    channels: tuple[int, ...] = eqx.field(static=True)
    num_res_blocks: int = eqx.field(static=True)
    emb_dim: int = eqx.field(static=True)

    def __init__(self, bands: int = 1, channels=(16, 32, 64), num_res_blocks: int = 1,
                 emb_dim: int = 64, *, key: PRNGKeyArray):
        if bands < 1:
            raise ValueError(f"bands: expected a positive integer, got {bands}")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c < 1 for c in channels):
            raise ValueError(f"channels: expected a non-empty tuple of positive ints, got {channels}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks: expected >= 1, got {num_res_blocks}")
        self.bands, self.channels = int(bands), channels
        self.num_res_blocks, self.emb_dim = int(num_res_blocks), int(emb_dim)
        keys = iter(jr.split(key, 8 + 4 * len(channels) * (num_res_blocks + 1)))
        # Fixed log-spaced frequencies for the noise embedding (c_noise = log(sigma)/4 spans
        # about [-2, 1]); fixed, so excluded from training by stop_gradient in __call__.
        self.freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), emb_dim // 2))
        self.emb1 = eqx.nn.Linear(emb_dim, emb_dim, key=next(keys))
        self.emb2 = eqx.nn.Linear(emb_dim, emb_dim, key=next(keys))
        self.conv_in = eqx.nn.Conv2d(bands, channels[0], 3, padding=1, key=next(keys))
        down, skips = [], []
        cin = channels[0]
        for ch in channels:
            level = []
            for _ in range(num_res_blocks):
                level.append(_ResBlock(cin, ch, emb_dim, key=next(keys)))
                cin = ch
            skips.append(ch)
            down.append(level)
        self.down_blocks = down
        self.mid = _ResBlock(cin, cin, emb_dim, key=next(keys))
        ups = []
        for ch, sk in zip(reversed(channels), reversed(skips), strict=True):
            ups.append(_ResBlock(cin + sk, ch, emb_dim, key=next(keys)))
            cin = ch
        self.up_blocks = ups
        self.norm_out = eqx.nn.GroupNorm(_groups(cin), cin)
        conv_out = eqx.nn.Conv2d(cin, bands, 3, padding=1, key=next(keys))
        self.conv_out = eqx.tree_at(lambda c: (c.weight, c.bias), conv_out,
                                    (conv_out.weight * 0.0, conv_out.bias * 0.0))

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def __call__(self, x: Float[Array, "band y x"], c_noise: Float[Array, ""]) -> Float[
        Array, "band y x"
    ]:
        f = jax.lax.stop_gradient(self.freqs) * c_noise
        emb = jnp.concatenate([jnp.sin(f), jnp.cos(f)])
        emb = self.emb2(jax.nn.silu(self.emb1(emb)))
        h = self.conv_in(x)
        skips = []
        for i, level in enumerate(self.down_blocks):
            for block in level:
                h = block(h, emb)
            skips.append(h)
            if i < len(self.down_blocks) - 1:
                h = _down(h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up_blocks):
            h = block(jnp.concatenate([h, skips[-1 - i]], axis=0), emb)
            if i < len(self.up_blocks) - 1:
                h = _up(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


class UNetDenoiser(AbstractDenoiser):
    """EDM-preconditioned denoiser ``D = c_skip x + c_out F(c_in x, c_noise)``.

    ``c_skip = sd^2/(sigma^2+sd^2)``, ``c_out = sigma sd / sqrt(sigma^2+sd^2)``,
    ``c_in = 1/sqrt(sigma^2+sd^2)``, ``c_noise = log(sigma)/4`` with ``sd = sigma_data``, the
    data's pixel std in the prior's (flux-normalised) units. Input shape ``(bands, size, size)``.
    """

    net: UNet
    sigma_data: float = eqx.field(static=True)
    image_size: int = eqx.field(static=True)

    def __init__(self, net: UNet, sigma_data: float, image_size: int):
        if image_size % net.downsampling:
            raise ValueError(
                f"image_size: expected a multiple of {net.downsampling} for "
                f"{len(net.channels)} levels, got {image_size}"
            )
        if not sigma_data > 0:
            raise ValueError(f"sigma_data: expected a positive float, got {sigma_data}")
        self.net, self.sigma_data, self.image_size = net, float(sigma_data), int(image_size)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.net.bands, self.image_size, self.image_size)

    def __call__(self, x, sigma):
        if x.shape != self.shape:
            raise ValueError(f"x: expected an unbatched image of shape {self.shape}, got {x.shape}")
        sigma = jnp.asarray(sigma, dtype=x.dtype)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / jnp.sqrt(sigma**2 + sd2)
        c_in = 1.0 / jnp.sqrt(sigma**2 + sd2)
        c_noise = jnp.log(sigma) / 4.0
        return c_skip * x + c_out * self.net(c_in * x, c_noise)
