"""Checkpoint files, the one format for everything deconvjax saves as a PyTree (diffusion
priors and their training state, fitted scenes): one JSON header line, then
`eqx.tree_serialise_leaves` bytes.

Layout (one file, so it can be replaced atomically)::

    {"format": "deconvjax-checkpoint", "version": 1, "kind": ..., "nbytes": N,
     "sha256": ..., "hyper": {...}}\\n
    <N bytes of equinox leaf serialisation>

The header carries everything needed to rebuild the PyTree skeleton (hyperparameters), and
the byte count and SHA-256 of the payload, so a truncated or corrupted file is reported as
such instead of as an obscure deserialisation error. Writes go to a temporary file in the
same folder followed by `os.replace` (`deconvjax._atomic`), so an interrupted write never
clobbers the last good checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx

from ._atomic import atomic_write_bytes

__all__ = ["save_checkpoint", "read_header", "load_checkpoint"]

_FORMAT = "deconvjax-checkpoint"
_VERSION = 1


def save_checkpoint(path: str | os.PathLike, kind: str, hyper: dict[str, Any], tree) -> None:
    """Atomically save ``tree`` (its array leaves) with JSON hyperparameters ``hyper``."""
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    payload = buf.getvalue()
    header = {
        "format": _FORMAT, "version": _VERSION, "kind": kind, "nbytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(), "hyper": hyper,
    }
    atomic_write_bytes(path, json.dumps(header).encode() + b"\n" + payload)


def _split(path) -> tuple[dict, bytes]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no file at {path}")
    raw = path.read_bytes()
    nl = raw.find(b"\n")
    try:
        header = json.loads(raw[:nl].decode()) if nl > 0 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path}: not a deconvjax checkpoint (bad or truncated header)")
    if header.get("version") != _VERSION:
        raise ValueError(f"checkpoint {path}: unsupported version {header.get('version')}")
    payload = raw[nl + 1:]
    if len(payload) != header["nbytes"]:
        raise ValueError(
            f"checkpoint {path}: truncated or corrupt ({len(payload)} payload bytes, header "
            f"says {header['nbytes']})"
        )
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise ValueError(f"checkpoint {path}: corrupt (checksum mismatch)")
    return header, payload


def read_header(path: str | os.PathLike) -> dict:
    """The validated JSON header of a checkpoint (``kind``, ``hyper``, ...)."""
    return _split(path)[0]


def load_checkpoint(path: str | os.PathLike, skeleton: Callable[[dict], Any],
                    kind: str | None = None):
    """Load a checkpoint: ``skeleton(hyper)`` builds a PyTree of the right structure.

    Returns ``(tree, header)``. Raises `ValueError` for a truncated or corrupt file, a wrong
    ``kind``, or leaves that do not match the skeleton's shapes.
    """
    header, payload = _split(path)
    if kind is not None and header.get("kind") != kind:
        raise ValueError(f"checkpoint {path}: expected kind {kind!r}, got {header.get('kind')!r}")
    like = skeleton(header["hyper"])
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:  # equinox raises assorted errors for a structure mismatch
        raise ValueError(f"checkpoint {path}: leaves do not match the expected model ({e})") from e
    return tree, header
