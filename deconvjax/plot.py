"""Pictures of data, models, residuals, fits and posteriors (matplotlib, no display needed).

Every ``plot_*`` function returns a matplotlib `Figure` and draws into the axes given by
``ax`` (one panel) or ``axes`` (several), so that it composes with the caller's own
figures; without them it makes a new `Figure` that belongs to nobody (not to pyplot's
registry: nothing global, nothing to close). `save_figure` writes a figure as PNG and
`figure_png` gives its PNG bytes, which is what the ``_repr_png_`` methods of `Scene`,
`Observation`, `FitResult`, `PosteriorResult` and `DeblendResult` return for Jupyter.

Images are ``(band, y, x)`` cubes, bands from blue to red: several bands are shown as an
asinh colour image (`lupton_rgb`), one band on a grey asinh stretch.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "figure_png", "lupton_rgb", "plot_deblend", "plot_fit", "plot_flux_posteriors", "plot_image", "plot_mean",
    "plot_model", "plot_observation", "plot_posterior", "plot_samples", "plot_scene", "plot_std", "save_figure",
    "source_flux_samples",
]


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


def _auto_stretch(cube) -> float:
    positive = _three_channels(cube)
    positive = positive[positive > 0]
    stretch = float(np.percentile(positive, 99.5)) / 2.0 if positive.size else 1.0
    return stretch if stretch > 0 else 1.0


def lupton_rgb(cube, *, stretch: float | None = None, Q: float = 8.0, minimum: float = 0.0) -> np.ndarray:
    """An asinh (Lupton et al. 2004) colour image ``(y, x, 3)`` uint8 of a
    ``(band, y, x)`` cube. ``stretch`` defaults to a robust fraction of the image's
    brightest pixels so that faint light shows."""
    # Imported here: astropy.visualization pulls in astropy.modeling and .convolution, which
    # single-band pictures (each `deconvjax fit` of one band writes one) do not need.
    from astropy.visualization import make_lupton_rgb

    rgb = _three_channels(cube)
    if stretch is None:
        stretch = _auto_stretch(cube)
    # astropy divides by the summed intensity, which is 0 on empty pixels (mapped to 0).
    with np.errstate(invalid="ignore", divide="ignore"):
        return make_lupton_rgb(rgb[0], rgb[1], rgb[2], minimum=minimum, stretch=stretch, Q=Q)


# ----------------------------------------------------------------------------------------
# Figures and axes
# ----------------------------------------------------------------------------------------


def _axes(ax, n: int, figsize, name: str = "axes"):
    """``(figure, [n axes])``: the caller's (``ax``: one Axes or a sequence of ``n``), or a
    new Figure's row of ``n``."""
    if ax is None:
        fig = Figure(figsize=figsize, dpi=100)
        made = fig.subplots(1, n, squeeze=False)[0]
        return fig, list(made)
    axes = list(np.ravel(np.asarray(ax, dtype=object))) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) < n:
        raise ValueError(f"{name}: {n} axes needed, got {len(axes)}")
    for a in axes:
        if not hasattr(a, "imshow"):
            raise TypeError(f"{name}: expected matplotlib Axes, got {type(a).__name__}")
    return axes[0].figure, axes[:n]


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _cube(image, name: str) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name}: expected (y, x) or (band, y, x), got shape {a.shape}")
    return a


def _show(ax, cube: np.ndarray, scale: float | None = None) -> None:
    """A cube on ``ax``: colour (several bands) or grey asinh (one band); ``scale`` sets
    the stretch (shared between panels that should compare)."""
    if cube.shape[0] > 1:
        ax.imshow(lupton_rgb(cube, stretch=scale), origin="lower")
        return
    img = cube[0]
    s = scale if scale is not None else max(float(np.percentile(np.abs(img), 99.5)), 1e-30) / 2.0
    ax.imshow(np.arcsinh(img / (0.1 * s)), origin="lower", cmap="gray", vmin=0, vmax=np.arcsinh(20.0))


def plot_image(image, *, ax=None, title: str | None = None, positions=None, stretch: float | None = None) -> Figure:
    """One image: a ``(band, y, x)`` cube (or ``(y, x)``) as `lupton_rgb` colour, or grey
    for one band; ``positions``: ``(y, x)`` pixels to mark and number."""
    fig, (a,) = _axes(ax, 1, (4.2, 4.2), "ax")
    _show(a, _cube(image, "image"), stretch)
    _mark(a, positions)
    if title:
        a.set_title(title, fontsize=9)
    _bare(a)
    return fig


def _mark(ax, positions) -> None:
    if positions is None or not len(positions):
        return
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    ax.scatter(pos[:, 1], pos[:, 0], marker="+", c="w", s=40, linewidths=1)
    for i, (y, x) in enumerate(pos):
        ax.annotate(str(i), (x, y), xytext=(3, 3), textcoords="offset points", color="w", fontsize=7)


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: float | None = None):
    """Write a figure to PNG atomically (`deconvjax._atomic.atomic_write`); returns the path."""
    from ._atomic import atomic_write

    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def figure_png(fig: Figure, *, dpi: float = 80) -> bytes:
    """The figure as PNG bytes: what Jupyter shows. A Figure made here has matplotlib's
    base canvas, which prints PNG through Agg whatever backend pyplot uses; a pyplot
    figure keeps its own canvas."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------
# Data, models, fits
# ----------------------------------------------------------------------------------------


def plot_scene(
    data,
    model,
    path: str | os.PathLike | None = None,
    *,
    weights=None,
    positions: Sequence[tuple[float, float]] | None = None,
    title: str | None = None,
    axes=None,
) -> Figure:
    """Three panels: the observation, the model and the residual; returns the Figure,
    and saves it as PNG where ``path`` is given.

    **Arguments:**

    - `data`, `model`: ``(band, y, x)`` arrays on the same pixels (``model`` is the model
      pushed through the observation's operator).
    - `path`: output PNG file (written atomically), or None.
    - `weights`: inverse variances; the residual panel then shows ``(data - model) *
      sqrt(weights)`` in units of sigma, on a fixed -5..5 scale.
    - `positions`: ``(y, x)`` pixel positions to mark (e.g. fitted source centres).
    - `axes`: three matplotlib Axes to draw into (default: a new Figure).
    """
    data, model = _cube(data, "data"), _cube(model, "model")
    if data.shape != model.shape:
        raise ValueError(f"data has shape {data.shape} but model has shape {model.shape}")
    fig, axs = _axes(axes, 3, (12, 4.3))
    stretch = _auto_stretch(data) if data.shape[0] > 1 else max(float(np.percentile(np.abs(data), 99.5)), 1e-30) / 2.0
    _show(axs[0], data, stretch)
    axs[0].set_title("observation")
    _show(axs[1], model, stretch)
    axs[1].set_title("model")
    resid = data - model
    if weights is not None:
        resid = resid * np.sqrt(np.asarray(weights))
        vlim, label = 5.0, "residual / sigma (band sum / sqrt(n))"
        shown = resid.sum(0) / np.sqrt(resid.shape[0])
    else:
        shown = resid.sum(0)
        vlim = float(np.percentile(np.abs(shown), 99)) or 1.0
        label = "residual (band sum)"
    im = axs[2].imshow(shown, origin="lower", cmap="RdBu_r", vmin=-vlim, vmax=vlim)
    axs[2].set_title(label, fontsize=9)
    fig.colorbar(im, ax=axs[2], fraction=0.046, pad=0.04)
    for a in axs:
        _mark(a, positions)
        _bare(a)
    if title:
        fig.suptitle(title)
    if axes is None:
        fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=110)
    return fig


def plot_model(scene, observation=None, *, ax=None, axes=None, title: str | None = None) -> Figure:
    """A `Scene`: its model cube with the sources' centres numbered (``ax``: one panel);
    with an ``observation``, `plot_scene` of its data, the model seen through it and the
    residual in sigma (``axes``: three panels)."""
    from .fit.measure import source_centers

    centres = source_centers(scene) if scene.n_sources else None
    model = np.asarray(scene.render())
    if observation is None:
        return plot_image(model, ax=ax, positions=centres, title=title or f"model: {scene.n_sources} sources")
    seen = np.asarray(observation.predict(model))
    on_grid = observation.coords is None
    return plot_scene(np.asarray(observation.data), seen, weights=np.asarray(observation.weights),
                      positions=centres if on_grid else None, title=title, axes=axes)


def plot_observation(observation, *, axes=None, title: str | None = None) -> Figure:
    """An `Observation`: its data and its noise (``1 / sqrt(weight)``, masked pixels
    white), two panels."""
    fig, axs = _axes(axes, 2, (8, 4.2))
    data = _cube(observation.data, "observation.data")
    _show(axs[0], data)
    axs[0].set_title(title or f"data {', '.join(observation.bands)}", fontsize=9)
    w = np.asarray(observation.weights, np.float64)
    with np.errstate(divide="ignore"):
        sigma = np.where(w > 0, 1.0 / np.sqrt(np.where(w > 0, w, 1.0)), np.nan).mean(0)
    im = axs[1].imshow(sigma, origin="lower", cmap="viridis")
    axs[1].set_title("noise sigma (band mean)", fontsize=9)
    fig.colorbar(im, ax=axs[1], fraction=0.046, pad=0.04)
    for a in axs:
        _bare(a)
    if axes is None:
        fig.tight_layout()
    return fig


def plot_fit(result, *, ax=None) -> Figure:
    """A `FitResult`: the loss logged at every chunk against the step, with how the fit
    ended (steps, converged, chi2 per pixel) in the title."""
    fig, (a,) = _axes(ax, 1, (5, 3.4), "ax")
    hist = np.asarray(result.loss_history, dtype=np.float64).reshape(-1, 2)
    if len(hist):
        a.plot(hist[:, 0], hist[:, 1], "o-", ms=3)
        if np.all(hist[:, 1] > 0):
            a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("loss (chi2 / 2 + penalties)")
    state = "failed" if np.any(result.failed) else ("converged" if np.all(result.converged) else "not converged")
    a.set_title(f"{state} after {np.max(result.iterations)} steps, chi2/pixel "
                f"{float(np.mean(result.chi2_per_pixel)):.3g}", fontsize=9)
    if ax is None:
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# Posteriors
# ----------------------------------------------------------------------------------------


def _field(result_or_array, name: str):
    """An array given as is, or a result's field ``name`` (arrays have ``.mean`` and
    ``.std`` methods of their own, so test for an array first)."""
    if hasattr(result_or_array, "shape") and hasattr(result_or_array, "dtype"):
        return result_or_array
    if not hasattr(result_or_array, name):
        raise TypeError(f"expected an array or a result with a {name!r} field, got {type(result_or_array).__name__}")
    return getattr(result_or_array, name)


def _samples_of(result_or_samples) -> np.ndarray:
    s = _field(result_or_samples, "samples")
    s = np.asarray(s, np.float64)
    if s.ndim == 3:
        s = s[:, None]
    if s.ndim != 4:
        raise ValueError(f"samples: expected (n, band, y, x), got shape {s.shape}")
    return s


def plot_samples(result_or_samples, *, n: int = 6, axes=None, stretch: float | None = None) -> Figure:
    """The first ``n`` posterior samples side by side, on one stretch (that of their
    mean), from a `PosteriorResult` or an ``(n, band, y, x)`` array."""
    s = _samples_of(result_or_samples)
    n = min(int(n), len(s))
    if n < 1:
        raise ValueError("n: at least one sample to show")
    fig, axs = _axes(axes, n, (2.2 * n, 2.4))
    scale = stretch if stretch is not None else _stretch_of(s.mean(0))
    for i, a in enumerate(axs):
        _show(a, s[i], scale)
        a.set_title(f"sample {i}", fontsize=8)
        _bare(a)
    if axes is None:
        fig.tight_layout()
    return fig


def _stretch_of(cube: np.ndarray) -> float:
    if cube.shape[0] > 1:
        return _auto_stretch(cube)
    return max(float(np.percentile(np.abs(cube), 99.5)), 1e-30) / 2.0


def plot_mean(result_or_mean, *, ax=None, title: str = "posterior mean") -> Figure:
    """The posterior mean (a result's ``mean`` or a ``(band, y, x)`` array)."""
    mean = _cube(_field(result_or_mean, "mean"), "mean")
    return plot_image(mean, ax=ax, title=title)


def plot_std(result_or_std, *, ax=None, title: str = "posterior std (band mean)") -> Figure:
    """The pixelwise posterior standard deviation, averaged over bands, with a colour bar
    in the data's units."""
    std = _cube(_field(result_or_std, "std"), "std").mean(0)
    fig, (a,) = _axes(ax, 1, (4.6, 4.0), "ax")
    im = a.imshow(std, origin="lower", cmap="magma", vmin=0)
    fig.colorbar(im, ax=a, fraction=0.046, pad=0.04)
    a.set_title(title, fontsize=9)
    _bare(a)
    return fig


def source_flux_samples(result) -> np.ndarray:
    """``(sample, source, band)`` total flux of every source in every sample: a
    `DeblendResult`'s per-source stamps summed, or a `PosteriorResult`'s samples summed
    (one source)."""
    sources = getattr(result, "sources", None)
    if sources is not None:
        return np.asarray(sources, np.float64).sum(axis=(-2, -1))
    return _samples_of(result).sum(axis=(-2, -1))[:, None]


def plot_flux_posteriors(result, *, truth=None, bands: Sequence[str] | None = None, axes=None,
                         bins: int = 20) -> Figure:
    """Per source, a histogram of its flux over the posterior samples, one colour per
    band, with the sample mean (dashed) and, where given, the true flux (solid black).

    ``result``: a `DeblendResult`, a `PosteriorResult` (one source) or an ``(sample,
    source, band)`` array of fluxes; ``truth``: ``(source, band)`` (or ``(source,)``) true
    fluxes; ``axes``: one Axes per source."""
    flux = result if isinstance(result, np.ndarray) and result.ndim == 3 else source_flux_samples(result)
    n_src, nb = flux.shape[1:]
    names = list(bands) if bands is not None else [str(b) for b in range(nb)]
    if len(names) != nb:
        raise ValueError(f"bands: {len(names)} names for {nb} bands")
    if truth is not None:
        truth = np.asarray(truth, np.float64).reshape(n_src, -1)
        if truth.shape[1] not in (1, nb):
            raise ValueError(f"truth: expected ({n_src}, {nb}) fluxes, got shape {truth.shape}")
    fig, axs = _axes(axes, n_src, (3.0 * n_src, 2.8))
    colours = ["C0", "C2", "C3", "C1", "C4", "C5"]
    for s, a in enumerate(axs):
        for b in range(nb):
            c = colours[b % len(colours)]
            a.hist(flux[:, s, b], bins=bins, histtype="step", color=c, label=names[b])
            a.axvline(flux[:, s, b].mean(), color=c, ls="--", lw=1)
            if truth is not None:
                a.axvline(truth[s, min(b, truth.shape[1] - 1)], color="k", lw=1.2)
        a.set_title(f"source {s}", fontsize=9)
        a.set_xlabel("flux")
        a.set_yticks([])
    if nb > 1:
        axs[0].legend(fontsize=7)
    if axes is None:
        fig.tight_layout()
    return fig


def plot_posterior(result, *, data=None, n_samples: int = 3, axes=None) -> Figure:
    """A posterior at a glance: the data (where given: the first observation's ``(band,
    y, x)``), ``n_samples`` samples, the mean, the std and the first residual (``data - A
    mean``, first band). For a `DeblendResult` (no scene samples) the samples are left
    out. ``axes``: as many Axes as panels."""
    samples = getattr(result, "samples", None)
    panels = (1 if data is not None else 0) + (min(n_samples, len(samples)) if samples is not None else 0) + 3
    fig, axs = _axes(axes, panels, (2.6 * panels, 2.9))
    mean = _cube(result.mean, "result.mean")
    scale = _stretch_of(mean)
    k = 0
    if data is not None:
        _show(axs[k], _cube(data, "data"), None)
        axs[k].set_title("observation", fontsize=8)
        k += 1
    if samples is not None:
        m = min(n_samples, len(samples))
        plot_samples(samples, n=m, axes=axs[k:k + m], stretch=scale)
        k += m
    plot_mean(mean, ax=axs[k], title="mean")
    plot_std(result, ax=axs[k + 1], title="std")
    res = np.asarray(result.residuals[0], np.float64)
    res = res[0] if res.ndim == 3 else res
    v = max(float(np.nanmax(np.abs(res))), 1e-30)
    axs[k + 2].imshow(res, origin="lower", cmap="RdBu_r", vmin=-v, vmax=v)
    axs[k + 2].set_title("residual (data - A mean)", fontsize=8)
    for a in axs:
        _bare(a)
    if axes is None:
        fig.tight_layout()
    return fig


def plot_deblend(result, *, truth=None, bands: Sequence[str] | None = None, max_sources: int = 6) -> Figure:
    """A `DeblendResult` at a glance: the scene's posterior mean, std and first residual
    on the top row, the flux posteriors of the first ``max_sources`` sources below
    (`plot_flux_posteriors`, with ``truth`` where given)."""
    n_src = min(int(np.shape(result.sources)[1]), int(max_sources))
    cols = max(3, n_src)
    fig = Figure(figsize=(2.8 * cols, 5.6), dpi=100)
    grid = fig.subplots(2, cols, squeeze=False)
    plot_posterior(result, axes=list(grid[0, :3]))
    for a in grid[0, 3:]:
        a.set_axis_off()
    flux = source_flux_samples(result)[:, :n_src]
    if truth is not None:
        truth = np.asarray(truth, np.float64)[:n_src]
    plot_flux_posteriors(flux, truth=truth, bands=bands, axes=list(grid[1, :n_src]))
    for a in grid[1, n_src:]:
        a.set_axis_off()
    fig.tight_layout()
    return fig
