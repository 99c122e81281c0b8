"""EM laps over survey cutouts, resumable at any moment.

Each lap ``k = 1 .. laps``:

1. E-step: posterior samples of every cutout under the current prior, through that
   cutout's own forward model (`deconvjax.em.estep`), chunk by chunk; each chunk's samples
   are written atomically as soon as they exist, its key is
   ``fold_in(fold_in(key, k), chunk)``;
2. M-step: denoising score matching on all the lap's samples (`train_prior`), warm-started
   from the previous network with a fresh optimiser and EMA; the flux scale of the prior
   variable stays the first lap's; training checkpoints itself and resumes exactly. When
   the new network's samples do not reproduce the images it trained on
   (`deconvjax.em.diagnostics.mstep_fidelity`), it trains another round of the same
   length, warm-started from itself, up to ``mstep_rounds`` rounds: an unfaithful M-step
   hands its error to the next E-step and the laps compound it;
3. diagnostics: E-step chi2 per pixel, the new prior's sample statistics and their change,
   a montage of its samples, wall times, appended to ``em.log.jsonl`` and drawn as PNGs.

The starting prior (lap 0) is a Gaussian fitted to the cutouts by closed-form EM with the
exact posterior (`deconvjax.em.gaussian`), whose E-step draws exact posterior samples, or
any `ScorePrior`. After a Gaussian start, lap 1 trains a network from scratch on the
Gaussian lap's posterior samples.

Everything lives in ``out``: ``em_state.json`` (what is finished), ``lap_KKK/`` (samples per
chunk, the lap's prior ``prior.eqx`` with its training state), ``em.log.jsonl``, PNGs.
Rerunning the same run continues where it stopped and ends with the same prior, byte for
byte, as an uninterrupted run; a run with other settings in the same ``out`` is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time
import warnings
from pathlib import Path
from types import MappingProxyType

import jax.random as jr
import numpy as np

from .._atomic import atomic_write, atomic_write_bytes
from ..diffusion.prior import ScorePrior, load_prior
from ..diffusion.train import TrainConfig, train_prior
from .diagnostics import estep_fidelity, morphology_statistics, mstep_fidelity, save_montage, summarise_statistics
from .gaussian import data_moments, initial_moments

__all__ = ["EMConfig", "run_em", "EMRun", "source_buckets", "EM_TRAIN_NOISE"]

FORMAT = "deconvjax-em/1"
GAUSSIAN_INITS = {"data": data_moments, "isotropic": initial_moments}
# Settings added after runs were first written, with the value those runs used: a saved
# run without them resumes only under that value.
_LEGACY_IDENTITY = {"gaussian_init": "isotropic", "model_psf_sigma": 0.5, "mstep_rounds": 1}
_LEGACY_TRAIN_IDENTITY = {"sigma_center": None, "sigma_spread": 1.2}
#: The M-step's denoising-score-matching noise levels for a network EM trains from scratch:
#: log-normal around the images' own scale (`TrainConfig.sigma_center`), not the default
#: spread over the whole SDE range, which trains faint galaxies mostly at noise far above
#: their signal; measured in benchmarks/RESULTS.md (ninth session): half the per-lap PSNR
#: loss of the quick EM benchmark and a network closer to its training images' flux.
EM_TRAIN_NOISE = MappingProxyType({"sigma_center": 1.0, "sigma_spread": 1.5})


@dataclasses.dataclass(frozen=True)
class EMConfig:
    """Settings of an EM run (all JSON-serialisable; a resumed run must match them, but
    for ``laps``, which may grow).

    **Arguments:**

    - `laps`: EM laps after the starting prior.
    - `chunk`: cutouts per E-step chunk (one compiled program serves every chunk).
    - `n_samples`: posterior samples per cutout per lap.
    - `train`: the M-step's `TrainConfig` (``steps`` per lap; by default with the noise
      levels of `EM_TRAIN_NOISE`).
    - `sampler_steps`: steps of the E-step's sampler (`DPMSolver2M`). As the prior
      sharpens lap after lap it needs more: under a network trained on the truths, 24
      steps left samples 28% too bright and 48-64 fitted the data to the noise
      (`deconvjax.em.diagnostics.ESTEP_CHI2_TOLERANCE`; a lap warns above it).
    - `gaussian_laps`: laps of the closed-form Gaussian EM of a Gaussian start.
    - `gaussian_rank`: rank of the Gaussian start's low-rank-plus-diagonal covariance
      (``0``: a full covariance).
    - `gaussian_init`: where the Gaussian EM starts: ``"data"`` (the data's covariance
      less the noise, `deconvjax.em.gaussian.data_moments`) or ``"isotropic"`` (a scaled
      identity, `deconvjax.em.gaussian.initial_moments`).
    - `model_psf_sigma`: the E-step's model PSF (a Gaussian, in cutout pixels): the
      resolution of the prior's images. It must be narrower than every cutout's PSF
      (the E-step's matching kernels are checked).
    - `n_prior_samples`: prior samples drawn per lap for the diagnostics (and the
      M-step's fidelity check).
    - `mstep_rounds`: at most this many M-step trainings per lap (each ``train.steps``
      long, the next warm-started from the last with a fresh optimiser and EMA), until
      the network's samples reproduce the lap's training images within
      `deconvjax.em.diagnostics.MSTEP_FLUX_TOLERANCE`; ``1``: one training, whatever
      its fidelity (the lap then warns).
    - `seed`: the run's key.
    """

    laps: int = 4
    chunk: int = 64
    n_samples: int = 1
    train: TrainConfig = TrainConfig(steps=2000, **EM_TRAIN_NOISE)
    sampler_steps: int = 64
    gaussian_laps: int = 16
    gaussian_rank: int = 0
    gaussian_init: str = "data"
    model_psf_sigma: float = 0.5
    n_prior_samples: int = 64
    mstep_rounds: int = 3
    seed: int = 0

    def __post_init__(self):
        for name in ("laps", "chunk", "n_samples", "sampler_steps", "n_prior_samples", "mstep_rounds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)!r}")
        if int(self.gaussian_laps) < 0 or int(self.gaussian_rank) < 0:
            raise ValueError("gaussian_laps and gaussian_rank: expected ints >= 0")
        if self.gaussian_init not in GAUSSIAN_INITS:
            raise ValueError(f"gaussian_init: expected one of {sorted(GAUSSIAN_INITS)}, got {self.gaussian_init!r}")
        if not (np.isfinite(self.model_psf_sigma) and float(self.model_psf_sigma) > 0):
            raise ValueError(f"model_psf_sigma: expected a positive number of pixels, got {self.model_psf_sigma!r}")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_json()
        return d

    def identity(self) -> dict:
        """What a resumed run must share with the saved one (``laps`` may grow)."""
        d = self.to_json()
        d.pop("laps")
        d["train"].pop("checkpoint_every")
        d["train"].pop("steps_per_call")
        return d


@dataclasses.dataclass
class EMRun:
    """What `run_em` returns: the final prior, the per-lap diagnostics and the output folder."""

    prior: ScorePrior
    history: list[dict]
    out: Path


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def _save_npz(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _digest(cutouts) -> str:
    """A fingerprint of the cutouts' data, so a resume refuses other cutouts."""
    h = hashlib.sha256()
    for a in (cutouts.data, cutouts.weights):
        h.update(np.ascontiguousarray(np.asarray(a, np.float32)).tobytes())
    return h.hexdigest()[:16]


def run_em(
    cutouts,
    out,
    config: EMConfig = EMConfig(),
    *,
    start: str | ScorePrior = "gaussian",
    progress: bool = True,
    prior_info: dict | None = None,
) -> EMRun:
    """Learn a galaxy prior from ``cutouts`` alone by EM (module docstring).

    **Arguments:**

    - `cutouts`: a `deconvjax.em.Cutouts` batch (each with its own PSF, noise and mask;
      isolated galaxies or blends).
    - `out`: the run's folder; rerunning with the same arguments resumes.
    - `config`: an `EMConfig`.
    - `start`: ``"gaussian"`` (closed-form Gaussian EM on the cutouts), ``"shipped"``
      (the packaged prior), a checkpoint path, or a `ScorePrior`.
    - `progress`: progress bars over laps and chunks.
    - `prior_info`: string entries recorded in every lap's prior (`ScorePrior.info`),
      e.g. ``{"cosmos_holdout_every": "5"}`` when the cutouts leave out the rows the
      starting prior left out, so that `ScorePrior.cosmos_heldout` still names them. The
      starting prior's own entries are recorded with a ``start_`` prefix.

    **Returns:** an `EMRun`.
    """
    from tqdm.auto import tqdm

    from .cutouts import Cutouts

    if not isinstance(cutouts, Cutouts):
        raise TypeError(f"cutouts: expected a deconvjax.em.Cutouts, got {type(cutouts).__name__}")
    if not isinstance(config, EMConfig):
        raise TypeError(f"config: expected an EMConfig, got {type(config).__name__}")
    if prior_info is not None and not (isinstance(prior_info, dict)
                                       and all(isinstance(k, str) for k in prior_info)):
        raise TypeError(f"prior_info: expected a dict with str keys, got {prior_info!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start_name = start if isinstance(start, str) else "prior-object"
    identity = {"config": config.identity(), "start": start_name, "cutouts": _digest(cutouts),
                "n_cutouts": len(cutouts)}
    state_path = out / "em_state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        saved = state.get("identity")
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            saved["config"] = {**_LEGACY_IDENTITY, **saved["config"]}
            if isinstance(saved["config"].get("train"), dict):
                saved["config"]["train"] = {**_LEGACY_TRAIN_IDENTITY, **saved["config"]["train"]}
        if state.get("format") != FORMAT or saved != identity:
            raise ValueError(
                f"out: {out} holds an EM run with other settings or cutouts "
                f"({state.get('identity')}); use another --out, or the same settings to resume"
            )
    else:
        state = {"format": FORMAT, "identity": identity, "laps_done": 0, "chunks_done": 0, "history": []}
        _write_json(state_path, state)
    key = jr.key(config.seed)

    prior = _starting_prior(cutouts, out, config, start, progress)
    start_info = tuple((k, v) for k, v in prior.info if not k.startswith("start_"))
    from ..posterior.base import prior_shape

    want = (config.train.bands, config.train.image_size, config.train.image_size)
    if prior_shape(prior.denoiser) != want:
        raise ValueError(
            f"config: the M-step trains on (bands, size, size) = {want} (config.train) but the "
            f"starting prior's images are {prior_shape(prior.denoiser)}; set config.train's "
            "bands and image_size to the prior's"
        )
    history = list(state["history"])
    laps = tqdm(total=config.laps, initial=state["laps_done"], desc="EM laps", disable=not progress)
    try:
        for lap in range(1, config.laps + 1):
            lap_dir = out / f"lap_{lap:03d}"
            prior_path = lap_dir / "prior.eqx"
            if lap <= state["laps_done"]:
                prior = load_prior(prior_path)
                continue
            lap_dir.mkdir(exist_ok=True)
            lap_key = jr.fold_in(key, lap)
            t0 = time.perf_counter()
            samples, chi2 = _estep_lap(lap_key, prior, cutouts, config, lap_dir, state, state_path, progress)
            t_e = time.perf_counter() - t0
            estep_check = estep_fidelity(chi2)
            if "estep_warning" in estep_check:
                warnings.warn(f"EM lap {lap}: {estep_check['estep_warning']}", RuntimeWarning, stacklevel=2)
            t0 = time.perf_counter()
            info = {"em_lap": lap, **{f"start_{k}": v for k, v in start_info},
                    **{k: str(v) for k, v in (prior_info or {}).items()}}
            prior, images, stats, fidelity, rounds = _mstep(jr.fold_in(lap_key, 1 << 20), samples, prior,
                                                            config, lap_dir, info, progress)
            t_m = time.perf_counter() - t0
            record = _diagnose(images, stats, fidelity, lap, lap_dir, history, rounds)
            record.update({"lap": lap, "estep_seconds": round(t_e, 2), "mstep_seconds": round(t_m, 2),
                           "mstep_rounds": rounds,
                           **estep_check,
                           "n_training_images": int(len(samples))})
            history.append(record)
            state.update({"laps_done": lap, "chunks_done": 0, "history": history})
            _write_json(state_path, state)
            _write_log(out / "em.log.jsonl", history)
            _plot_history(out / "diagnostics.png", history)
            laps.update(1)
    finally:
        laps.close()
    return EMRun(prior=prior, history=history, out=out)


def _starting_prior(cutouts, out: Path, config: EMConfig, start, progress: bool):
    """Lap 0: the Gaussian fitted to the cutouts (computed once, saved), or a `ScorePrior`."""
    if isinstance(start, ScorePrior):
        return start
    if start == "shipped":
        return load_prior()
    if start != "gaussian":
        return load_prior(start)
    from .start import fit_gaussian_prior, load_gaussian_prior, save_gaussian_prior

    path = out / "lap_000" / "gaussian.eqx"
    if path.exists():
        return load_gaussian_prior(path)
    path.parent.mkdir(exist_ok=True)
    prior = fit_gaussian_prior(cutouts, laps=config.gaussian_laps, rank=config.gaussian_rank or None,
                               init=GAUSSIAN_INITS[config.gaussian_init],
                               progress=progress)
    save_gaussian_prior(path, prior)
    return prior


def source_buckets(cutouts) -> list[tuple[int, np.ndarray]]:
    """``(slots, indices)`` groups of a batch for the E-step: a blend batch's cutouts by
    their source count padded to a power of two (at most the batch's ``n_max``), so that
    an isolated galaxy among blends costs one prior evaluation per sampler step rather
    than ``n_max``; one group for isolated batches. Each group is one compiled program."""
    if not cutouts.is_blend:
        return [(1, np.arange(len(cutouts)))]
    counts = cutouts.source_mask.sum(axis=1)
    slots = np.minimum(2 ** np.ceil(np.log2(counts)).astype(int), cutouts.n_max)
    return [(int(k), np.flatnonzero(slots == k)) for k in np.unique(slots)]


def _estep_lap(key, prior, cutouts, config: EMConfig, lap_dir: Path, state: dict, state_path: Path,
               progress: bool):
    """The lap's E-step, bucket by bucket (`source_buckets`) and chunk by chunk, each
    chunk's samples saved as it finishes (a resumed lap reads the finished ones back).
    Returns the training images (the samples of every present source, in physical
    units) and each cutout's chi2 per pixel (in bucket order)."""
    from tqdm.auto import tqdm

    from ..diffusion.samplers import DPMSolver2M
    from .estep import estep, fft_shape_of

    sampler = DPMSolver2M(steps=config.sampler_steps)
    sigma = float(config.model_psf_sigma)
    # The whole batch's FFT period: every chunk of every lap has the same shapes.
    fft_shape = fft_shape_of(cutouts, model_psf_sigma=sigma)
    buckets = source_buckets(cutouts)
    jobs = []  # (file, bucket's cutouts, indices into them); chunk c of the lap is jobs[c]
    for slots, members in buckets:
        sub = cutouts.select(members)
        sub = sub.with_slots(slots) if cutouts.is_blend else sub
        tag = f"s{slots}_" if cutouts.is_blend else ""
        for k in range(int(np.ceil(len(sub) / config.chunk))):
            idx = np.arange(k * config.chunk, min((k + 1) * config.chunk, len(sub)))
            jobs.append((lap_dir / f"samples_{tag}{len(jobs):05d}.npz", sub, idx))
    all_images, chi2 = [], []
    bar = tqdm(total=len(jobs), desc="E-step", disable=not progress, leave=False)
    for c, (path, sub, idx) in enumerate(jobs):
        if not path.exists():
            # One chunk per call, padded by `estep` to ``chunk`` cutouts (or the bucket's
            # size): every chunk of a bucket, in every lap, runs the same compiled programs.
            result = estep(jr.fold_in(key, c), prior, sub.select(idx), sampler=sampler,
                           n_samples=config.n_samples, chunk=min(config.chunk, len(sub)),
                           fft_shape=fft_shape, model_psf_sigma=sigma, progress=False)
            present = np.asarray(result.source_mask, bool)  # (cutout, slots)
            samples = np.asarray(result.samples)  # (cutout, n_samples, slots, band, h, w)
            images = np.moveaxis(samples, 1, 2)[present].reshape(-1, *samples.shape[-3:])
            _save_npz(path, images=(images * float(prior.flux_scale)).astype(np.float32),
                      chi2=np.asarray(result.chi2_mean, np.float64))
            state["chunks_done"] = c + 1
            _write_json(state_path, state)
        with np.load(path) as z:
            all_images.append(z["images"])
            chi2.append(z["chi2"])
        bar.update(1)
    bar.close()
    return np.concatenate(all_images), np.concatenate(chi2)


def _mstep(key, images: np.ndarray, prior, config: EMConfig, lap_dir: Path, info: dict, progress: bool):
    """Denoising score matching on the lap's samples, warm-started from the previous
    network (none after a Gaussian start), in the previous prior's flux units; then, while
    the network's samples do not reproduce ``images`` (`mstep_fidelity`) and rounds remain,
    another round warm-started from the last. Round ``r`` trains into
    ``prior_round{r}.eqx`` (round 0 into ``prior.eqx``), its fidelity samples drawn with
    ``fold_in(key, r)``, so a resumed lap replays the same decisions; the last round's prior
    is written to ``prior.eqx``. Returns the prior, its samples (physical units) and their
    statistics, the fidelity record and the number of rounds."""
    from .start import is_gaussian_prior

    training_stats = morphology_statistics(np.asarray(images))
    init = None if is_gaussian_prior(prior) else prior
    lap = int(info["em_lap"])
    for r in range(int(config.mstep_rounds)):
        path = lap_dir / ("prior.eqx" if r == 0 else f"prior_round{r}.eqx")
        # Every round has the same TrainConfig but its seed: one optimiser object, one
        # compiled training step for every round of every lap.
        train = dataclasses.replace(config.train, seed=config.train.seed + lap + (r << 16))
        prior = train_prior(images, path, train, resume=True, flux_scale=float(prior.flux_scale), init=init,
                            progress=progress, extra_info={**info, "mstep_round": str(r)}, record_time=False)
        init = prior
        samples, stats = _prior_samples(jr.fold_in(key, r) if r else key, prior, config)
        fidelity = mstep_fidelity(stats, training_stats)
        if "mstep_warning" not in fidelity:
            break
    if r:
        atomic_write_bytes(lap_dir / "prior.eqx", path.read_bytes())
    return prior, samples, stats, fidelity, r + 1


def _prior_samples(key, prior: ScorePrior, config: EMConfig):
    """``n_prior_samples`` samples of ``prior`` (physical units) and their statistics."""
    from ..diffusion.samplers import DPMSolver2M, sample

    x, _ = sample(key, prior.denoiser, DPMSolver2M(steps=config.sampler_steps), sde=prior.sde,
                  shape=prior.shape, n_samples=config.n_prior_samples)
    images = np.asarray(prior.denormalise(x))
    return images, morphology_statistics(images)


def _diagnose(images: np.ndarray, stats: dict, fidelity: dict, lap: int, lap_dir: Path, history: list[dict],
              rounds: int) -> dict:
    """The new prior's sample statistics, their change since the last lap, how well they
    reproduce the images the M-step trained on (a warning when not), a montage."""
    summary = summarise_statistics(stats)
    record = {"prior_" + k: v for k, v in summary.items()}
    record.update(fidelity)
    if "mstep_warning" in fidelity:
        warnings.warn(f"EM lap {lap} (after {rounds} M-step round{'s' * (rounds > 1)}): {fidelity['mstep_warning']}",
                      RuntimeWarning, stacklevel=3)
    if history:
        last = history[-1]
        for k in ("flux", "hlr", "ellipticity", "asymmetry"):
            new, old = summary[f"{k}_q16_50_84"][1], last[f"prior_{k}_q16_50_84"][1]
            record[f"change_{k}_median"] = float(new - old)
    save_montage(images, lap_dir / "prior_samples.png", title=f"EM lap {lap}: prior samples")
    return record


def _write_log(path: Path, history: list[dict]) -> None:
    # Rewritten whole, atomically: a resumed run never leaves a lap logged twice.
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history).encode())


def _plot_history(path: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    laps = [r["lap"] for r in history]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3))
    axes[0].plot(laps, [r["estep_chi2_per_pixel"] for r in history], "o-")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_title("E-step chi2 / pixel")
    for ax, k in zip(axes[1:3], ("hlr", "ellipticity")):
        q = np.array([r[f"prior_{k}_q16_50_84"] for r in history])
        ax.fill_between(laps, q[:, 0], q[:, 2], alpha=0.3)
        ax.plot(laps, q[:, 1], "o-")
        ax.set_title(f"prior {k} (16/50/84%)")
    axes[3].plot(laps, [r["estep_seconds"] for r in history], "o-", label="E-step")
    axes[3].plot(laps, [r["mstep_seconds"] for r in history], "s-", label="M-step")
    axes[3].set_title("seconds per lap")
    axes[3].legend()
    for ax in axes:
        ax.set_xlabel("lap")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)

