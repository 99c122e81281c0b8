"""Scenes: all sources of a field batched by kind and stamp shape, rendered into the model
frame in one traced program whose size does not grow with the number of sources."""

import functools
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .._checks import is_traced
from .._types import Cube
from ..frame import Frame
from .base import stamp_centre
from .source import SkyCenter, Source


def _pixel_center(source: Source, frame: Frame, where: str) -> Source:
    """``source`` with a sky-position centre (`SkyCenter`) turned into model-frame ``(y, x)``
    pixels through the frame's WCS (float64 on the host, distortions included)."""
    if not isinstance(getattr(source, "center", None), SkyCenter):
        return source
    coord = source.center.coord
    if frame.wcs is None:
        raise ValueError(
            f"{where}.center is a SkyCoord but the frame has no WCS: give the centre in model "
            "pixels (y, x), or give the Frame a wcs"
        )
    yx = np.asarray(frame.to_pixel(coord), dtype=np.float64)
    if not np.all(np.isfinite(yx)):
        raise ValueError(
            f"{where}.center (RA, Dec) = ({coord.icrs.ra.deg:.6f}, {coord.icrs.dec.deg:.6f}) deg has no "
            f"pixel position in the frame's WCS (got {yx.tolist()})"
        )
    return eqx.tree_at(lambda s: s.center, source, jnp.asarray(yx, dtype=float))


def _group_key(source: Source):
    return (type(source.morphology), source.morphology.shape, jax.tree.structure(source))


def _render_stamp(source: Source, psf_kernel: Float[Array, "h w"] | None):
    """One source's ``(band, h, w)`` stamp and the model-frame pixel of its stamp's
    top-left corner."""
    shape = source.morphology.shape
    pixel = jnp.round(source.center)
    offset = source.center - pixel
    if psf_kernel is not None:
        # The kernel is centred on the stamp's centre pixel; roll it to the origin so
        # the product is a convolution that does not move the source.
        cy, cx = stamp_centre(shape)
        spectrum_ft = source.morphology.fourier(offset) * jnp.fft.rfft2(jnp.roll(psf_kernel, (-cy, -cx), axis=(0, 1)))
        image = jnp.fft.irfft2(spectrum_ft, s=shape)
    else:
        # Already seen through the model PSF: the morphology's own image (free-form
        # pixels shift themselves without an FFT round trip).
        image = source.morphology.image(offset)
    corner = pixel.astype(jnp.int32) - jnp.asarray(stamp_centre(shape), dtype=jnp.int32)
    return source.spectrum[:, None, None] * image[None], corner


def _unroll(n: int) -> int:
    """The loop's unroll factor: 4 or a nearby divisor of ``n``. A remainder (50 windows
    unrolled by 4) is peeled off by XLA into the fusion that reads the canvas, which then
    re-evaluates those windows' updates for every pixel it writes."""
    return next(u for u in (4, 5, 3, 2, 1) if n % u == 0)


def _add_windows_loop(stamps: Float[Array, "n band h w"], starts: Int[Array, "n 2"], shape) -> Cube:
    """Add each ``(band, h, w)`` stamp into a zero canvas of ``shape`` at its ``(y, x)``
    start, one window after another in a loop inside the program (each window is one
    in-place slice update)."""

    def body(i, canvas):
        idx = (jnp.zeros((), jnp.int32), starts[i, 0], starts[i, 1])
        window = jax.lax.dynamic_slice(canvas, idx, stamps.shape[1:])
        return jax.lax.dynamic_update_slice(canvas, window + stamps[i], idx)

    n = stamps.shape[0]
    return jax.lax.fori_loop(0, n, body, jnp.zeros(shape, stamps.dtype), unroll=_unroll(n))


def _add_windows_batched(stamps, starts, shape):
    """`_add_windows_loop` over a leading batch axis: one loop over every window of every
    batch member into one ``(batch, *shape)`` canvas."""
    b, n = stamps.shape[:2]
    flat = stamps.reshape(b * n, *stamps.shape[2:])
    flat_starts = starts.reshape(b * n, 2)
    zero = jnp.zeros((), jnp.int32)

    def body(i, canvas):
        idx = ((i // n).astype(jnp.int32), zero, flat_starts[i, 0], flat_starts[i, 1])
        window = jax.lax.dynamic_slice(canvas, idx, (1, *flat.shape[1:]))
        return jax.lax.dynamic_update_slice(canvas, window + flat[i][None], idx)

    return jax.lax.fori_loop(0, b * n, body, jnp.zeros((b, *shape), stamps.dtype), unroll=_unroll(b * n))


def _scatter_windows(stamps: Float[Array, "n band h w"], starts: Int[Array, "n 2"], shape) -> Cube:
    """The same sum of windows as one scatter-add (linear, and its transpose, a gather of
    one slice per stamp, is fast)."""
    dims = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1, 2, 3), inserted_window_dims=(), scatter_dims_to_operand_dims=(1, 2)
    )
    return jax.lax.scatter_add(
        jnp.zeros(shape, stamps.dtype), starts, stamps, dims, mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS
    )


@functools.cache
def _window_adder(shape: tuple[int, int, int]):
    """``(stamps, starts) -> canvas`` for a static canvas ``shape``: the sum of the
    ``(band, h, w)`` stamps placed at their ``(y, x)`` starts.

    On CPU a scatter-add of windows runs element by element, ~10x slower than a loop of
    slice updates, but `vmap` would turn such a loop back into that scatter. So values are
    computed by the loop, with its own batching rule (one loop over the windows of all
    batch members), while derivatives go through the scatter-add: in reverse mode only its
    transpose runs, a gather of one slice per stamp, which batches well by itself (forward
    mode, rarely used, pays for the scatter)."""

    @jax.custom_batching.custom_vmap
    def forward(stamps, starts):
        return _add_windows_loop(stamps, starts, shape)

    @forward.def_vmap
    def _(axis_size, in_batched, stamps, starts):
        if not in_batched[0]:
            stamps = jnp.broadcast_to(stamps, (axis_size, *stamps.shape))
        if not in_batched[1]:
            starts = jnp.broadcast_to(starts, (axis_size, *starts.shape))
        return _add_windows_batched(stamps, starts, shape), True

    @jax.custom_jvp
    def add(stamps, starts):
        return forward(stamps, starts)

    @add.defjvp
    def _(primals, tangents):
        stamps, starts = primals
        return add(stamps, starts), _scatter_windows(tangents[0], starts, shape)

    return add


def _add_windows(
    stamps: Float[Array, "n band h w"], starts: Int[Array, "n 2"], shape: tuple[int, int, int]
) -> Cube:
    return _window_adder(tuple(shape))(stamps, starts)


class Scene(eqx.Module):
    """All sources of a field, batched.

    Sources are grouped by kind (morphology type and stamp shape); each group is a
    single `Source` whose array leaves carry a leading source axis. Rendering vmaps over
    each group and adds all stamps into the model cube with one window sum per group,
    so the size of the traced program does not depend on the number of sources.
    Stamps that cross the frame's edge are clipped.

    Scenes of the same structure stack (``jax.tree.map(jnp.stack, ...)``) and render
    under ``jax.vmap``, which is how many cutouts are processed at once.

    **Arguments:**

    - `frame`: the model `Frame`.
    - `sources`: a sequence of unbatched `Source`s, or already-batched groups with
      ``batched=True``.

    **Attributes:**

    - `groups`: tuple of batched `Source`s.
    - `order`: for each group, the indices of its sources in the sequence given.
    - `psf_kernels`: for each group, the model PSF sampled on its stamp (``None`` for
      free-form morphologies, which are already seen through it).
    - `shape`: ``(band, ny, nx)`` of the model cube.
    """

    groups: tuple[Source, ...]
    psf_kernels: tuple[Float[Array, "h w"] | None, ...]
    order: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    shape: tuple[int, int, int] = eqx.field(static=True)

    def __init__(self, frame: Frame, sources: Sequence[Source], *, batched: bool = False):
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
        if isinstance(sources, Source):
            sources = [sources]
        if batched:
            groups = [_pixel_center(g, frame, f"sources[{i}]") for i, g in enumerate(sources)]
            order, start = [], 0
            for g in groups:
                n = g.center.shape[0]
                order.append(tuple(range(start, start + n)))
                start += n
        else:
            keyed: dict = {}
            sources = list(sources)
            for i, src in enumerate(sources):
                if not isinstance(src, Source):
                    raise TypeError(f"sources[{i}] must be a Source, got {type(src).__name__}")
                sources[i] = src = _pixel_center(src, frame, f"sources[{i}]")
                keyed.setdefault(_group_key(src), []).append(i)
            groups, order = [], []
            for idx in keyed.values():
                members = [sources[i] for i in idx]
                groups.append(jax.tree.map(lambda *xs: jnp.stack(xs), *members))
                order.append(tuple(idx))
        for g in groups:
            if g.spectrum.shape[-1] != frame.n_bands:
                raise ValueError(
                    f"a source spectrum has {g.spectrum.shape[-1]} bands but the frame has "
                    f"{frame.n_bands} {frame.bands}"
                )
        self.groups = tuple(groups)
        self.order = tuple(order)
        self.shape = (frame.n_bands, *frame.shape)
        self.psf_kernels = tuple(
            jnp.asarray(frame.psf_kernel(g.morphology.shape, pixel_integrated=False), dtype=float)
            if g.morphology.intrinsic
            else None
            for g in groups
        )

    def _repr_png_(self) -> bytes | None:
        """Jupyter's picture of the scene: the model cube with the sources numbered
        (`deconvjax.plot.plot_model`); None (text only) for a stack of scenes."""
        from ..plot import figure_png, plot_model

        if self.groups and np.ndim(self.groups[0].spectrum) != 2:
            return None  # batched over cutouts: no single picture
        return figure_png(plot_model(self))

    @property
    def n_sources(self) -> int:
        return sum(len(o) for o in self.order)

    def sources(self) -> list[Source]:
        """The unbatched sources, in the order given to the scene (``Scene(frame,
        scene.sources())`` rebuilds the same scene)."""
        out: list = [None] * self.n_sources
        for g, order in zip(self.groups, self.order):
            for row, idx in enumerate(order):
                out[idx] = jax.tree.map(lambda x, r=row: x[r] if eqx.is_array(x) else x, g)
        return out

    def stamps(self) -> tuple[tuple[Float[Array, "source band h w"], Int[Array, "source 2"]], ...]:
        """Per group: every source's ``(band, h, w)`` stamp and its top-left corner
        ``(y, x)`` in the model frame."""
        return _stamps_impl(self) if is_traced(self) else _stamps(self)

    def render(self) -> Cube:
        """The model cube ``(band, ny, nx)``: the sum of all sources.

        Works under `jit`, `vmap`, `grad`/`vjp` and `jvp`; `jax.linear_transpose` of it
        is not supported (the window sum's batching rule has no transpose): use
        `jax.vjp`. Called outside `jit`, it runs one compiled program, cached by the
        scene's structure: rendering a scene of the same structure again (new values,
        same kinds and numbers of sources) compiles nothing."""
        return _render_impl(self) if is_traced(self) else _render(self)

    def render_sources(self) -> Float[Array, "source band ny nx"]:
        """Each source alone in the full frame, in the order the sources were given.
        Memory grows with the number of sources: meant for catalogs and plots."""
        return _render_sources_impl(self) if is_traced(self) else _render_sources(self)


# Eager calls (notebooks, the quick start) go through jitted copies of the bodies below:
# one compiled program per scene structure instead of re-tracing the window loops on every
# call (their bodies are fresh closures each time, so nothing else would cache them).
# Traced calls use the bodies directly, so that enclosing programs are the same as without
# the jitted copies (no nested calls to change XLA's fusion decisions).
def _stamps_impl(scene: Scene):
    return tuple(jax.vmap(_render_stamp, in_axes=(0, None))(g, k) for g, k in zip(scene.groups, scene.psf_kernels))


def _render_impl(scene: Scene) -> Cube:
    _, ny, nx = scene.shape
    model = None
    for stamps, corners in scene.stamps():
        h, w = stamps.shape[-2:]
        # One window per source (band, h, w) added at its corner into a canvas padded
        # by a stamp on every side, so every window lies inside it (corners beyond the
        # padding are clipped, which only moves stamps already entirely off the
        # frame); the frame is then cut out. See `_window_adder` for why windows
        # are added by a loop of slice updates, not a scatter.
        start = jnp.clip(corners, jnp.array([-h, -w]), jnp.array([ny, nx])) + jnp.array([h, w])
        canvas = _add_windows(stamps, start.astype(jnp.int32), (scene.shape[0], ny + 2 * h, nx + 2 * w))
        part = canvas[:, h : h + ny, w : w + nx]
        model = part if model is None else model + part
    return jnp.zeros(scene.shape) if model is None else model


def _render_sources_impl(scene: Scene) -> Float[Array, "source band ny nx"]:
    _, ny, nx = scene.shape
    per_source = []
    for stamps, corners in scene.stamps():
        h, w = stamps.shape[-2:]

        def place(stamp, corner):
            canvas = jnp.zeros((stamp.shape[0], ny + 2 * h, nx + 2 * w))
            canvas = jax.lax.dynamic_update_slice(canvas, stamp, (0, corner[0] + h, corner[1] + w))
            return canvas[:, h : h + ny, w : w + nx]

        per_source.append(jax.vmap(place)(stamps, jnp.clip(corners, -h, jnp.array([ny, nx]))))
    stacked = jnp.concatenate(per_source, axis=0)
    inverse = np.argsort(np.concatenate([np.asarray(o) for o in scene.order]))
    return stacked[inverse]


_stamps = eqx.filter_jit(_stamps_impl)
_render = eqx.filter_jit(_render_impl)
_render_sources = eqx.filter_jit(_render_sources_impl)
