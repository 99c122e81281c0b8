"""Tikhonov deconvolution followed by a learned denoiser (Akhaury et al. 2022).

Step 1, Tikhonov with a Laplacian regulariser, closed form on the periodic grid of
`deconvjax.amortised.convolution`: per image

    x_tik = argmin_x ||y - h * x||^2 / sigma^2 + alpha ||L x||^2
          = F^-1[ conj(H) Y / (|H|^2 + alpha sigma^2 |L_k|^2) ],

so the regulariser weight follows the noise level (``lam = alpha sigma^2``, the stated rule)
and the one number ``alpha`` is chosen by `choose_alpha`, a grid search for the smallest
mean squared error on training pairs (the Tikhonov step alone, before any network).

Step 2, a U-Net (`deconvjax.diffusion.unet.UNet`) maps the Tikhonov output, with its
correlated, amplified noise and ringing, to the truth. It predicts a correction in units of
a fixed flux scale, ``x = x_tik + scale * F(x_tik / scale, c)``, with the noise embedding fed
``c = log(sigma / scale) / 4`` so one network covers a range of noise levels.

Training (`train_tikhonov_unet`) minimises the mean squared error with Adam; step ``k`` draws
its batch from ``fold_in(key, k)``, so a run resumed from its checkpoint continues exactly as
the uninterrupted run would have. The checkpoint (``out``, atomic writes) holds the model and
the optimiser state; `save_tikhonov_unet` / `load_tikhonov_unet` keep a trained model alone.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..checkpoint import load_checkpoint, save_checkpoint
from ..diffusion.unet import UNet
from .convolution import transfer_function
from .pairs import Pairs

__all__ = [
    "TikhonovUNet", "TikhonovUNetConfig", "tikhonov_batch", "choose_alpha",
    "train_tikhonov_unet", "deconvolve_batch", "save_tikhonov_unet", "load_tikhonov_unet", "residual_chi2",
]


def _check_batch(observed, psf, sigma):
    observed = jnp.asarray(observed, dtype=jnp.float32)
    psf = jnp.asarray(psf, dtype=jnp.float32)
    sigma = jnp.asarray(sigma, dtype=jnp.float32)
    if observed.ndim != 4:
        raise ValueError(f"observed: expected a batch (n, band, y, x), got shape {observed.shape}")
    n, bands, ny, nx = observed.shape
    if psf.ndim != 4 or psf.shape[:2] != (n, bands):
        raise ValueError(f"psf: expected ({n}, {bands}, h, w) for observed of shape {observed.shape}, got {psf.shape}")
    if psf.shape[-2] > ny or psf.shape[-1] > nx:
        raise ValueError(f"psf: expected at most the images' (y, x) shape {(ny, nx)}, got {psf.shape[-2:]}")
    if psf.shape[-2] % 2 == 0 or psf.shape[-1] % 2 == 0:
        raise ValueError(f"psf: expected odd (h, w) (centred on a pixel), got {psf.shape[-2:]}")
    if sigma.shape != (n,):
        raise ValueError(f"sigma: expected shape ({n},) (noise std per image), got {sigma.shape}")
    return observed, psf, sigma


def _laplacian_symbol(shape: tuple[int, int]) -> np.ndarray:
    # Fourier symbol of the periodic 5-point Laplacian (deconvjax.classical.laplacian).
    ky = 2 * np.pi * np.fft.fftfreq(shape[0])[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(shape[1])[None, :]
    return 2 * np.cos(ky) + 2 * np.cos(kx) - 4


def _tikhonov(observed, psf, sigma, alpha):
    h = transfer_function(psf, observed.shape[-2:])
    lk2 = jnp.asarray(_laplacian_symbol(observed.shape[-2:]) ** 2, dtype=observed.dtype)
    lam = (alpha * sigma**2)[:, None, None, None]
    f = jnp.conj(h) * jnp.fft.fft2(observed) / (jnp.abs(h) ** 2 + lam * lk2)
    return jnp.fft.ifft2(f).real.astype(observed.dtype)


_tikhonov_jit = jax.jit(_tikhonov)


def tikhonov_batch(observed: Float[ArrayLike, "n band y x"], psf: Float[ArrayLike, "n band h w"],
                   sigma: Float[ArrayLike, " n"], alpha: float) -> Float[Array, "n band y x"]:
    """Tikhonov deconvolution of a batch (jitted): per image, the minimiser of
    ``||y - h * x||^2 / sigma^2 + alpha ||L x||^2`` on the periodic grid (``L`` the 5-point
    Laplacian). `psf`: odd ``(h, w)`` unit-sum PSFs centred on ``(h // 2, w // 2)``, at most
    the image size; `sigma`: the white noise's standard deviation per image."""
    observed, psf, sigma = _check_batch(observed, psf, sigma)
    if not alpha > 0:
        raise ValueError(f"alpha: expected a positive regulariser weight, got {alpha}")
    return _tikhonov_jit(observed, psf, sigma, jnp.float32(alpha))


def choose_alpha(pairs: Pairs, grid: ArrayLike | None = None) -> float:
    """The ``alpha`` of `tikhonov_batch` with the smallest mean squared error over `pairs`,
    from `grid` (default ``10 ** linspace(-2, 5, 29)``)."""
    grid = np.logspace(-2, 5, 29) if grid is None else np.asarray(grid, dtype=float)
    if grid.ndim != 1 or len(grid) == 0 or not np.all(grid > 0):
        raise ValueError(f"grid: expected a 1-d array of positive weights, got {grid}")
    truth = jnp.asarray(pairs.truth)
    mse = [float(jnp.mean((tikhonov_batch(pairs.observed, pairs.psf, pairs.noise_sigma, a) - truth) ** 2))
           for a in grid]
    return float(grid[int(np.argmin(mse))])


class TikhonovUNet(eqx.Module):
    """Tikhonov (weight ``alpha sigma^2``) then a U-Net correction, ``scale`` the flux unit
    of the network's input and output. Call `deconvolve_batch` on it."""

    net: UNet
    alpha: float = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, net: UNet, alpha: float, scale: float):
        if not alpha > 0:
            raise ValueError(f"alpha: expected a positive regulariser weight, got {alpha}")
        if not scale > 0:
            raise ValueError(f"scale: expected a positive flux scale, got {scale}")
        self.net, self.alpha, self.scale = net, float(alpha), float(scale)

    def denoise(self, x_tik: Float[Array, "n band y x"], sigma: Float[Array, " n"]) -> Float[Array, "n band y x"]:
        """The network's step on Tikhonov outputs ``x_tik`` (batch)."""
        c = jnp.log(sigma / self.scale) / 4.0
        out = jax.vmap(self.net)(x_tik / self.scale, c)
        return x_tik + self.scale * out


@eqx.filter_jit
def _deconvolve(model, observed, psf, sigma):
    x_tik = _tikhonov(observed, psf, sigma, jnp.float32(model.alpha))
    return model.denoise(x_tik, sigma)


def deconvolve_batch(model: TikhonovUNet, observed: Float[ArrayLike, "n band y x"],
                     psf: Float[ArrayLike, "n band h w"], sigma: Float[ArrayLike, " n"]) -> Float[Array, "n band y x"]:
    """Deconvolve a batch in one jitted pass: Tikhonov then the U-Net (arguments as for
    `tikhonov_batch`; the image size must be a multiple of the U-Net's downsampling)."""
    observed, psf, sigma = _check_batch(observed, psf, sigma)
    if observed.shape[1] != model.net.bands:
        raise ValueError(f"observed: expected {model.net.bands} band(s), got shape {observed.shape}")
    d = model.net.downsampling
    if observed.shape[-1] % d or observed.shape[-2] % d:
        raise ValueError(f"observed: expected (y, x) multiples of {d} for this U-Net, got {observed.shape[-2:]}")
    return _deconvolve(model, observed, psf, sigma)


@dataclasses.dataclass(frozen=True)
class TikhonovUNetConfig:
    """Network and training settings of `train_tikhonov_unet`."""

    channels: tuple[int, ...] = (8, 16)
    num_res_blocks: int = 1
    emb_dim: int = 16
    steps: int = 2000
    batch: int = 16
    learning_rate: float = 2e-3
    checkpoint_every: int = 500
    seed: int = 0

    def hyper(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d


@eqx.filter_jit
def _init_net(bands, channels, num_res_blocks, emb_dim, key):
    # Compiled once per architecture: eagerly, each small initialiser op compiles on its own.
    return UNet(bands, channels, num_res_blocks, emb_dim, key=key)


def _skeleton(hyper: dict, key: PRNGKeyArray | None = None):
    key = jr.PRNGKey(0) if key is None else key
    net = _init_net(hyper["bands"], tuple(hyper["channels"]), hyper["num_res_blocks"], hyper["emb_dim"], key)
    return TikhonovUNet(net, hyper["alpha"], hyper["scale"])


def save_tikhonov_unet(path, model: TikhonovUNet) -> None:
    """Save a trained `TikhonovUNet` (atomically, `deconvjax.checkpoint` format)."""
    net = model.net
    hyper = dict(bands=net.bands, channels=list(net.channels), num_res_blocks=net.num_res_blocks,
                 emb_dim=net.emb_dim, alpha=model.alpha, scale=model.scale)
    save_checkpoint(path, "tikhonov_unet", hyper, model)


def load_tikhonov_unet(path) -> TikhonovUNet:
    """Load a model written by `save_tikhonov_unet`."""
    model, _ = load_checkpoint(path, _skeleton, kind="tikhonov_unet")
    return model


@functools.lru_cache(maxsize=8)
def _optimizer(learning_rate: float):
    # One (hashable, static) optimizer object per rate, so that a resumed run in the same
    # process reuses the compiled training step instead of compiling it again.
    return optax.adam(learning_rate)


def _loss(model, x_tik, sigma, truth):
    return jnp.mean((model.denoise(x_tik, sigma) - truth) ** 2) / model.scale**2


@eqx.filter_jit
def _step(model, opt_state, x_tik, sigma, truth, key, step, batch, optimizer):
    idx = jr.randint(jr.fold_in(key, step), (batch,), 0, x_tik.shape[0])
    loss, grads = eqx.filter_value_and_grad(_loss)(model, x_tik[idx], sigma[idx], truth[idx])
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    return eqx.apply_updates(model, updates), opt_state, loss


def train_tikhonov_unet(pairs: Pairs, out=None, config: TikhonovUNetConfig = TikhonovUNetConfig(), *,
                        alpha: float | None = None, progress: bool = True,
                        max_seconds: float | None = None) -> TikhonovUNet:
    """Train the U-Net of a `TikhonovUNet` on `pairs` (Tikhonov outputs computed once).

    - `out`: checkpoint path (model and optimiser state, every ``checkpoint_every`` steps and
      at the end); an existing one of the same configuration is resumed exactly.
    - `alpha`: the Tikhonov weight (default `choose_alpha` on `pairs`).
    - `max_seconds`: stop early (with a checkpoint) after this much wall time.
    """
    if not isinstance(pairs, Pairs):
        raise ValueError(f"pairs: expected a Pairs batch, got {type(pairs).__name__}")
    size = pairs.truth.shape[-1]
    d = 2 ** (len(config.channels) - 1)
    if pairs.truth.shape[-2] % d or size % d:
        raise ValueError(f"pairs: expected image sizes divisible by {d} for channels={config.channels}, "
                         f"got {pairs.truth.shape[-2:]}")
    if config.steps < 1 or config.batch < 1:
        raise ValueError(f"config: expected positive steps and batch, got {config.steps}, {config.batch}")
    alpha = choose_alpha(pairs) if alpha is None else float(alpha)
    sigma = jnp.asarray(pairs.noise_sigma, dtype=jnp.float32)
    x_tik = tikhonov_batch(pairs.observed, pairs.psf, sigma, alpha)
    truth = jnp.asarray(pairs.truth)
    # One flux unit for all images: the truths' pixel standard deviation.
    scale = float(np.std(pairs.truth)) or 1.0
    hyper = dict(config.hyper(), bands=int(pairs.truth.shape[1]), alpha=alpha, scale=scale)
    key = jr.PRNGKey(config.seed)
    optimizer = _optimizer(float(config.learning_rate))
    key, init_key = jr.split(key)
    model = _skeleton(hyper, init_key)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    step = 0
    out = None if out is None else Path(out)
    if out is not None and out.exists():
        def skeleton(h):
            if h["config"] != hyper:
                raise ValueError(f"out: checkpoint {out} has another configuration ({h['config']} != {hyper})")
            return (model, opt_state, jnp.zeros((), jnp.int32))
        (model, opt_state, step_arr), _ = load_checkpoint(out, skeleton, kind="tikhonov_unet_train")
        step = int(step_arr)

    def save(model, opt_state, step):
        if out is not None:
            save_checkpoint(out, "tikhonov_unet_train", {"config": hyper},
                            (model, opt_state, jnp.asarray(step, jnp.int32)))

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="tikhonov-unet")
    last_saved = step
    while step < config.steps:
        model, opt_state, loss = _step(model, opt_state, x_tik, sigma, truth, key,
                                       jnp.asarray(step), config.batch, optimizer)
        step += 1
        bar.update(1)
        if step % 50 == 0:
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}; last checkpoint (step {last_saved}) kept")
            bar.set_postfix(loss=f"{loss:.3g}")
        if step - last_saved >= config.checkpoint_every or step >= config.steps:
            save(model, opt_state, step)
            last_saved = step
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            save(model, opt_state, step)
            break
    bar.close()
    return model


def residual_chi2(estimate: Float[ArrayLike, "n band y x"], observed: Float[ArrayLike, "n band y x"],
                  psf: Float[ArrayLike, "n band h w"], sigma: Float[ArrayLike, " n"]) -> Float[np.ndarray, " n"]:
    """The data residual ``y - h * x`` of an estimate as chi^2 per pixel,
    ``mean((y - h * x)^2) / sigma^2`` per image (about 1 for an estimate that fits the data
    to the noise; above 1 where the network moved away from the data)."""
    observed, psf, sigma = _check_batch(observed, psf, sigma)
    estimate = jnp.asarray(estimate, dtype=jnp.float32)
    if estimate.shape != observed.shape:
        raise ValueError(f"estimate: expected the observed shape {observed.shape}, got {estimate.shape}")
    model = jnp.fft.ifft2(jnp.fft.fft2(estimate) * transfer_function(psf, observed.shape[-2:])).real
    r = (observed - model).reshape(len(observed), -1)
    return np.asarray(jnp.mean(r**2, axis=1) / sigma**2)
