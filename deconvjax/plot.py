"""Pictures of data, models and residuals (matplotlib, no display needed)."""

import os
from collections.abc import Sequence

import numpy as np
from astropy.visualization import make_lupton_rgb
from matplotlib.figure import Figure


def _three_channels(cube: np.ndarray) -> np.ndarray:
    """(band, y, x) -> (3, y, x) in (red, green, blue) order: bands are taken to run
    from blue to red; a single band is grey, two get their mean as green, more than
    three keep the reddest, the middle and the bluest."""
    cube = np.asarray(cube, dtype=np.float64)
    if cube.ndim == 2:
        cube = cube[None]
    n = cube.shape[0]
    if n == 1:
        return np.repeat(cube, 3, axis=0)
    if n == 2:
        return np.stack([cube[1], cube.mean(0), cube[0]])
    return np.stack([cube[-1], cube[n // 2], cube[0]])


def lupton_rgb(cube, *, stretch: float | None = None, Q: float = 8.0, minimum: float = 0.0) -> np.ndarray:
    """An asinh (Lupton et al. 2004) colour image ``(y, x, 3)`` uint8 of a
    ``(band, y, x)`` cube. ``stretch`` defaults to a robust fraction of the image's
    brightest pixels so that faint light shows."""
    rgb = _three_channels(cube)
    if stretch is None:
        positive = rgb[rgb > 0]
        stretch = float(np.percentile(positive, 99.5)) / 2.0 if positive.size else 1.0
        stretch = stretch if stretch > 0 else 1.0
    # astropy divides by the summed intensity, which is 0 on empty pixels (mapped to 0).
    with np.errstate(invalid="ignore", divide="ignore"):
        return make_lupton_rgb(rgb[0], rgb[1], rgb[2], minimum=minimum, stretch=stretch, Q=Q)


def plot_scene(
    data,
    model,
    path: str | os.PathLike,
    *,
    weights=None,
    positions: Sequence[tuple[float, float]] | None = None,
    title: str | None = None,
) -> None:
    """Save a PNG with three panels: the observation, the model and the residual.

    **Arguments:**

    - `data`, `model`: ``(band, y, x)`` arrays on the same pixels (``model`` is the model
      pushed through the observation's operator).
    - `path`: output PNG file (written atomically).
    - `weights`: inverse variances; the residual panel then shows ``(data - model) *
      sqrt(weights)`` in units of sigma, on a fixed -5..5 scale.
    - `positions`: ``(y, x)`` pixel positions to mark (e.g. fitted source centres).
    """
    data, model = np.asarray(data), np.asarray(model)
    if data.shape != model.shape:
        raise ValueError(f"data has shape {data.shape} but model has shape {model.shape}")
    rgb_stretch = None
    positive = _three_channels(data)
    positive = positive[positive > 0]
    if positive.size:
        rgb_stretch = max(float(np.percentile(positive, 99.5)) / 2.0, 1e-12)
    fig = Figure(figsize=(12, 4.3), dpi=110)
    axes = fig.subplots(1, 3)
    axes[0].imshow(lupton_rgb(data, stretch=rgb_stretch), origin="lower")
    axes[0].set_title("observation")
    axes[1].imshow(lupton_rgb(model, stretch=rgb_stretch), origin="lower")
    axes[1].set_title("model")
    resid = data - model
    if weights is not None:
        resid = resid * np.sqrt(np.asarray(weights))
        vlim, label = 5.0, "residual / sigma (band sum / sqrt(n))"
        shown = resid.sum(0) / np.sqrt(resid.shape[0])
    else:
        shown = resid.sum(0)
        vlim = float(np.percentile(np.abs(shown), 99)) or 1.0
        label = "residual (band sum)"
    im = axes[2].imshow(shown, origin="lower", cmap="RdBu_r", vmin=-vlim, vmax=vlim)
    axes[2].set_title(label, fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    if positions is not None and len(positions):
        pos = np.asarray(positions)
        for ax in axes:
            ax.scatter(pos[:, 1], pos[:, 0], marker="+", c="w", s=40, linewidths=1)
            for i, (y, x) in enumerate(pos):
                ax.annotate(str(i), (x, y), xytext=(3, 3), textcoords="offset points", color="w", fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Write a figure to PNG atomically (`deconvjax._atomic.atomic_write`)."""
    from ._atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
