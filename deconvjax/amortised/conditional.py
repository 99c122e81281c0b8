"""Conditional diffusion for PSF deconvolution (after Xue et al.): a denoiser
``D(x_t, sigma | y, h)`` conditioned on the observation ``y`` and its PSF ``h``, trained by
denoising score matching on (truth, PSF, observation) pairs and sampled with the project's
samplers (`deconvjax.diffusion.samplers.sample`) through `ConditionalDenoiser.bind`, which
closes the denoiser over one observation.

Design: the U-Net of `deconvjax.diffusion.unet` with three input channels, the noisy image
``c_in x_t``, the observation ``y / flux_scale / sigma_data`` and the PSF zero-padded to the
image size, centred and scaled to unit peak; its first output channel is the EDM
preconditioned residual (``D = c_skip x_t + c_out F``, as `UNetDenoiser`). Images are in
units of one global ``flux_scale`` (`deconvjax.diffusion.train.flux_scale_of` of the
training truths).

Sampling can add a data-consistency step with the observation's known forward model
(`WienerDataConsistency`, the default of `sample_conditional` when the noise is given): a
small network leaves errors in the modes the observation measures well that no local view
reveals (a total flux off by several times its uncertainty), and samples then fail the
re-convolution test of `deconvjax.amortised.retention`.

`train_loop` is the generic loop (AdamW with warm-up cosine decay and clipping, EMA,
``fold_in(key, step)`` per step so that a resumed run continues exactly, atomic
checkpoints, tqdm, loss log) that `train_conditional` and `deconvjax.amortised.cvae` share.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .._atomic import atomic_write_bytes
from ..checkpoint import load_checkpoint, save_checkpoint
from ..diffusion.denoiser import AbstractDenoiser
from ..diffusion.samplers import DEFAULT_SAMPLER, AbstractSampler, sample
from ..diffusion.sde import VESDE
from ..diffusion.train import flux_scale_of, sample_sigma
from ..diffusion.unet import UNet
from .convolution import transfer_function
from .pairs import Pairs

__all__ = ["ConditionalConfig", "ConditionalDenoiser", "BoundConditionalDenoiser",
           "AbstractDataConsistency", "NoDataConsistency", "WienerDataConsistency",
           "pad_psf", "augment_pair", "conditional_dsm_loss", "train_loop",
           "train_conditional", "training_arrays", "sample_conditional", "save_conditional", "load_conditional"]


def pad_psf(psf: Float[Array, "band h w"], size: int) -> Float[Array, "band size size"]:
    """`psf` (odd ``h, w``, centred on ``(h // 2, w // 2)``) zero-padded to ``size x size``
    with its centre on pixel ``(size // 2, size // 2)``, scaled to unit peak."""
    b, h, w = psf.shape
    if h > size or w > size or h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"psf: expected an odd-sized PSF of at most {size} pixels, got {(h, w)}")
    oy, ox = size // 2 - h // 2, size // 2 - w // 2
    out = jnp.zeros((b, size, size), psf.dtype).at[:, oy:oy + h, ox:ox + w].set(psf)
    return out / jnp.max(psf, axis=(-2, -1), keepdims=True)


def augment_pair(key: PRNGKeyArray, *images: Float[Array, "band y x"]):
    """One of the 8 flips / 90-degree rotations, the same for all `images` (a truth, its
    observation and its padded PSF stay consistent: convolution commutes with them)."""
    k = jr.randint(key, (), 0, 8)
    out = []
    for x in images:
        variants = []
        for flip in (False, True):
            base = x[:, :, ::-1] if flip else x
            for r in range(4):
                variants.append(jnp.rot90(base, r, axes=(1, 2)))
        out.append(jnp.stack(variants)[k])
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class ConditionalConfig:
    """Hyperparameters of `train_conditional` (and of `deconvjax.amortised.cvae`'s loop:
    the optimiser fields)."""

    image_size: int = 32
    psf_size: int = 15
    channels: tuple[int, ...] = (16, 32)
    num_res_blocks: int = 1
    emb_dim: int = 32
    sigma_min: float = 1e-3
    sigma_max: float = 20.0
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

    @classmethod
    def from_json(cls, d: dict) -> ConditionalConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class ConditionalDenoiser(eqx.Module):
    """``D(x_t, sigma | y, psf)`` in flux-scale units (see the module docstring).

    Call it unbatched: ``x`` ``(1, size, size)``, ``observed`` ``(1, size, size)`` already
    divided by ``flux_scale``, ``psf_padded`` from `pad_psf`.
    """

    net: UNet
    sigma_data: float = eqx.field(static=True)
    flux_scale: float = eqx.field(static=True)
    image_size: int = eqx.field(static=True)
    psf_size: int = eqx.field(static=True)

    def __init__(self, net: UNet, sigma_data: float, flux_scale: float, image_size: int, psf_size: int):
        if net.bands != 3:
            raise ValueError(f"net: expected a U-Net with 3 channels (image, observation, PSF), got {net.bands}")
        if image_size % net.downsampling:
            raise ValueError(f"image_size: expected a multiple of {net.downsampling}, got {image_size}")
        if not (sigma_data > 0 and flux_scale > 0):
            raise ValueError(f"sigma_data, flux_scale: expected positive, got {sigma_data}, {flux_scale}")
        self.net, self.sigma_data, self.flux_scale = net, float(sigma_data), float(flux_scale)
        self.image_size, self.psf_size = int(image_size), int(psf_size)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def __call__(self, x: Float[Array, "1 y x"], sigma, observed: Float[Array, "1 y x"],
                 psf_padded: Float[Array, "1 y x"]) -> Float[Array, "1 y x"]:
        sigma = jnp.asarray(sigma, dtype=x.dtype)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / jnp.sqrt(sigma**2 + sd**2)
        c_in = 1.0 / jnp.sqrt(sigma**2 + sd**2)
        inp = jnp.concatenate([c_in * x, observed / sd, psf_padded], axis=0)
        return c_skip * x + c_out * self.net(inp, jnp.log(sigma) / 4.0)[:1]

    def bind(self, observed: Float[Array, "1 y x"], psf: Float[Array, "1 h w"],
             noise_sigma: float | None = None,
             consistency: AbstractDataConsistency | None = None) -> BoundConditionalDenoiser:
        """The unconditional-looking denoiser ``D(x, sigma)`` of one observation (physical
        units), for `deconvjax.diffusion.samplers.sample`.

        `consistency`: how the observation's known forward model (periodic convolution with
        `psf`, white noise of standard deviation `noise_sigma`, physical units) corrects the
        network's estimate; default `NoDataConsistency()` (the network alone), which needs
        no `noise_sigma`."""
        observed, psf = jnp.asarray(observed, jnp.float32), jnp.asarray(psf, jnp.float32)
        if observed.shape != self.shape:
            raise ValueError(f"observed: expected shape {self.shape}, got {observed.shape}")
        if psf.shape != (1, self.psf_size, self.psf_size):
            raise ValueError(f"psf: expected shape (1, {self.psf_size}, {self.psf_size}), got {psf.shape}")
        consistency = NoDataConsistency() if consistency is None else consistency
        if not isinstance(consistency, AbstractDataConsistency):
            raise ValueError(f"consistency: expected an AbstractDataConsistency, got {type(consistency).__name__}")
        if noise_sigma is None:
            if consistency.needs_noise:
                raise ValueError(f"noise_sigma: {type(consistency).__name__} needs the observation's noise "
                                 "standard deviation")
            noise_var = 1.0
        else:
            if not (np.isfinite(noise_sigma) and noise_sigma > 0):
                raise ValueError(f"noise_sigma: expected a positive noise standard deviation, got {noise_sigma}")
            noise_var = (float(noise_sigma) / self.flux_scale) ** 2
        h = transfer_function(psf / jnp.sum(psf, axis=(-2, -1), keepdims=True), self.shape[1:])
        return BoundConditionalDenoiser(self, observed / self.flux_scale, pad_psf(psf, self.image_size),
                                        h.astype(jnp.complex64), jnp.asarray(noise_var, jnp.float32),
                                        consistency)


class AbstractDataConsistency(eqx.Module):
    """How a `BoundConditionalDenoiser` combines the network's estimate ``D`` of
    ``E[x | x_t, y]`` with the known forward model of the observation ``y = h * x + n``
    (periodic convolution, white noise of variance ``noise_var``), all in flux-scale units."""

    needs_noise: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(self, den: Float[Array, "1 y x"], sigma: Float[Array, ""], sigma_data: float,
                 observed: Float[Array, "1 y x"], transfer: Array,
                 noise_var: Float[Array, ""]) -> Float[Array, "1 y x"]:
        """The corrected estimate of ``E[x | x_t, y]``."""


class NoDataConsistency(AbstractDataConsistency):
    """The network's estimate as it is (a purely amortised sampler)."""

    needs_noise: ClassVar[bool] = False

    def __call__(self, den, sigma, sigma_data, observed, transfer, noise_var):
        return den


class WienerDataConsistency(AbstractDataConsistency):
    """One moment-matching (MMPS) step in Fourier space on top of the network:
    ``D' = D + F^-1[v H^* (Y - H D) / (v |H|^2 + noise_var)]`` with
    ``v = sigma^2 sigma_data^2 / (sigma^2 + sigma_data^2)``, the covariance of ``x | x_t``
    under a white Gaussian prior of variance ``sigma_data^2`` (exact for that prior and a
    periodic PSF, hence no linear solve).

    Why: a small network trained for a few hundred steps leaves errors in the modes the
    observation measures well (a total flux off by several times the observation's
    uncertainty, a few thousandths of the noise per pixel but coherent over the image) that
    it cannot see locally; this step pulls those modes to the data while the poorly
    measured ones (``v |H|^2 << noise_var``) keep the network's samples. ``v -> 0`` as
    ``sigma -> 0``, so the last steps and the final denoising are the network's. The
    observation is then used twice (by the network and here), which narrows the spread of
    the well-measured modes at most to that of a noise variance halved.
    """

    needs_noise: ClassVar[bool] = True

    def __call__(self, den, sigma, sigma_data, observed, transfer, noise_var):
        v = sigma**2 * sigma_data**2 / (sigma**2 + sigma_data**2)
        d = jnp.fft.fft2(den)
        resid = jnp.fft.fft2(observed) - transfer * d
        d = d + v * jnp.conj(transfer) * resid / (v * jnp.abs(transfer) ** 2 + noise_var)
        return jnp.fft.ifft2(d).real.astype(den.dtype)


class BoundConditionalDenoiser(AbstractDenoiser):
    """A `ConditionalDenoiser` closed over one observation (flux-scale units), its padded
    PSF, the PSF's transfer function on the image grid, the noise variance (flux-scale
    units) and the `AbstractDataConsistency` step."""

    model: ConditionalDenoiser
    observed: Float[Array, "1 y x"]
    psf_padded: Float[Array, "1 y x"]
    transfer: Array
    noise_var: Float[Array, ""]
    consistency: AbstractDataConsistency

    def __call__(self, x, sigma):
        sigma = jnp.asarray(sigma, dtype=x.dtype)
        den = self.model(x, sigma, self.observed, self.psf_padded)
        return self.consistency(den, sigma, self.model.sigma_data, self.observed, self.transfer,
                                self.noise_var)


def conditional_dsm_loss(model: ConditionalDenoiser, key: PRNGKeyArray, batch, sigma_min: float,
                         sigma_max: float) -> Float[Array, ""]:
    """EDM-weighted denoising score matching on a batch ``(x0, y, psf_padded)`` (flux-scale
    units, each ``(batch, 1, size, size)``); mean over batch and pixels."""
    x0, y, p = batch
    ks, kn = jr.split(key)
    sigma = sample_sigma(ks, x0.shape[0], sigma_min, sigma_max)
    noise = jr.normal(kn, x0.shape, x0.dtype)
    sb = sigma[:, None, None, None]
    den = jax.vmap(model)(x0 + sb * noise, sigma, y, p)
    sd = model.sigma_data
    return jnp.mean((sb**2 + sd**2) / (sb * sd) ** 2 * (den - x0) ** 2)


def _ema(ema, model, decay):
    e, static = eqx.partition(ema, eqx.is_inexact_array)
    m, _ = eqx.partition(model, eqx.is_inexact_array)
    return eqx.combine(jax.tree.map(lambda a, b: decay * a + (1 - decay) * b, e, m), static)


def _optimizer(cfg) -> optax.GradientTransformation:
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                               max(cfg.steps, cfg.warmup_steps + 1),
                                               cfg.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(sched, 1e-4))


def train_loop(
    loss_fn: Callable, model, data: tuple[Array, ...], out: str | os.PathLike, cfg, *,
    kind: str, hyper: dict, save_model: Callable, resume: bool = True,
    progress: bool = True, max_seconds: float | None = None, desc: str = "train",
):
    """The training loop shared by the amortised methods; returns the EMA model.

    - `loss_fn(model, key, batch, step)`: scalar loss of a batch (a tuple of arrays drawn
      from `data` at the same random rows, ``(batch, 1, size, size)`` each, augmented
      together when ``cfg.augment``).
    - `model`: the freshly initialised model (also the skeleton to resume into).
    - `cfg`: a config with ``learning_rate, warmup_steps, steps, grad_clip, ema_decay,
      batch_size, steps_per_call, checkpoint_every, augment, seed`` and ``to_json()``.
    - `kind`, `hyper`: the checkpoint kind and JSON header of the model file.
    - `save_model(path, ema, extra)`: writes the loadable model file ``out``.

    Files: ``out`` (the EMA model), ``out.state`` (model, EMA, optimiser state and step,
    for resuming), ``out.log.jsonl`` (the loss per host sync). On resume the saved config
    must equal ``cfg`` except for ``steps``, ``checkpoint_every`` and ``steps_per_call``.
    """
    out = Path(out)
    state_path, log_path = Path(str(out) + ".state"), Path(str(out) + ".log.jsonl")
    # The learning-rate schedule depends on cfg.steps, so a resumed run must keep it (the
    # check below) to continue exactly as the uninterrupted run.
    optimizer = _optimizer(cfg)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    ema, step, elapsed = model, 0, 0.0
    if resume and state_path.exists():
        (model, ema, opt_state), header = load_checkpoint(
            state_path, lambda h: (model, ema, opt_state), kind=kind + "_state")
        saved = header["hyper"]["config"]
        mine = cfg.to_json()
        diffs = [k for k in mine if k not in ("checkpoint_every", "steps_per_call")
                 and json.dumps(saved.get(k)) != json.dumps(mine[k])]
        if diffs:
            raise ValueError(f"cfg: {state_path} was trained with different settings {diffs}; "
                             "use another out or resume=False")
        step, elapsed = int(header["hyper"]["step"]), float(header["hyper"]["elapsed_s"])
        if log_path.exists():
            kept = [ln for ln in log_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= step]
            atomic_write_bytes(log_path, ("\n".join(kept) + "\n").encode() if kept else b"")
    else:
        atomic_write_bytes(log_path, b"")
    data = tuple(jnp.asarray(d) for d in data)
    n_data = data[0].shape[0]
    base_key = jr.fold_in(jr.key(cfg.seed), 1)

    @eqx.filter_jit
    def step_fn(model, ema, opt_state, step):
        key = jr.fold_in(base_key, step)
        kb, ka, kl = jr.split(key, 3)
        idx = jr.randint(kb, (cfg.batch_size,), 0, n_data)
        batch = tuple(d[idx] for d in data)
        if cfg.augment:
            batch = jax.vmap(augment_pair)(jr.split(ka, cfg.batch_size), *batch)
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, kl, batch, step)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        model = eqx.apply_updates(model, updates)
        ema = _ema(ema, model, jnp.minimum(cfg.ema_decay, (1.0 + step) / (10.0 + step)))
        return model, ema, opt_state, loss

    def save(model, ema, opt_state, step, elapsed):
        save_checkpoint(state_path, kind + "_state",
                        {"config": cfg.to_json(), "step": step, "elapsed_s": elapsed},
                        (model, ema, opt_state))
        save_model(out, ema, {"step": step, "train_seconds": round(elapsed, 1)})

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=desc, unit="step")
    t0 = time.perf_counter() - elapsed
    last_saved = step
    try:
        while step < cfg.steps:
            n = min(cfg.steps_per_call, cfg.steps - step)
            losses = []
            m, e, o = model, ema, opt_state
            # One jitted step per call from Python: on XLA:CPU a scan over conv-net training
            # steps is much slower (see deconvjax.diffusion.train).
            for k in range(n):
                m, e, o, loss = step_fn(m, e, o, jnp.asarray(step + k))
                losses.append(loss)
            losses = np.asarray(jnp.stack(losses))
            if not np.all(np.isfinite(losses)):
                raise FloatingPointError(f"training: non-finite loss near step {step}; the last good "
                                         f"checkpoint (step {last_saved}) is kept at {out}")
            model, ema, opt_state = m, e, o
            step += n
            elapsed = time.perf_counter() - t0
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": float(losses.mean()),
                                    "time_s": round(elapsed, 2)}) + "\n")
            bar.update(n)
            bar.set_postfix(loss=f"{losses.mean():.4f}")
            if step - last_saved >= cfg.checkpoint_every or step >= cfg.steps:
                save(model, ema, opt_state, step, elapsed)
                last_saved = step
            if max_seconds is not None and elapsed >= max_seconds:
                break
    finally:
        bar.close()
    if last_saved != step or not out.exists():
        save(model, ema, opt_state, step, time.perf_counter() - t0)
    return ema


def _check_pairs(pairs: Pairs, image_size: int, psf_size: int):
    if not isinstance(pairs, Pairs):
        raise ValueError(f"pairs: expected a Pairs, got {type(pairs).__name__}")
    if pairs.truth.shape[1:] != (1, image_size, image_size):
        raise ValueError(f"pairs: expected images (n, 1, {image_size}, {image_size}), got {pairs.truth.shape}")
    if pairs.psf.shape[1:] != (1, psf_size, psf_size):
        raise ValueError(f"pairs: expected PSFs (n, 1, {psf_size}, {psf_size}), got {pairs.psf.shape}")


def training_arrays(pairs: Pairs, flux_scale: float, image_size: int):
    """``(truth, observed, psf_padded)`` in flux-scale units for `train_loop`."""
    x = jnp.asarray(pairs.truth / flux_scale, jnp.float32)
    y = jnp.asarray(pairs.observed / flux_scale, jnp.float32)
    p = jax.vmap(lambda q: pad_psf(q, image_size))(jnp.asarray(pairs.psf, jnp.float32))
    return x, y, p


def save_conditional(path: str | os.PathLike, model: ConditionalDenoiser, extra: dict | None = None) -> None:
    """Atomically save a `ConditionalDenoiser` (loadable by `load_conditional`)."""
    hyper = {"channels": list(model.net.channels), "num_res_blocks": model.net.num_res_blocks,
             "emb_dim": model.net.emb_dim, "sigma_data": model.sigma_data,
             "flux_scale": model.flux_scale, "image_size": model.image_size,
             "psf_size": model.psf_size, "info": dict(extra or {})}
    save_checkpoint(path, "conditional_denoiser", hyper, model)


def _build(h: dict) -> ConditionalDenoiser:
    net = eqx.filter_eval_shape(lambda: UNet(3, tuple(h["channels"]), h["num_res_blocks"],
                                             h["emb_dim"], key=jr.key(0)))
    return ConditionalDenoiser(net, h["sigma_data"], h["flux_scale"], h["image_size"], h["psf_size"])


def load_conditional(path: str | os.PathLike) -> ConditionalDenoiser:
    """Load a `ConditionalDenoiser` written by `save_conditional` / `train_conditional`."""
    model, _ = load_checkpoint(path, _build, kind="conditional_denoiser")
    return model


def train_conditional(pairs: Pairs, out: str | os.PathLike,
                      config: ConditionalConfig = ConditionalConfig(), *, resume: bool = True,
                      progress: bool = True, max_seconds: float | None = None) -> ConditionalDenoiser:
    """Train a `ConditionalDenoiser` on `pairs` by denoising score matching; checkpoints
    and resume as in `train_loop`. Returns the EMA model."""
    _check_pairs(pairs, config.image_size, config.psf_size)
    flux_scale = flux_scale_of(pairs.truth)
    data = training_arrays(pairs, flux_scale, config.image_size)
    sigma_data = float(np.std(np.asarray(data[0])))
    net = eqx.filter_jit(lambda k: UNet(3, config.channels, config.num_res_blocks, config.emb_dim, key=k))(
        jr.key(config.seed))
    model = ConditionalDenoiser(net, sigma_data, flux_scale, config.image_size, config.psf_size)

    def loss(m, key, batch, step):
        return conditional_dsm_loss(m, key, batch, config.sigma_min, config.sigma_max)

    return train_loop(loss, model, data, out, config, kind="conditional_denoiser",
                      hyper={}, save_model=lambda p, e, extra: save_conditional(
                          p, e, {**extra, "config": config.to_json()}),
                      resume=resume, progress=progress, max_seconds=max_seconds,
                      desc="train-conditional")


def sample_conditional(key: PRNGKeyArray, model: ConditionalDenoiser, observed: Float[Array, "1 y x"],
                       psf: Float[Array, "1 h w"], n: int, *, noise_sigma: float | None = None,
                       consistency: AbstractDataConsistency | None = None,
                       sampler: AbstractSampler = DEFAULT_SAMPLER,
                       sde: VESDE | None = None, sigma_max: float = 20.0,
                       sigma_min: float = 1e-3) -> Float[Array, "n 1 y x"]:
    """`n` samples of ``x | observed, psf`` in physical units, with `sampler` on the VE SDE
    (default ``VESDE(sigma_min, sigma_max)``, the training noise range). `noise_sigma`,
    `consistency`: see `ConditionalDenoiser.bind` (default: `WienerDataConsistency()` when
    `noise_sigma` is given, the network alone otherwise)."""
    if not (isinstance(n, int | np.integer) and n >= 1):
        raise ValueError(f"n: expected a positive integer, got {n}")
    if consistency is None:
        consistency = NoDataConsistency() if noise_sigma is None else WienerDataConsistency()
    bound = model.bind(observed, psf, noise_sigma, consistency)
    sde = VESDE(sigma_min, sigma_max) if sde is None else sde
    x, _ = sample(key, bound, sampler, sde=sde, shape=model.shape, n_samples=int(n))
    return x * model.flux_scale
