"""Batched fits: many cutouts of one padded shape in one jitted, vmapped call.

Every cutout's scene must have the same structure (the same groups: morphology kinds,
stamp shapes and numbers of sources), which `init_batch` arranges by padding each cutout
with absent sources (masked: zero flux, never fitted); missing pixels are weight 0 in the
observations. The step is the very one `fit` runs, vmapped, and a cutout that has
converged stops moving while others go on (``lax.while_loop`` under ``vmap``), so each
result equals the cutout fitted alone. Cutouts are fitted a fixed number of slots at a
time, each finished cutout's slot taking the next one of the queue inside the compiled
loop (continuous batching: the cost follows the sum of the cutouts' iterations, not their
number times the slowest one's).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool

from .._jit import CountingJit
from ..frame import Frame
from ..model import MeasuredShape, Scene, Source
from ..observation import Observation, as_observations
from .constraints import Constraints
from .init import (
    Kind,
    check_kind,
    kernel_sigma2,
    moment_shapes,
    normal_equations,
    positions_from,
    psf_sigma2,
    reference_observation,
    solve_normal_equations,
)
from .optimise import FitResult, check_run, run_in_chunks
from .quality import MAX_CHI2_PER_PIXEL, effective_parameters
from .solver import (
    AbstractFitSolver,
    FitProblem,
    MorphologyPrior,
    Objective,
    SolverState,
    count_parameters,
    group_step_sizes,
    run_steps,
)


def _device(x: np.ndarray) -> Array:
    """A host array on the default device. `jax.device_put`, not `jnp.asarray`: the latter
    compiles a small program for every new shape and dtype it is given (JAX 0.10), which a
    survey worker would compile, and look up in the persistent cache, per bucket."""
    return jax.device_put(np.asarray(x))


def stack(trees: Sequence):
    """Stack pytrees of one structure (scenes, observations) on a new leading axis."""
    trees = list(trees)
    if not trees:
        raise ValueError("nothing to stack: expected a non-empty sequence")

    def one(*xs):
        if all(isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer) for x in xs):
            # Concrete arrays are stacked on the host and moved once: an eager jnp.stack
            # of hundreds of device arrays costs more than the copy.
            return _device(np.stack([np.asarray(x) for x in xs]))
        return jnp.stack(xs)

    try:
        return jax.tree.map(one, *trees)
    except ValueError as err:
        raise ValueError(
            "cannot stack: the scenes or observations differ in structure (kinds, stamp shapes, "
            f"numbers of sources, bands or image shapes): {err}"
        ) from None


def unstack(tree, n: int) -> list:
    """The inverse of `stack`."""
    return [jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, tree) for i in range(n)]


def init_batch(
    frame: Frame,
    observations: Sequence[Observation | Sequence[Observation]],
    positions: Sequence,
    *,
    n_max: int | None = None,
    kind: Kind = "pixel",
    stamp_size: int = 21,
) -> tuple[Scene, np.ndarray]:
    """Initialise every cutout as `init_scene` does (moments, then least-squares spectra
    solved for all cutouts in one batched call), with one kind and one stamp size, and
    pad each to ``n_max`` sources.

    Everything but the normal equations of the spectra runs on the host in numpy, on
    arrays stacked over cutouts (no device round trip per cutout or per source).

    **Returns:** the stacked `Scene` (leading cutout axis) and the ``(cutout, n_max)``
    bool source mask (False for padding).
    """
    if len(observations) != len(positions):
        raise ValueError(f"observations ({len(observations)}) and positions ({len(positions)}) differ in length")
    cls = check_kind(kind)
    counts = [len(np.atleast_2d(p)) if len(p) else 0 for p in positions]
    n_max = max(counts) if n_max is None else int(n_max)
    if max(counts) > n_max:
        raise ValueError(f"n_max={n_max} but a cutout has {max(counts)} sources")
    if int(stamp_size) < 3 or int(stamp_size) % 2 == 0:
        raise ValueError(f"stamp_size must be an odd int >= 3, got {stamp_size}")
    if min(counts) == 0:
        raise ValueError("every cutout needs at least one source position")
    size = int(stamp_size)
    per_cutout = [as_observations(o) for o in observations]
    ref_index = [next((i for i, o in enumerate(obs) if reference_observation([o], frame) is not None), None) for obs in per_cutout]
    if any(r is None for r in ref_index):
        raise ValueError("every cutout needs an observation on the model frame's grid")
    obs_stacked = stack(per_cutout)
    n_cut, nb = len(per_cutout), frame.n_bands
    ref = obs_stacked[ref_index[0]]
    data = np.asarray(ref.data, dtype=np.float64)
    weights = np.asarray(ref.weights, dtype=np.float64)
    model_sigma2 = psf_sigma2(frame.psf_kernel((31, 31), pixel_integrated=True))
    # The observed PSF = model PSF * difference kernel; their second moments add.
    psf_obs2 = model_sigma2 + kernel_sigma2(np.fft.irfft2(np.asarray(ref.kernel_fft), s=ref.fft_shape))

    pos = np.tile(np.array(frame.shape, float) / 2, (n_cut, n_max, 1))
    masks = np.zeros((n_cut, n_max), bool)
    fields = []
    for c, (p, n) in enumerate(zip(positions, counts)):
        p = positions_from(frame, p, f"positions[{c}]")
        pos[c, :n] = p
        masks[c, :n] = True
        sigmas, shears = moment_shapes(data[c], weights[c], p, float(psf_obs2[c]))
        one = [cls.initial_parameters(MeasuredShape(sg, g1, g2, model_sigma2), (size, size)) for sg, (g1, g2) in zip(sigmas, shears)]
        # Padding sources copy the first one's morphology (they have zero flux anyway).
        fields.append(one + [one[0]] * (n_max - n))
    leaves = {k: np.asarray([[f[k] for f in fc] for fc in fields], dtype=np.float64) for k in fields[0][0]}
    # One template source, stacked into a batched group of n_max, then every leaf
    # replaced by its (cutout, source, ...) host array: one device transfer per leaf.
    template = Source(np.ones(nb), cls.from_parameters(fields[0][0], (size, size)), pos[0, 0])
    f32 = np.dtype(jnp.result_type(float))
    # Broadcasts and casts on the host: each eager device op of a new shape compiles.
    host = lambda x, n: _device(np.broadcast_to(np.asarray(x, dtype=f32), (n, *np.shape(x))))  # noqa: E731
    scene = Scene(frame, [jax.tree.map(lambda x: host(x, n_max), template)], batched=True)
    stacked = jax.tree.map(lambda x: host(x, n_cut), scene)
    names = tuple(leaves)
    stacked = eqx.tree_at(
        lambda sc: (sc.groups[0].spectrum, sc.groups[0].center, *(getattr(sc.groups[0].morphology, k) for k in names)),
        stacked,
        (
            _device(np.ones((n_cut, n_max, nb), f32)),
            _device(pos.astype(f32)),
            *(_device(leaves[k].astype(f32)) for k in names),
        ),
    )

    mat = np.zeros((n_cut, nb, n_max, n_max))
    rhs = np.zeros((n_cut, nb, n_max))
    noise = np.zeros((n_cut, nb))
    # Free-form images at the stamp centre, (cutout, source, h, w), for the host path.
    images = np.asarray(stacked.groups[0].morphology.free_image(), np.float64) if cls.free_form else None
    for o in obs_stacked:
        if images is not None and o.coords is None:
            m, r = _free_form_normal_equations(images, pos, o)
        else:
            m, r = _normal_equations_b(stacked, o)
        m, r = np.asarray(m, dtype=np.float64), np.asarray(r, dtype=np.float64)
        w = np.asarray(o.weights, dtype=np.float64)
        with np.errstate(divide="ignore"):
            sigma = np.where(w > 0, 1 / np.sqrt(w), np.nan)
        valid = (w > 0).any(axis=(-2, -1))
        med = np.where(valid, np.nanmedian(np.where(valid[..., None, None], sigma, 0.0), axis=(-2, -1)), 0.0)
        for j, b in enumerate(o.band_index):
            mat[:, b] += m[:, j]
            rhs[:, b] += r[:, j]
            noise[:, b] = np.maximum(noise[:, b], med[:, j])
    spectra = np.zeros((n_cut, n_max, nb))
    for c in range(n_cut):
        keep = masks[c]
        sub = solve_normal_equations(mat[c][:, keep][:, :, keep], rhs[c][:, keep], noise[c])
        spectra[c][keep] = sub
        spectra[c][~keep] = sub.min(axis=0)
    # One kind and one stamp size: a single group whose rows are the sources in order.
    stacked = eqx.tree_at(lambda s: s.groups[0].spectrum, stacked, _device(spectra.astype(f32)))
    return stacked, masks


def _dirichlet_shift(n: int, d: np.ndarray) -> np.ndarray:
    """`deconvjax.model.pixel.shift_matrix` in numpy, for shifts ``d`` of any shape:
    ``(..., n, n)``."""
    t = (np.arange(n)[:, None] - np.arange(n)[None, :]) - np.asarray(d, dtype=np.float64)[..., None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sin(np.pi * t) / (n * np.sin(np.pi * t / n))
    return np.where(np.abs(t) < 1e-9, 1.0, out)


def _free_form_normal_equations(pixels: np.ndarray, centers: np.ndarray, obs: Observation):
    """`normal_equations` for free-form sources on an observation on the model
    grid, for all cutouts at once on the host (numpy and scipy's float32 FFTs): the same
    ``A^T W A`` and ``A^T W d``, without compiling a program for one call.

    ``pixels`` ``(cutout, source, h, w)``, ``centers`` ``(cutout, source, 2)``; returns
    ``(cutout, band, source, source)`` and ``(cutout, band, source)``."""
    import scipy.fft

    n_cut, n_src, h, w = pixels.shape
    ny, nx = obs.frame_shape
    fy, fx = obs.fft_shape
    pixel = np.round(centers)
    offset = centers - pixel
    # The stamp image of `PixelMorphology.image`: periodic band-limited shifts.
    img = _dirichlet_shift(h, offset[..., 0]) @ pixels @ np.swapaxes(_dirichlet_shift(w, offset[..., 1]), -1, -2)
    corner = pixel.astype(int) - np.array([h // 2, w // 2])
    canvas = np.zeros((n_cut, n_src, fy, fx), np.float32)
    for c in range(n_cut):
        for k in range(n_src):
            y0, x0 = corner[c, k]
            ya, yb, xa, xb = max(y0, 0), min(y0 + h, ny), max(x0, 0), min(x0 + w, nx)
            if ya < yb and xa < xb:
                canvas[c, k, ya:yb, xa:xb] = img[c, k, ya - y0 : yb - y0, xa - x0 : xb - x0]
    spec = scipy.fft.rfft2(canvas, workers=-1)
    kernel = np.asarray(obs.kernel_fft)  # (cutout, band, fy, fx // 2 + 1)
    a = scipy.fft.irfft2(spec[:, :, None] * kernel[:, None], s=(fy, fx), workers=-1)[..., :ny, :nx]
    a = np.swapaxes(a, 1, 2).reshape(n_cut, kernel.shape[1], n_src, ny * nx)  # (cutout, band, source, pixel)
    wgt = np.asarray(obs.weights).reshape(n_cut, -1, ny * nx)
    data = np.asarray(obs.data).reshape(n_cut, -1, ny * nx)
    m = (a * wgt[:, :, None]) @ np.swapaxes(a, -1, -2)
    r = (a @ (wgt * data)[..., None])[..., 0]
    return m, r


_normal_equations_b = eqx.filter_jit(eqx.filter_vmap(normal_equations))


#: XLA options of `fit_batch`'s programs on CPU: LLVM at optimisation level 2 rather than
#: XLA's default 3. The survey's fit programs then compile markedly faster (a survey
#: worker compiles a handful per bucket shape, benchmarks/survey_programs.py) and run
#: as fast; on the survey benchmark's cutouts they gave the same rows to the bit.
CPU_COMPILER_OPTIONS = {"xla_backend_optimization_level": 2}


class LightJit:
    """`eqx.filter_jit` of ``fn`` whose programs are compiled with
    `CPU_COMPILER_OPTIONS` on a CPU backend and with XLA's defaults on others (chosen at
    the first call, by `jax.default_backend`). Callable, with ``lower`` as a jitted
    function has, and ``cache_size()``: the programs traced (so compiled) in this process."""

    def __init__(self, fn):
        self.fn = fn
        self._jits: dict = {}

    def _jit(self):
        backend = jax.default_backend()
        if backend not in self._jits:
            opts = CPU_COMPILER_OPTIONS if backend == "cpu" else None
            self._jits[backend] = CountingJit(self.fn, compiler_options=opts)
        return self._jits[backend]

    def __call__(self, *args, **kwargs):
        return self._jit()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._jit().lower(*args, **kwargs)

    def cache_size(self) -> int:
        return sum(j.traces for j in self._jits.values())


def _batched(fn, in_axes):
    return LightJit(eqx.filter_vmap(fn, in_axes=in_axes))


def _init_one(problem: FitProblem, solver: AbstractFitSolver, objective: Objective) -> SolverState:
    return solver.init(problem, objective)


def _run_one(state: SolverState, problem: FitProblem, solver: AbstractFitSolver, objective: Objective, until):
    state = run_steps(solver, state, problem, objective, until)
    return state, solver.postprocess(state, problem, objective)


def _outputs_one(state: SolverState, problem: FitProblem, solver: AbstractFitSolver, objective: Objective):
    return solver.postprocess(state, problem, objective)


def _steps_one(groups, steps, constraints):
    return group_step_sizes(groups, steps, constraints)


# Cutout-batched: problems and states vmapped, the solver and objective shared.
_init_b = _batched(_init_one, (0, None, None))
_run_b = _batched(_run_one, (0, 0, None, None, None))
_steps_b = _batched(_steps_one, (0, None, None))


def batch_compilation_count() -> int:
    """Programs `fit_batch` has compiled in this process (its jitted functions' cache
    entries)."""
    return sum(f.cache_size() for f in (_run_b, _init_b, _steps_b, _pool_run, _start_pools, _outputs_b))


def _shard(tree, n: int):
    """Place the leading (cutout) axis of every array across the local devices."""
    devices = jax.devices()
    if len(devices) == 1:
        return tree
    if n % len(devices):
        raise ValueError(f"shard=True needs the number of cutouts ({n}) to divide by the device count ({len(devices)})")
    # Axis type Auto: the compiler propagates the cutout sharding through the fit (the
    # program is the unsharded one, split by XLA), so the same code runs on one device.
    mesh = jax.make_mesh((len(devices),), ("cutout",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("cutout"))
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


class _Pool(eqx.Module):
    """A fixed number of slots, each fitting one cutout of a queue; a slot whose cutout
    has finished takes the next one of the queue (continuous batching). ``state`` holds
    the latest state of every cutout of the queue, in queue order (``pending``: not yet
    through a round); the slots' own states are ``slot_state``, and ``slot_idx`` their
    positions in the queue. ``order`` maps queue positions to cutouts of the problem; only
    its first ``n_queue`` entries are the queue's (the rest pad queues of several pools to
    one shape, so that they share one compiled program)."""

    state: SolverState
    pending: Array
    slot_idx: Array
    slot_state: SolverState
    next_ptr: Array
    order: Array
    n_queue: Array


def _take(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def _put(tree, idx, values):
    return jax.tree.map(lambda x, v: x.at[idx].set(v), tree, values)


def _pool_init_impl(state: SolverState, order, n_queue, n_slots: int) -> _Pool:
    queue = _take(state, order)
    slot_idx = jnp.arange(n_slots, dtype=jnp.int32)
    # A queue shorter than the slots (cutouts left out by ``fit_mask``): the slots past
    # its end start finished, and take nothing (their lanes step nobody).
    slot_state = _take(queue, slot_idx)
    slot_state = eqx.tree_at(lambda s: s.done, slot_state, slot_state.done | (slot_idx >= n_queue))
    return _Pool(
        state=queue,
        pending=jnp.arange(order.shape[0]) < n_queue,
        slot_idx=slot_idx,
        slot_state=slot_state,
        next_ptr=jnp.asarray(n_slots, jnp.int32),
        order=order,
        n_queue=n_queue,
    )


def _pool_run_impl(pool: _Pool, problem: FitProblem, solver: AbstractFitSolver, objective: Objective, max_iter, budget,
                   refill):
    """Run the slots ``refill`` steps at a time (each slot's cutout at most ``max_iter``
    in all), writing every slot back and refilling the finished ones, until every cutout
    of the queue is done or ``budget`` steps have passed. The outputs (groups, loss, chi2)
    are computed once at the end, by `_outputs_b`, not every round."""
    size = pool.order.shape[0]
    loop_b = jax.vmap(lambda st, pr, until: run_steps(solver, st, pr, objective, until))

    def active(p):
        return ~p.slot_state.done & (p.slot_state.step < max_iter)

    def cond(carry):
        p, clock = carry
        return (jnp.any(p.pending) | jnp.any(active(p))) & (clock < budget)

    def body(carry):
        p, clock = carry
        until = jnp.minimum(p.slot_state.step + refill, max_iter)
        slot_state = loop_b(p.slot_state, _take(problem, p.order[p.slot_idx]), until)
        state = _put(p.state, p.slot_idx, slot_state)
        pending = p.pending.at[p.slot_idx].set(False)
        # Finished slots take the next cutouts of the queue, in slot order.
        finished = slot_state.done | (slot_state.step >= max_iter)
        cand = p.next_ptr + jnp.cumsum(finished) - 1
        take = finished & (cand < p.n_queue)
        slot_idx = jnp.where(take, jnp.clip(cand, 0, size - 1), p.slot_idx)
        fresh = _take(state, slot_idx)
        slot_state = jax.tree.map(
            lambda a, b: jnp.where(take.reshape(-1, *([1] * (a.ndim - 1))), a, b), fresh, slot_state
        )
        p = _Pool(
            state=state,
            pending=pending,
            slot_idx=slot_idx,
            slot_state=slot_state,
            next_ptr=p.next_ptr + jnp.sum(take).astype(jnp.int32),
            order=p.order,
            n_queue=p.n_queue,
        )
        return p, clock + refill

    pool, _ = jax.lax.while_loop(cond, body, (pool, jnp.zeros((), jnp.int32)))
    return pool


def _default_workers() -> int:
    """Host threads for `fit_batch`: one per CPU core on a CPU backend (XLA:CPU runs the
    slot programs of concurrent calls in parallel, each mostly on one core), else one."""
    if jax.default_backend() != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _merge_queues(initial: SolverState, pools: Sequence[_Pool], n_queues: Sequence[int]) -> SolverState:
    """Every cutout's final state, from the pools' queues (on the host: no program)."""
    leaves, treedef = jax.tree.flatten(initial)
    out = [np.array(x) if eqx.is_array(x) else x for x in leaves]
    for pool, nq in zip(pools, n_queues):
        idx = np.asarray(pool.order)[:nq]
        for o, x in zip(out, jax.tree.leaves(pool.state)):
            if isinstance(o, np.ndarray):
                o[idx] = np.asarray(x)[:nq]
    return jax.tree.unflatten(treedef, [_device(x) if isinstance(x, np.ndarray) else x for x in out])


def _start_pools_impl(scenes: Scene, observations, masks, solver: AbstractFitSolver, objective: Objective,
                      orders, n_queues, n_slots: int):
    """`fit_batch`'s start in one program (one per bucket shape, not three): every
    cutout's step sizes and initial state, and the pools of ``orders`` (one queue of
    problem indices per pool) and ``n_queues`` (their lengths)."""
    steps = eqx.filter_vmap(_steps_one, in_axes=(0, None, None))(scenes.groups, solver.steps, objective.constraints)
    problem = FitProblem(scene=scenes, observations=observations, masks=masks, steps=steps)
    initial = eqx.filter_vmap(_init_one, in_axes=(0, None, None))(problem, solver, objective)
    pools = tuple(_pool_init_impl(initial, o, q, n_slots) for o, q in zip(orders, n_queues))
    return steps, initial, pools


_start_pools = LightJit(_start_pools_impl)
_pool_run = LightJit(_pool_run_impl)
_outputs_b = _batched(_outputs_one, (0, 0, None, None))


def _queues(source_mask, fit_mask, workers: int):
    """The pools' queues (problem indices) and their common padded length: the cutouts
    of ``fit_mask``, those with more sources first, dealt out in turn. The length
    depends on the batch alone (``ceil(cutouts / workers)``), not on how many are
    fitted, so that a batch padded with cutouts not to fit runs the same programs."""
    n = source_mask.shape[0]
    # Cutouts with more sources tend to need more steps: queue them first, so the last
    # slots to finish are not the slowest cutouts started last; deal them out in turn so
    # every pool gets a like mix.
    order = np.argsort(-source_mask.sum(axis=1), kind="stable").astype(np.int32)
    order = order[fit_mask[order]]
    queues = [order[w::workers] for w in range(workers)]
    size = -(-n // workers)
    # Queues padded to one length (with a cutout never taken): one program.
    padded = [np.concatenate([q, np.full(size - len(q), q[-1] if len(q) else 0, np.int32)]) for q in queues]
    return queues, padded


def _fit_pools(scenes, observations, masks, solver, objective, source_mask, fit_mask, n_slots, workers, max_iter,
               chunk, refill, progress):
    """Fit the cutouts of ``fit_mask`` with ``workers`` slot pools of ``n_slots`` slots,
    each driven by its own host thread over its share of the cutouts; returns the
    problem, every cutout's final state (the others' initial one) and the ``(clock,
    cutouts finished)`` log."""
    from tqdm.auto import tqdm

    n = int(fit_mask.sum())
    queues, padded = _queues(source_mask, fit_mask, workers)
    step_tree, initial, pools = _start_pools(
        scenes, observations, masks, solver, objective, tuple(_device(p) for p in padded),
        tuple(_device(np.int32(len(q))) for q in queues), n_slots,
    )
    pools = list(pools)
    problem = FitProblem(scene=scenes, observations=observations, masks=masks, steps=step_tree)
    args = (
        _device(np.int32(max_iter)), _device(np.int32(chunk)), _device(np.int32(refill))
    )
    with ThreadPoolExecutor(max_workers=max(workers, 2)) as ex:
        # The two programs still to compile, at once (XLA compiles outside the GIL).
        outputs = ex.submit(lambda: _outputs_b.lower(initial, problem, solver, objective).compile())
        _pool_run.lower(pools[0], problem, solver, objective, *args).compile()
        outputs.result()
        lock = threading.Lock()
        history: list[tuple[int, int]] = []
        finished = [0] * workers
        clocks = [0] * workers
        with tqdm(total=n, desc=f"fit {n} cutouts", disable=not progress, leave=False) as bar:

            def drive(w):
                pool, nq = pools[w], len(queues[w])
                while True:
                    pool = _pool_run(pool, problem, solver, objective, *args)
                    # Progress on the host, in numpy (eager device ops would each compile).
                    pending = np.asarray(pool.pending)[:nq]
                    done = (np.asarray(pool.state.done) | (np.asarray(pool.state.step) >= max_iter))[:nq]
                    with lock:
                        clocks[w] += int(chunk)
                        now = int(np.sum(~pending & done))
                        bar.update(now - finished[w])
                        finished[w] = now
                        history.append((max(clocks), sum(finished)))
                    slots_active = ~np.asarray(pool.slot_state.done) & (np.asarray(pool.slot_state.step) < max_iter)
                    if not pending.any() and not slots_active.any():
                        return pool

            pools = list(ex.map(drive, range(workers)))
    return problem, _merge_queues(initial, pools, [len(q) for q in queues]), history


class _Weights:
    """The one attribute of an observation that `effective_parameters` reads (host arrays
    of one cutout)."""

    def __init__(self, weights):
        self.weights = weights


def fit_batch(
    scenes: Scene,
    observations: Observation | Sequence[Observation],
    solver: AbstractFitSolver | None = None,
    *,
    max_iter: int = 300,
    source_mask: Bool[ArrayLike, "cutout source"] | None = None,
    constraints: Constraints | None = None,
    fit_centers: bool = True,
    morphology_prior: MorphologyPrior | None = None,
    chunk: int = 25,
    progress: bool = True,
    shard: bool = False,
    slots: int | None = 8,
    refill: int = 10,
    workers: int | None = None,
    fit_mask: Bool[ArrayLike, " cutout"] | None = None,
) -> tuple[Scene, FitResult]:
    """Fit many cutouts at once: `fit` vmapped over a leading cutout axis.

    Cutouts are fitted ``slots`` at a time in one compiled loop: every ``refill`` steps
    the slots whose cutout has finished (converged, failed or at ``max_iter``) take the
    next cutouts of the queue (continuous batching), so the cost follows the sum of the
    cutouts' iterations rather than their number times the slowest one's (a vmapped
    ``while_loop`` steps every member until the last has stopped). Each cutout's fit is
    the very one `fit` runs alone, whatever the slots and chunks.

    **Arguments:**

    - `scenes`: a stacked `Scene` (`stack` or `init_batch`).
    - `observations`: stacked `Observation` (or a tuple of them for joint fits), one per
      cutout along the leading axis.
    - `source_mask`: ``(cutout, n_source)`` bool (False for padding), sources in the order
      of the unstacked scenes (default: all present).
    - `shard`: spread the cutouts over all local devices (``jax.sharding``); all cutouts
      then step together (no slots).
    - `slots`: cutouts stepped together in each pool (``None``: all of them at once, in
      one). Few slots are faster per cutout-iteration on CPU: the slots' FFT buffers then
      stay in cache (8 slots of 3-band 64x64 cutouts fit 256 of them ~30% faster than 32).
    - `refill`: steps between refills of finished slots.
    - `workers`: slot pools run at once, each from its own host thread over its share of
      the cutouts (``None``: one per CPU core on a CPU backend, one on accelerators).
      XLA:CPU runs each pool's program mostly on one core, so on CPU this is the way to
      use them all.
    - `fit_mask`: ``(cutout,)`` bool, the cutouts to fit (default: all). The others
      take no fit steps and come back as initialised (``iterations`` 0, not
      converged): the padding of a batch brought to a fixed size, so that batches of
      any number of cutouts run one set of compiled programs at little cost.
    - `chunk`: the host is touched (progress bar, loss log) every ``chunk`` steps.
    - `solver`, `max_iter`, `constraints`, `fit_centers`, `morphology_prior`, `progress`:
      as `fit`.

    **Returns:** the stacked fitted scenes and a `FitResult` whose fields are arrays over
    cutouts (``loss_history`` holds ``(step, mean loss)``; with slots, the steps of the
    pool's clock, and the mean final loss once every cutout is done, NaN before).
    """
    t0 = time.perf_counter()
    if not isinstance(scenes, Scene):
        raise TypeError(f"scenes must be a stacked Scene, got {type(scenes).__name__}")
    observations = as_observations(observations)
    if not observations:
        raise ValueError("observations must hold at least one Observation")
    n = scenes.groups[0].center.shape[0]
    if scenes.groups[0].center.ndim != 3:
        raise ValueError("scenes must be stacked on a leading cutout axis (see deconvjax.fit.stack)")
    for i, o in enumerate(observations):
        if o.data.ndim != 4 or o.data.shape[0] != n:
            raise ValueError(f"observations[{i}] must be stacked over the {n} cutouts, got data shape {o.data.shape}")
    solver = check_run(solver, max_iter, chunk)
    if not fit_centers:
        solver = solver.without("center")
    objective = Objective(constraints, morphology_prior)
    if source_mask is None:
        source_mask = np.ones((n, scenes.n_sources), bool)
    source_mask = np.asarray(source_mask, bool)
    if source_mask.shape != (n, scenes.n_sources):
        raise ValueError(f"source_mask must be ({n}, {scenes.n_sources}) bool, got {source_mask.shape}")
    if fit_mask is None:
        fit_mask = np.ones(n, bool)
    fit_mask = np.asarray(fit_mask)
    if fit_mask.shape != (n,) or fit_mask.dtype != bool:
        raise ValueError(f"fit_mask must be ({n},) bool, got {fit_mask.dtype} {fit_mask.shape}")
    f32 = np.dtype(jnp.result_type(float))
    masks = tuple(_device(source_mask[:, np.asarray(o)].astype(f32)) for o in scenes.order)

    if int(refill) < 1:
        raise ValueError(f"refill must be >= 1, got {refill}")
    if workers is None:
        workers = _default_workers()
    if int(workers) < 1:
        raise ValueError(f"workers must be a positive int or None, got {workers}")
    if slots is None or shard:
        workers, n_slots = 1, n
    else:
        if int(slots) < 1:
            raise ValueError(f"slots must be a positive int or None, got {slots}")
        workers = min(int(workers), n)
        n_slots = min(int(slots), n // workers)
    if workers == 1 and n_slots == n:
        step_tree = _steps_b(scenes.groups, solver.steps, objective.constraints)
        problem = FitProblem(scene=scenes, observations=observations, masks=masks, steps=step_tree)
        if shard:
            problem = _shard(problem, n)
        state = _init_b(problem, solver, objective)
        if not fit_mask.all():
            # Cutouts not to fit start done (on the host: no program for it).
            state = eqx.tree_at(lambda s: s.done, state, _device(np.asarray(state.done) | ~fit_mask))
        state, (groups, loss, chi2, n_valid), history = run_in_chunks(
            lambda st, until: _run_b(st, problem, solver, objective, until), state, max_iter, chunk,
            f"fit {n} cutouts", progress,
        )
    else:
        problem, state, history = _fit_pools(
            scenes, observations, masks, solver, objective, source_mask, fit_mask, n_slots, workers, max_iter,
            chunk, refill, progress,
        )
        step_tree = problem.steps
        groups, loss, chi2, n_valid = _outputs_b(state, problem, solver, objective)
        n_fit = int(fit_mask.sum())
        history = [(c, float(np.mean(np.asarray(loss)[fit_mask])) if k == n_fit else float("nan"))
                   for c, k in history]
    # Free parameters per cutout: the moving entries of every leaf of the sources present
    # (on the host, in numpy: no program to compile for it).
    n_params = np.asarray(count_parameters(jax.tree.map(np.asarray, step_tree), [np.asarray(m) for m in masks]))
    failed = np.asarray(state.failed)
    if failed.any():
        warnings.warn(
            f"{int(failed.sum())} of {n} cutouts met a non-finite loss or parameter; their last "
            "finite scenes are returned (FitResult.failed)",
            RuntimeWarning,
            stacklevel=2,
        )
    fitted = eqx.tree_at(lambda s: s.groups, scenes, groups)
    # Effective parameters per cutout on the host (numpy on the fitted pixels: nothing to
    # compile); the share of pixels beyond 3 sigma is not measured here (NaN), the
    # verdict rests on chi2 per pixel.
    chi2, n_valid = np.asarray(chi2), np.asarray(n_valid)
    host_scenes = jax.tree.map(np.asarray, fitted)
    host_weights = [np.asarray(o.weights) for o in observations]
    n_eff = np.asarray([
        effective_parameters(
            jax.tree.map(lambda x, i=i: x[i], host_scenes),
            [_Weights(w[i]) for w in host_weights],
            int(n_params[i]),
            objective.constraints.symmetric,
        )
        for i in range(n)
    ])
    per_pixel = chi2 / np.maximum(n_valid, 1)
    result = FitResult(
        iterations=np.asarray(state.step),
        converged=np.asarray(state.done) & ~failed & fit_mask,
        failed=failed,
        loss=np.asarray(loss),
        chi2_per_dof=chi2 / np.maximum(n_valid - n_eff, 1),
        n_params=n_params.astype(int),
        chi2_per_pixel=per_pixel,
        n_eff=n_eff,
        frac_beyond_3sigma=np.full(n, np.nan),
        reached_noise=per_pixel <= MAX_CHI2_PER_PIXEL,
        loss_history=history,
        wall_time=time.perf_counter() - t0,
    )
    return fitted, result


__all__ = ["batch_compilation_count", "fit_batch", "init_batch", "stack", "unstack"]
