"""JAX's persistent compilation cache for the command line.

A `deconvjax` command compiles its programs (fits, samplers) in every new process; with
the cache on disk, a second run on images of the same shapes loads them instead. The cache
is keyed by JAX and XLA themselves (program, JAX version, backend, device kind and flags),
so one folder can hold entries for several machines, but an entry compiled on one kind
of machine is only of use on that kind.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the cache folder; ``off`` (or empty) disables the cache.
CACHE_ENV = "DECONVJAX_CACHE_DIR"


def default_cache_dir() -> Path | None:
    """The folder the command line caches compiled programs in: ``$DECONVJAX_CACHE_DIR``
    if set (``off`` or empty: no cache), else ``$XDG_CACHE_HOME/deconvjax/jax`` (by
    default ``~/.cache/deconvjax/jax``)."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "none", "0") else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deconvjax" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default
    `default_cache_dir`), caching every program however fast it compiled, so that a
    second process with the same shapes compiles nothing. Returns the folder, or None
    when the cache is off. Must run before the first compilation of the process."""
    import jax

    folder = default_cache_dir() if path is None else Path(path)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def node_type() -> str:
    """A name for this node's kind of accelerator and host CPU, for `node_cache_dir`:
    ``<platform>-<device kind>`` plus, on CPU, the processor's model and a digest of its
    instruction-set flags. XLA:CPU compiles for the host's instruction set (AVX-512 and
    the like), so an entry compiled on one CPU model may not run on another."""
    import hashlib
    import platform

    import jax

    device = jax.devices()[0]
    name = f"{device.platform}-{device.device_kind}"
    if device.platform == "cpu":
        model, flags = platform.machine(), ""
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name") and model == platform.machine():
                        model = line.split(":", 1)[1].strip()
                    elif line.startswith("flags"):
                        flags = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        name += f"-{model}-{hashlib.sha256(flags.encode()).hexdigest()[:8]}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def node_cache_dir(base: str | os.PathLike) -> Path:
    """The subfolder of a shared cache folder ``base`` for this node's type
    (`node_type`): what survey workers on a cluster of several node types use."""
    return Path(base) / node_type()
