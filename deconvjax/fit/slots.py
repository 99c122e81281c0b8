"""Interactive refits without recompiling: a scene with spare source slots and a mask.

A compiled fit is specialised to the scene's structure (kinds, stamp shapes and numbers of
sources). Adding or removing a source changes that structure, so the next fit would compile
again. A `PaddedScene` holds a fixed number of slots of one kind and stamp size, and an
``active`` mask (the source mask `fit` and `fit_batch` take: inactive slots have zero flux
and are not fitted). `add_source` and `remove_source` return a new `PaddedScene` of the
same structure, so `fit` of it reuses the program compiled for the first fit::

    padded = pad_scene(frame, init_scene(frame, obs, positions, kind="sersic", stamp_size=25), n_slots=8)
    padded, result = fit(padded, obs)                  # compiles
    padded = remove_source(padded, 3)
    padded = add_source(padded, obs, (41.0, 12.5))     # initialised on the residual
    padded, result = fit(padded, obs)                  # compiles nothing
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..frame import Frame
from ..model import Scene, Source
from ..observation import Observation, as_observations


@dataclasses.dataclass(frozen=True, eq=False)
class PaddedScene:
    """A `Scene` of ``n_slots`` sources of one kind and stamp shape (one group), with a
    ``(n_slots,)`` bool mask of the active ones. A host-side container (its `scene` is
    what goes through jit): build it with `pad_scene`, change it with `add_source` and
    `remove_source`.

    `deconvjax.fit.fit` accepts it as it accepts a `Scene` (the mask is its
    ``source_mask``) and returns a `PaddedScene`. Inactive slots render with zero flux.

    **Attributes:**

    - `frame`: the model `Frame`.
    - `scene`: the `Scene` (slot ``i`` is source ``i``).
    - `active`: ``(n_slots,)`` read-only numpy bool array.
    """

    frame: Frame
    scene: Scene
    active: np.ndarray

    def __post_init__(self):
        if not isinstance(self.scene, Scene):
            raise TypeError(f"scene must be a Scene, got {type(self.scene).__name__}")
        if len(self.scene.groups) != 1:
            raise ValueError(
                "a PaddedScene holds sources of one kind and stamp shape (one group); got "
                f"{len(self.scene.groups)} groups: build the scene with one kind and a fixed stamp_size"
            )
        a = self.active
        if not isinstance(a, np.ndarray) or a.dtype != bool or a.shape != (self.scene.n_sources,):
            raise ValueError(f"active must be a ({self.scene.n_sources},) numpy bool array, got {a!r}")

    @property
    def n_slots(self) -> int:
        return self.scene.n_sources

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    @property
    def active_indices(self) -> np.ndarray:
        """The slots holding sources, in order."""
        return np.flatnonzero(self.active)

    def replace(self, scene: Scene) -> PaddedScene:
        """The same slots and mask with another scene of the same structure (e.g. fitted)."""
        return PaddedScene(self.frame, scene, self.active)

    def active_scene(self) -> Scene:
        """The active sources alone, as a plain `Scene` (for catalogs and plots)."""
        sources = self.scene.sources()
        return Scene(self.frame, [sources[i] for i in self.active_indices])

    def render(self):
        """The model cube ``(band, ny, nx)`` of the active sources."""
        return _masked(self.scene, self.active).render()


def _masked(scene: Scene, active: np.ndarray) -> Scene:
    g = scene.groups[0]
    m = jnp.asarray(active, dtype=g.spectrum.dtype)
    return eqx.tree_at(lambda s: s.groups[0].spectrum, scene, g.spectrum * m[:, None])


def _mask(a) -> np.ndarray:
    a = np.array(a, dtype=bool)
    a.flags.writeable = False
    return a


def pad_scene(frame: Frame, scene: Scene, n_slots: int) -> PaddedScene:
    """``scene``'s sources in the first slots of a `PaddedScene` of ``n_slots`` slots (the
    rest inactive: copies of the first source with zero flux).

    ``scene`` must hold one group (one morphology kind and stamp shape: e.g.
    ``init_scene(..., kind="sersic", stamp_size=25)``).
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if len(scene.groups) != 1:
        raise ValueError(
            f"scene must hold sources of one kind and stamp shape (one group), got {len(scene.groups)} groups; "
            "build it with one kind and a fixed stamp_size"
        )
    n = scene.n_sources
    if int(n_slots) < n:
        raise ValueError(f"n_slots must be >= the scene's {n} sources, got {n_slots}")
    if not isinstance(frame, Frame):
        raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
    sources = scene.sources()
    spare = eqx.tree_at(lambda s: s.spectrum, sources[0], jnp.zeros_like(sources[0].spectrum))
    padded = Scene(frame, sources + [spare] * (int(n_slots) - n))
    return PaddedScene(frame, padded, _mask(np.arange(int(n_slots)) < n))


def remove_source(padded: PaddedScene, index: int) -> PaddedScene:
    """``padded`` with slot ``index`` made inactive (its source no longer renders nor is
    fitted); the structure is unchanged, so a refit compiles nothing."""
    index = _check_slot(padded, index)
    if not padded.active[index]:
        raise ValueError(f"index: slot {index} holds no source (active slots: {padded.active_indices.tolist()})")
    active = np.array(padded.active)
    active[index] = False
    return PaddedScene(padded.frame, padded.scene, _mask(active))


def add_source(
    padded: PaddedScene,
    observations: Observation | Sequence[Observation] | None = None,
    position=None,
    *,
    source: Source | None = None,
) -> PaddedScene:
    """``padded`` with a new source in its first free slot; the structure is unchanged, so
    a refit compiles nothing.

    Either give ``source`` (a `Source` of the slots' kind and stamp shape), or
    ``observations`` and ``position`` (``(y, x)`` model pixels): the new source is then
    initialised as `init_scene` does (moments and a least-squares spectrum) on the
    residual of the active sources, so it takes the flux they miss.

    Returns the new `PaddedScene`; the slot used is ``new.active_indices`` less the old
    ones. A `ValueError` is raised when every slot is taken (pad with more slots).
    """
    free = np.flatnonzero(~padded.active)
    if len(free) == 0:
        raise ValueError(f"no free slot: all {padded.n_slots} slots hold sources; pad_scene with more n_slots")
    slot = int(free[0])
    group = padded.scene.groups[0]
    if source is None:
        if observations is None or position is None:
            raise ValueError("give either source, or observations and position")
        source = _initial_source(padded, observations, position)
    elif not isinstance(source, Source):
        raise TypeError(f"source must be a Source, got {type(source).__name__}")
    template = padded.scene.sources()[0]
    if type(source.morphology) is not type(template.morphology) or source.morphology.shape != template.morphology.shape:
        raise ValueError(
            f"source must be a {type(template.morphology).__name__} of stamp shape {template.morphology.shape} "
            f"(the slots' kind), got a {type(source.morphology).__name__} of shape {source.morphology.shape}"
        )
    source = Scene(padded.frame, [source]).groups[0]  # centre in pixels, batched on a 1-axis
    new_group = jax.tree.map(
        lambda g, s: g.at[slot].set(s[0].astype(g.dtype)) if eqx.is_array(g) else g,
        group,
        source,
    )
    scene = eqx.tree_at(lambda s: s.groups[0], padded.scene, new_group)
    active = np.array(padded.active)
    active[slot] = True
    return PaddedScene(padded.frame, scene, _mask(active))


def _initial_source(padded: PaddedScene, observations, position) -> Source:
    from .init import init_scene

    observations = as_observations(observations)
    model = padded.render()
    residual = tuple(eqx.tree_at(lambda o: o.data, o, o.data - o(model)) for o in observations)
    kind = type(padded.scene.groups[0].morphology).kind
    size = padded.scene.groups[0].morphology.shape
    if size[0] != size[1]:
        raise ValueError(f"add_source initialises square stamps only, the slots' are {size}: give source=")
    one = init_scene(padded.frame, residual, np.atleast_2d(np.asarray(position, float)), kind=kind, stamp_size=size[0])
    return one.sources()[0]


def _check_slot(padded: PaddedScene, index) -> int:
    if not isinstance(padded, PaddedScene):
        raise TypeError(f"padded must be a PaddedScene, got {type(padded).__name__}")
    i = int(index)
    if not 0 <= i < padded.n_slots:
        raise ValueError(f"index must be in [0, {padded.n_slots}), got {index}")
    return i
