"""`CountingJit`: `equinox.filter_jit` that counts the programs it traces, through public
APIs only (the tests' check that a second chunk, lap or fit of the same shapes compiles
nothing new)."""

from __future__ import annotations

import functools

import equinox as eqx


class CountingJit:
    """``eqx.filter_jit(fn, **jit_kwargs)``, callable and with ``lower``, that counts how
    many times JAX has traced ``fn``: once per new signature (shapes, dtypes, static
    arguments), so once per program it compiles (or lowers) in this process.

    The count is kept here, not read from JAX's cache internals; a `jax.clear_caches`
    makes JAX trace (and count) again."""

    def __init__(self, fn, **jit_kwargs):
        self.traces = 0

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            # Python runs this body only while JAX traces: never for a cached program.
            self.traces += 1
            return fn(*args, **kwargs)

        self._jitted = eqx.filter_jit(traced, **jit_kwargs)

    def __call__(self, *args, **kwargs):
        return self._jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._jitted.lower(*args, **kwargs)
