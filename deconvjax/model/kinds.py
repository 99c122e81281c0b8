"""The morphologies by name: every concrete morphology class, found through the class
hierarchy (no list to keep up to date: a new morphology module imported here is known to
`init_scene`, catalogs and saved scenes by its `kind`)."""

from __future__ import annotations

from . import gaussian, pixel, point, sersic, starlet  # noqa: F401  (every morphology module)
from .base import AbstractMorphology


def _concrete(cls) -> list[type[AbstractMorphology]]:
    out = []
    for sub in cls.__subclasses__():
        if getattr(sub, "__abstractmethods__", None):
            out += _concrete(sub)
        else:
            out.append(sub)
            out += _concrete(sub)
    return out


def morphology_kinds() -> dict[str, type[AbstractMorphology]]:
    """Every concrete morphology class by its `kind` (``"pixel"``, ``"sersic"``, ...)."""
    return {cls.kind: cls for cls in _concrete(AbstractMorphology)}


def morphology_class(kind: str) -> type[AbstractMorphology]:
    """The morphology class named ``kind`` (or by its class name, as older saved scenes
    name it); a `ValueError` lists the known kinds otherwise."""
    kinds = morphology_kinds()
    if kind in kinds:
        return kinds[kind]
    for cls in kinds.values():
        if cls.__name__ == kind:
            return cls
    raise ValueError(f"unknown morphology kind {kind!r}; known: {sorted(kinds)}")
