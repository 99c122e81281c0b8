"""Denoising score matching for `UNetDenoiser` priors, with EMA, checkpoints and resume.

Recipe (EDM-style, VE noise): ``sigma = sigma_min (sigma_max / sigma_min)^t`` with
``t ~ Beta(3, 3)`` (log-linear sigma from ``sigma_min`` to ``sigma_max``), loss
``lambda(sigma) ||D(x0 + sigma n, sigma) - x0||^2`` with the standard EDM weighting
``lambda = (sigma^2 + sd^2) / (sigma sd)^2`` (unit-variance target for the raw network),
AdamW with gradient clipping, an exponential moving average of the weights (the EMA weights
are what gets sampled), and random flips / 90-degree rotations.

Images are normalised by ONE global linear flux scale, ``x = image / flux_scale`` with
``flux_scale`` the 90th percentile of the training images' peak pixel values (so the
forward model stays linear in the prior variable, see `prior`).

The loop calls one jitted optimiser step at a time and syncs with the host every
``steps_per_call`` steps (tqdm, the loss log and NaN checks). Step ``k`` uses
``fold_in(key, k)``, so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have. Files written next to ``out`` (all atomically):

* ``out``            the prior (EMA weights + JSON hyperparameters), loadable by `load_prior`;
* ``out.state``      training state (weights, EMA, optimiser state, step) for resuming;
* ``out.log.jsonl``  the loss log (one JSON object per host sync).

A non-finite loss or weight stops training with `FloatingPointError`; the checkpoints on
disk are then the last good ones (nothing non-finite is ever written).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .._atomic import atomic_write_bytes
from ..checkpoint import load_checkpoint, save_checkpoint
from .prior import ScorePrior, build_denoiser, net_hyper_of, save_prior
from .sde import VESDE
from .unet import UNet, UNetDenoiser

__all__ = ["TrainConfig", "dsm_loss", "augment", "train_prior", "flux_scale_of",
           "sample_sigma", "sample_sigma_around"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a prior training run (all JSON-serialisable).

    The noise levels of denoising score matching: with ``sigma_center`` None (default),
    ``log sigma`` spans ``[log sigma_min, log sigma_max]`` with a Beta(3, 3) weight
    (`sample_sigma`); with a number ``c``, ``log sigma ~ N(log(c * sigma_data),
    sigma_spread^2)`` clipped to ``[sigma_min, sigma_max]`` (EDM's log-normal, centred on the
    training images' own scale, `sample_sigma_around`). The latter spends the training
    where the images' structure is decided when ``sigma_data`` is far below the middle of
    the range (faint galaxies in units of a bright flux scale).
    """

    image_size: int = 32
    bands: int = 1
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: int = 1
    emb_dim: int = 64
    sigma_min: float = 1e-3
    sigma_max: float = 100.0
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    steps: int = 5000
    steps_per_call: int = 10
    checkpoint_every: int = 500
    augment: bool = True
    seed: int = 0
    sigma_center: float | None = None
    sigma_spread: float = 1.2

    def __post_init__(self):
        if self.sigma_center is not None and not (np.isfinite(self.sigma_center) and self.sigma_center > 0):
            raise ValueError(f"sigma_center: expected None or a positive factor of sigma_data, got {self.sigma_center!r}")
        if not (np.isfinite(self.sigma_spread) and self.sigma_spread > 0):
            raise ValueError(f"sigma_spread: expected a positive number (log units), got {self.sigma_spread!r}")

    def net_hyper(self, sigma_data: float) -> dict:
        return {"bands": self.bands, "channels": list(self.channels),
                "num_res_blocks": self.num_res_blocks, "emb_dim": self.emb_dim,
                "sigma_data": float(sigma_data), "image_size": self.image_size}

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


# Fields that may change between an interrupted run and its resumption.
_RESUMABLE = ("steps", "checkpoint_every", "steps_per_call")


def flux_scale_of(images: np.ndarray) -> float:
    """The global flux scale: 90th percentile of the images' peak pixel values."""
    peaks = np.asarray(images).reshape(len(images), -1).max(axis=1)
    scale = float(np.percentile(peaks, 90))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError("images: cannot derive a positive flux scale (all-zero or non-finite "
                         "training images?)")
    return scale


def sample_sigma(key: PRNGKeyArray, n: int, sigma_min: float, sigma_max: float):
    """Log-linear sigma with ``t ~ Beta(3, 3)``."""
    t = jr.beta(key, 3.0, 3.0, (n,))
    return sigma_min * (sigma_max / sigma_min) ** t


def sample_sigma_around(key: PRNGKeyArray, n: int, sigma_min: float, sigma_max: float, centre,
                        spread: float):
    """``log sigma ~ N(log centre, spread^2)`` clipped to ``[sigma_min, sigma_max]``."""
    log_sigma = jnp.log(centre) + spread * jr.normal(key, (n,))
    return jnp.clip(jnp.exp(log_sigma), sigma_min, sigma_max)


def augment(key: PRNGKeyArray, x: Float[Array, "band y x"]) -> Float[Array, "band y x"]:
    """One of the 8 flips / 90-degree rotations of a square image, uniformly."""
    k = jr.randint(key, (), 0, 8)
    variants = []
    for flip in (False, True):
        base = x[:, :, ::-1] if flip else x
        for r in range(4):
            variants.append(jnp.rot90(base, r, axes=(1, 2)))
    return jnp.stack(variants)[k]


def dsm_loss(denoiser: UNetDenoiser, key: PRNGKeyArray, x0: Float[Array, "batch band y x"],
             sigma_min: float, sigma_max: float, sigma_center: float | None = None,
             sigma_spread: float = 1.2) -> Float[Array, ""]:
    """Denoising score-matching loss with EDM weighting (mean over batch and pixels); the
    noise levels as `TrainConfig` describes (``sigma_center`` None: `sample_sigma`)."""
    ks, kn = jr.split(key)
    if sigma_center is None:
        sigma = sample_sigma(ks, x0.shape[0], sigma_min, sigma_max)
    else:
        sigma = sample_sigma_around(ks, x0.shape[0], sigma_min, sigma_max,
                                    sigma_center * denoiser.sigma_data, sigma_spread)
    noise = jr.normal(kn, x0.shape, x0.dtype)
    sb = sigma[:, None, None, None]
    den = jax.vmap(denoiser)(x0 + sb * noise, sigma)
    sd = denoiser.sigma_data
    weight = (sb**2 + sd**2) / (sb * sd) ** 2
    return jnp.mean(weight * (den - x0) ** 2)


def _ema_update(ema, model, decay):
    e_arr, static = eqx.partition(ema, eqx.is_inexact_array)
    m_arr, _ = eqx.partition(model, eqx.is_inexact_array)
    new = jax.tree.map(lambda e, m: decay * e + (1 - decay) * m, e_arr, m_arr)
    return eqx.combine(new, static)


@functools.lru_cache(maxsize=8)
def _make_optimizer(cfg: TrainConfig):
    # Cached so that the same configuration gives the same (hashable, static) optimizer
    # object, and a resumed run in the same process does not recompile.
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, cfg.warmup_steps,
                                               max(cfg.steps, cfg.warmup_steps + 1),
                                               cfg.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(sched, 1e-4))


@eqx.filter_jit
def _train_step(data, model, ema, opt_state, base_key, step, cfg_static, optimizer):
    sigma_min, sigma_max, batch, do_aug, ema_decay, sigma_center, sigma_spread = cfg_static
    key = jr.fold_in(base_key, step)
    kb, ka, kl = jr.split(key, 3)
    idx = jr.randint(kb, (batch,), 0, data.shape[0])
    x0 = data[idx]
    if do_aug:
        x0 = jax.vmap(augment)(jr.split(ka, batch), x0)
    loss, grads = eqx.filter_value_and_grad(dsm_loss)(model, kl, x0, sigma_min, sigma_max, sigma_center,
                                                      sigma_spread)
    updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    model = eqx.apply_updates(model, updates)
    # EMA warm-up (as in many DDPM codes): short memory early, decay later.
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema = _ema_update(ema, model, decay)
    return model, ema, opt_state, loss


def _train_chunk(model, ema, opt_state, data, base_key, step0, n, cfg_static, optimizer):
    # One jitted call per step: on XLA:CPU a lax.scan over U-Net training steps ran ~10x
    # slower than the same step called from Python (the loop body loses the fast conv
    # paths). Losses stay on device until the caller syncs once per chunk.
    losses = []
    for k in range(n):
        model, ema, opt_state, loss = _train_step(data, model, ema, opt_state, base_key,
                                                  jnp.asarray(step0 + k), cfg_static,
                                                  optimizer)
        losses.append(loss)
    return model, ema, opt_state, jnp.stack(losses)


@eqx.filter_jit
def _init_unet(bands, channels, num_res_blocks, emb_dim, key):
    # One compiled initialiser per architecture (the ints are static): eagerly, each small
    # initialiser op compiles on its own (about 9 s for a one-level U-Net on the shared CPU).
    return UNet(bands, channels, num_res_blocks, emb_dim, key=key)


def _all_finite(tree) -> bool:
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def _state_paths(out: Path):
    return Path(str(out) + ".state"), Path(str(out) + ".log.jsonl")


def train_prior(
    images: Float[np.ndarray, "n band y x"],
    out: str | os.PathLike,
    config: TrainConfig = TrainConfig(),
    *,
    resume: bool = True,
    flux_scale: float | None = None,
    progress: bool = True,
    extra_info: dict | None = None,
    max_seconds: float | None = None,
    init: ScorePrior | None = None,
    record_time: bool = True,
    desc: str = "train-prior",
) -> ScorePrior:
    """Train a `ScorePrior` on ``images`` (physical units) and checkpoint it to ``out``.

    **Arguments:**

    - `images`: training images ``(n, bands, size, size)``.
    - `out`: path of the prior checkpoint (``out.state`` and ``out.log.jsonl`` beside it).
    - `config`: hyperparameters; on resume they must match the saved run's (except
      ``steps``, ``checkpoint_every`` and ``steps_per_call``).
    - `resume`: continue from ``out.state`` when it exists.
    - `flux_scale`: global flux scale (default `flux_scale_of(images)`; stored in the prior).
    - `max_seconds`: stop (with a checkpoint) after this much wall time.
    - `init`: warm start from this prior's weights (its network must match ``config``),
      with a fresh optimiser and EMA, as each M-step of EM does; its ``flux_scale`` is
      kept (the prior variable's units stay the same across EM laps) unless ``flux_scale``
      is given, and so is its ``sigma_data``. Ignored when resuming from ``out.state``.
    - `record_time`: write the training time into the prior's header (``False``: the prior
      file then depends on nothing but the data and settings, so a resumed run writes the
      same bytes as an uninterrupted one; EM logs its times itself).
    - `desc`: the progress bar's label (callers training other things than galaxy priors,
      e.g. noise models, name them).

    **Raises:**

    - `ValueError`: images of the wrong shape, or a checkpoint of another configuration.
    - `FloatingPointError`: a non-finite loss or weight; the last good checkpoint is kept.
    """
    images = np.asarray(images, dtype=np.float32)
    expect = (config.bands, config.image_size, config.image_size)
    if images.ndim != 4 or images.shape[1:] != expect:
        raise ValueError(f"images: expected shape (n, {expect[0]}, {expect[1]}, {expect[2]}), "
                         f"got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images: contain NaN or inf")
    out = Path(out)
    state_path, log_path = _state_paths(out)
    # Keyed on what shapes the optimiser only: runs that differ in seed or checkpointing
    # (EM's laps) share one optimiser object, so their training steps share one program.
    optimizer = _make_optimizer(dataclasses.replace(config, seed=0, checkpoint_every=1, steps_per_call=1))

    def skeleton(h):
        den = build_denoiser(h["net"])
        return (den, den, optimizer.init(eqx.filter(den, eqx.is_array)))

    if resume and state_path.exists():
        # Shape-only skeleton (as in load_prior): building the U-Net eagerly costs seconds.
        (model, ema, opt_state), header = load_checkpoint(
            state_path, lambda h: eqx.filter_eval_shape(skeleton, h), kind="train_state")
        h = header["hyper"]
        saved = TrainConfig.from_json(h["config"])
        diffs = [f.name for f in dataclasses.fields(TrainConfig)
                 if f.name not in _RESUMABLE and getattr(saved, f.name) != getattr(config, f.name)]
        if diffs:
            raise ValueError(
                f"config: {state_path} was trained with a different configuration "
                f"(fields {diffs}: saved {[getattr(saved, d) for d in diffs]}, given "
                f"{[getattr(config, d) for d in diffs]}); use another --out or resume=False"
            )
        step = int(h["step"])
        flux_scale = float(h["flux_scale"])
        elapsed = float(h.get("elapsed_s", 0.0))
        # Drop log lines written after the checkpoint we resume from.
        if log_path.exists():
            kept = [ln for ln in log_path.read_text().splitlines()
                    if ln.strip() and json.loads(ln)["step"] <= step]
            atomic_write_bytes(log_path, ("\n".join(kept) + "\n").encode() if kept else b"")
    elif init is not None:
        if not isinstance(init, ScorePrior):
            raise TypeError(f"init: expected a ScorePrior, got {type(init).__name__}")
        want = config.net_hyper(init.denoiser.sigma_data)
        have = net_hyper_of(init.denoiser)
        if want != have:
            raise ValueError(f"init: the prior's network {have} does not match config's {want}")
        flux_scale = float(init.flux_scale) if flux_scale is None else float(flux_scale)
        model = init.denoiser
        ema = model
        opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
        step, elapsed = 0, 0.0
        atomic_write_bytes(log_path, b"")
    else:
        flux_scale = flux_scale_of(images) if flux_scale is None else float(flux_scale)
        x = images / flux_scale
        sigma_data = float(np.std(x))
        net = _init_unet(config.bands, config.channels, config.num_res_blocks, config.emb_dim,
                         jr.key(config.seed))
        model = UNetDenoiser(net, sigma_data, config.image_size)
        ema = model
        opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
        step, elapsed = 0, 0.0
        atomic_write_bytes(log_path, b"")

    data = jnp.asarray(images / flux_scale)
    sde = VESDE(config.sigma_min, config.sigma_max)
    info = dict(extra_info or {})
    base_key = jr.fold_in(jr.key(config.seed), 1)
    cfg_static = (config.sigma_min, config.sigma_max, config.batch_size, config.augment,
                  config.ema_decay, config.sigma_center, config.sigma_spread)

    def save(model, ema, opt_state, step, elapsed):
        hyper = {"net": net_hyper_of(model), "config": config.to_json(), "step": step,
                 "flux_scale": flux_scale, "elapsed_s": elapsed}
        save_checkpoint(state_path, "train_state", hyper, (model, ema, opt_state))
        timing = {"train_seconds": round(elapsed, 1)} if record_time else {}
        save_prior(out, ScorePrior(ema, sde, flux_scale),
                   extra={**info, "step": step, **timing, "config": config.to_json()})

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc=desc,
               unit="step")
    t_start = time.perf_counter() - elapsed
    last_saved = step
    try:
        while step < config.steps:
            n = min(config.steps_per_call, config.steps - step)
            new = _train_chunk(model, ema, opt_state, data, base_key, step, n,
                               cfg_static, optimizer)
            losses = np.asarray(new[3])
            if not np.all(np.isfinite(losses)) or not _all_finite(new[:2]):
                bad = step + int(np.argmin(np.isfinite(losses))) if not np.all(
                    np.isfinite(losses)) else step + n
                raise FloatingPointError(
                    f"training: non-finite loss or weights at step {bad}; stopped, the last "
                    f"good checkpoint (step {last_saved}) is kept at {out}"
                )
            model, ema, opt_state = new[:3]
            step += n
            elapsed = time.perf_counter() - t_start
            with open(log_path, "a") as f:
                f.write(json.dumps({"step": step, "loss": float(losses.mean()),
                                    "time_s": round(elapsed, 2)}) + "\n")
            bar.update(n)
            bar.set_postfix(loss=f"{losses.mean():.4f}")
            if step - last_saved >= config.checkpoint_every or step >= config.steps:
                save(model, ema, opt_state, step, elapsed)
                last_saved = step
            if max_seconds is not None and elapsed >= max_seconds:
                if last_saved != step:
                    save(model, ema, opt_state, step, elapsed)
                    last_saved = step
                break
    except KeyboardInterrupt:
        # Keep everything done so far: the state in memory is finite (checked per chunk).
        if last_saved != step:
            save(model, ema, opt_state, step, time.perf_counter() - t_start)
        raise
    finally:
        bar.close()
    if last_saved != step or not out.exists():
        save(model, ema, opt_state, step, time.perf_counter() - t_start)
    return ScorePrior(ema, sde, flux_scale)
