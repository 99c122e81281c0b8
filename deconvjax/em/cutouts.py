"""`Cutouts`: the batch of survey cutouts that EM learns a prior from.

EM (Rozet et al. 2024) alternates an E-step, posterior samples of every cutout's clean
galaxy (or galaxies, for blends) under the current prior, and an M-step, the prior trained
on those samples. Every cutout keeps its own forward model: its own PSF image, noise and
mask. This module holds them on the host (numpy), all cutouts of one batch of the same
shape ``(band, h, w)`` with PSF images of the same shape ``(band, ph, pw)`` (so that the
E-step compiles one program for the whole batch), and checks them once, with errors that
name the argument at fault.

Source centres: isolated galaxies are one source at the cutout's centre pixel
``(h // 2, w // 2)`` (``centers=None``); blends give ``(N, n_max, 2)`` centres ``(y, x)`` in
pixels with an ``(N, n_max)`` boolean ``source_mask`` (False: a padding slot, no source).
A source's stamp is centred on its rounded centre, as `deconvjax.posterior.deblend` does.

Everything is in pixel units of the cutouts (no WCS): the E-step places the prior on the
cutout's own pixel grid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from jaxtyping import Bool, Float

__all__ = ["Cutouts"]


def _noise_weights(n_shape, weights, variance, rms, name_prefix="") -> np.ndarray:
    given = [(n, v) for n, v in (("weights", weights), ("variance", variance), ("rms", rms))
             if v is not None]
    if not given:
        raise ValueError(f"{name_prefix}weights, variance, rms: every cutout needs its noise; "
                         "give one of them")
    if len(given) > 1:
        raise ValueError(f"{name_prefix}weights, variance, rms: give exactly one, got "
                         f"{[n for n, _ in given]}")
    name, value = given[0]
    value = np.broadcast_to(np.asarray(value, np.float64), n_shape)
    if np.any(np.isnan(value)) or np.any(value < 0):
        raise ValueError(f"{name_prefix}{name}: expected non-negative values without NaN")
    if name == "weights":
        if np.any(np.isinf(value)):
            raise ValueError(f"{name_prefix}weights: contains inf (zero variance)")
        return np.array(value)
    var = value if name == "variance" else value**2
    with np.errstate(divide="ignore"):
        return np.where((var > 0) & np.isfinite(var), 1.0 / np.where(var > 0, var, 1.0), 0.0)


def _pad_centers(centers, n: int):
    """A list of ``(n_i, 2)`` arrays, or an ``(N, n_max, 2)`` array -> padded array and mask."""
    if isinstance(centers, np.ndarray) and centers.ndim == 3:
        return np.asarray(centers, np.float64), None
    centers = [np.asarray(c, np.float64).reshape(-1, 2) for c in centers]
    if len(centers) != n:
        raise ValueError(f"centers: expected one entry per cutout ({n}), got {len(centers)}")
    n_max = max(1, max(len(c) for c in centers))
    out = np.zeros((n, n_max, 2))
    mask = np.zeros((n, n_max), bool)
    for i, c in enumerate(centers):
        out[i, :len(c)] = c
        mask[i, :len(c)] = True
    return out, mask


def _one_shape(arrays, name: str, what: str, fix: str) -> np.ndarray:
    """A sequence of ``(band, h, w)`` (or ``(h, w)``) arrays of one shape as ``(N, band, h,
    w)`` float64; a `ValueError` naming ``name`` when the shapes differ."""
    if not isinstance(arrays, np.ndarray):
        shapes = {np.shape(a) for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"{name}: {what} of different shapes in one batch: {sorted(shapes)}; {fix}")
    out = np.asarray(arrays, np.float64)
    return out[:, None] if out.ndim == 3 else out


@dataclasses.dataclass(frozen=True, eq=False)
class Cutouts:
    """N cutouts of equal shape with their own PSF, noise and mask (host side, numpy).

    Build with `Cutouts.from_arrays`, `Cutouts.from_observations` (a list of
    `deconvjax.io.ObservationData`) or `Cutouts.from_fields` (a list of
    `deconvjax.io.SimulatedField`, centres from the truth tables).

    Attributes:
        data: ``(N, band, h, w)`` float64 images, 0 where masked.
        weights: ``(N, band, h, w)`` float64 inverse variances, 0 where masked.
        mask: ``(N, band, h, w)`` bool, True for bad pixels (weight 0).
        psf: ``(N, band, ph, pw)`` PSF images (odd, centred, unit sum per band).
        centers: ``(N, n_max, 2)`` source centres ``(y, x)`` in pixels, or None for
            isolated galaxies (one source at ``(h // 2, w // 2)``).
        source_mask: ``(N, n_max)`` bool, True for real sources (all True when
            ``centers`` is None, with ``n_max = 1``).
        bands: band names.
    """

    data: Float[np.ndarray, "n band h w"]
    weights: Float[np.ndarray, "n band h w"]
    mask: Bool[np.ndarray, "n band h w"]
    psf: Float[np.ndarray, "n band ph pw"]
    centers: Float[np.ndarray, "n n_max 2"] | None
    source_mask: Bool[np.ndarray, "n n_max"]
    bands: tuple[str, ...]

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen
        data = np.asarray(self.data, np.float64)
        if data.ndim != 4 or data.shape[0] < 1:
            raise ValueError(f"data: expected (N, band, h, w) with N >= 1, got shape {data.shape}")
        n, nb, h, w = data.shape
        for name in ("weights", "mask"):
            if np.shape(getattr(self, name)) != data.shape:
                raise ValueError(f"{name}: expected shape {data.shape}, got "
                                 f"{np.shape(getattr(self, name))}")
        mask = np.asarray(self.mask, bool)
        weights = np.where(mask, 0.0, np.asarray(self.weights, np.float64))
        mask = mask | (weights <= 0)
        bad = ~np.isfinite(data) & ~mask
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise ValueError(f"data: {int(bad.sum())} non-finite pixels outside the mask "
                             f"(first in cutout {i}); mask them or give them weight 0")
        if not np.all(np.isfinite(weights)):
            raise ValueError("weights: non-finite values")
        dead = ~(weights > 0).any(axis=(1, 2, 3))
        if dead.any():
            raise ValueError(f"weights: cutout(s) {np.flatnonzero(dead).tolist()} have no "
                             "pixel with noise information (all weights 0 or all masked)")
        psf = np.asarray(self.psf, np.float64)
        if psf.ndim != 4 or psf.shape[:2] != (n, nb):
            raise ValueError(f"psf: expected (N={n}, band={nb}, ph, pw), got shape {psf.shape}")
        if psf.shape[2] > h or psf.shape[3] > w:
            raise ValueError(f"psf: PSF images of shape {psf.shape[2:]} are larger than the "
                             f"cutouts ({h}, {w}); crop them")
        if not np.all(np.isfinite(psf)):
            raise ValueError("psf: non-finite values")
        if self.centers is None:
            centers, smask = None, np.ones((n, 1), bool)
        else:
            centers = np.asarray(self.centers, np.float64)
            if centers.ndim != 3 or centers.shape[0] != n or centers.shape[2] != 2:
                raise ValueError(f"centers: expected (N={n}, n_max, 2), got shape {centers.shape}")
            smask = (np.ones(centers.shape[:2], bool) if self.source_mask is None
                     else np.asarray(self.source_mask, bool))
            if smask.shape != centers.shape[:2]:
                raise ValueError(f"source_mask: expected shape {centers.shape[:2]}, got {smask.shape}")
            c = np.where(smask[..., None], centers, 0.0)
            out = smask & ~((c[..., 0] >= 0) & (c[..., 0] <= h - 1)
                            & (c[..., 1] >= 0) & (c[..., 1] <= w - 1))
            if out.any():
                i, k = np.argwhere(out)[0]
                raise ValueError(f"centers: {int(out.sum())} source centre(s) outside the "
                                 f"{h}x{w} cutout (first: cutout {i}, source {k}, at "
                                 f"{tuple(centers[i, k])})")
            if not smask.any(axis=1).all():
                raise ValueError(f"source_mask: cutout(s) {np.flatnonzero(~smask.any(1)).tolist()} "
                                 "have no source")
        bands = tuple(str(b) for b in self.bands) if self.bands else tuple(f"b{k}" for k in range(nb))
        if len(bands) != nb:
            raise ValueError(f"bands: {len(bands)} names for {nb} bands")
        set_("data", np.where(mask, 0.0, data))
        set_("weights", weights)
        set_("mask", mask)
        set_("psf", psf)
        set_("centers", centers)
        set_("source_mask", smask)
        set_("bands", bands)

    # -- shape ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(band, h, w)`` of one cutout."""
        return tuple(self.data.shape[1:])

    @property
    def n_max(self) -> int:
        """Source slots per cutout (1 for isolated galaxies)."""
        return self.source_mask.shape[1]

    @property
    def is_blend(self) -> bool:
        """Whether centres were given (else: isolated galaxies at the centre)."""
        return self.centers is not None

    def source_centers(self) -> Float[np.ndarray, "n n_max 2"]:
        """``(N, n_max, 2)`` centres; isolated galaxies at ``(h // 2, w // 2)``."""
        if self.centers is not None:
            return self.centers
        _, _, h, w = self.data.shape
        return np.broadcast_to(np.array([h // 2, w // 2], np.float64), (len(self), 1, 2)).copy()

    def select(self, index) -> Cutouts:
        """A sub-batch (``index``: an integer array or slice over cutouts)."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Cutouts(self.data[idx], self.weights[idx], self.mask[idx], self.psf[idx],
                       None if self.centers is None else self.centers[idx],
                       self.source_mask[idx], self.bands)

    def with_slots(self, n_slots: int) -> Cutouts:
        """The same cutouts with ``n_slots`` source slots: each cutout's sources moved to
        its first slots (in their order), padding slots dropped or added. Blends only;
        every cutout must have at most ``n_slots`` sources."""
        n_slots = int(n_slots)
        if self.centers is None:
            raise ValueError("with_slots: isolated cutouts (no centres) have one slot")
        counts = self.source_mask.sum(axis=1)
        if n_slots < 1 or counts.max() > n_slots:
            raise ValueError(f"n_slots: expected at least {int(counts.max())} (the most sources of a "
                             f"cutout), got {n_slots}")
        # Stable sort: real sources first, in their order.
        order = np.argsort(~self.source_mask, axis=1, kind="stable")
        centers = np.take_along_axis(self.centers, order[..., None], axis=1)
        smask = np.take_along_axis(self.source_mask, order, axis=1)
        pad = n_slots - centers.shape[1]
        if pad > 0:
            centers = np.concatenate([centers, np.zeros((len(self), pad, 2))], axis=1)
            smask = np.concatenate([smask, np.zeros((len(self), pad), bool)], axis=1)
        return Cutouts(self.data, self.weights, self.mask, self.psf, centers[:, :n_slots],
                       smask[:, :n_slots], self.bands)

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls,
        data: Float[np.ndarray, "n band h w"] | Sequence[np.ndarray],
        psf: Float[np.ndarray, "n band ph pw"] | Sequence[np.ndarray],
        *,
        variance=None,
        weights=None,
        rms=None,
        mask: Bool[np.ndarray, "n band h w"] | None = None,
        centers: Float[np.ndarray, "n n_max 2"] | Sequence[np.ndarray] | None = None,
        source_mask: Bool[np.ndarray, "n n_max"] | None = None,
        bands: Sequence[str] | None = None,
    ) -> Cutouts:
        """Cutouts from arrays.

        **Arguments:**

        - `data`: ``(N, band, h, w)`` (or ``(N, h, w)``, one band) images, or a list of
          per-cutout ``(band, h, w)`` arrays, all of one shape.
        - `psf`: ``(N, band, ph, pw)`` (or ``(N, ph, pw)``) PSF images, or a list.
        - `variance` | `weights` | `rms`: the noise, exactly one of them: per-pixel arrays
          of `data`'s shape, or per-cutout scalars ``(N,)``, or one scalar.
        - `mask`: ``(N, band, h, w)`` bool, True for bad pixels (default: none).
        - `centers`: blends: ``(N, n_max, 2)`` centres ``(y, x)`` in pixels (with
          `source_mask`), or a list of ``(n_i, 2)`` arrays (padded here); None: isolated
          galaxies at the centre.
        - `source_mask`: ``(N, n_max)`` bool, True for real sources (default: all).
        - `bands`: band names.
        """
        data = _one_shape(data, "data", "cutouts", "resize them to one shape")
        psf = _one_shape(psf, "psf", "PSF images", "pad or crop them to one shape")
        if data.ndim != 4:
            raise ValueError(f"data: expected (N, band, h, w), got shape {data.shape}")

        def per_cutout(v):
            if v is None:
                return None
            v = np.asarray(v, np.float64)
            if v.ndim == 1 and v.shape[0] == data.shape[0]:
                v = v[:, None, None, None]
            return v

        try:
            w = _noise_weights(data.shape, per_cutout(weights), per_cutout(variance),
                               per_cutout(rms))
        except ValueError as err:
            if "broadcast" in str(err):
                raise ValueError(f"variance, weights, rms: cannot broadcast to the data's "
                                 f"shape {data.shape}") from err
            raise
        mask = np.zeros(data.shape, bool) if mask is None else np.asarray(mask, bool)
        smask = source_mask
        if centers is not None:
            centers, pad_mask = _pad_centers(centers, data.shape[0])
            smask = pad_mask if smask is None else smask
        return cls(data, w, mask, psf, centers, smask, tuple(bands or ()))

    @classmethod
    def from_observations(cls, observations: Sequence, *, centers=None,
                          source_mask=None) -> Cutouts:
        """Cutouts from a list of `deconvjax.io.ObservationData` (weights and mask as
        they hold them; PSF images required, all of one shape; pixel units, WCS
        ignored). `centers` / `source_mask` as in `from_arrays`."""
        from ..io.data import ObservationData, SimulatedField

        obs = [o.data if isinstance(o, SimulatedField) else o for o in observations]
        if not obs:
            raise ValueError("observations: expected at least one cutout")
        for i, o in enumerate(obs):
            if not isinstance(o, ObservationData):
                raise TypeError(f"observations[{i}]: expected an ObservationData, got "
                                f"{type(o).__name__}")
            if o.psf_images is None:
                raise ValueError(f"observations[{i}]: no PSF images (psf_images)")
        shapes = {np.shape(o.images) for o in obs}
        if len(shapes) > 1:
            raise ValueError(f"observations: cutouts of different shapes in one batch: "
                             f"{sorted(shapes)}; resize them to one shape")
        pshapes = {np.shape(o.psf_images) for o in obs}
        if len(pshapes) > 1:
            raise ValueError(f"observations: PSF images of different shapes in one batch: "
                             f"{sorted(pshapes)}; pad or crop them to one shape")
        data = np.stack([np.asarray(o.images, np.float64) for o in obs])
        w = np.stack([np.asarray(o.weights, np.float64) for o in obs])
        mask = np.stack([np.asarray(o.mask, bool) for o in obs])
        bad = ~np.isfinite(w)
        mask, w = mask | bad, np.where(bad, 0.0, w)
        psf = np.stack([np.asarray(o.psf_images, np.float64) for o in obs])
        smask = source_mask
        if centers is not None:
            centers, pad_mask = _pad_centers(centers, len(obs))
            smask = pad_mask if smask is None else smask
        return cls(data, w, mask, psf, centers, smask, tuple(obs[0].bands))

    @classmethod
    def from_fields(cls, fields: Sequence, *, blends: bool = True) -> Cutouts:
        """Cutouts from a list of `deconvjax.io.SimulatedField`: the fields' observations,
        with the truth tables' ``y``, ``x`` as source centres (``blends=False``: isolated
        galaxies at the cutout centre, truth ignored)."""
        centers = None
        if blends:
            centers = [np.stack([np.asarray(f.truth["y"], np.float64),
                                 np.asarray(f.truth["x"], np.float64)], -1) for f in fields]
        return cls.from_observations(fields, centers=centers)
