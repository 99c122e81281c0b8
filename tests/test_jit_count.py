"""`CountingJit` counts one trace per new signature and none for a cached program."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax.numpy as jnp

from deconvjax._jit import CountingJit


def test_counts_one_trace_per_signature():
    f = CountingJit(lambda x, n: x * n)
    assert f(jnp.ones(3), 2).tolist() == [2.0, 2.0, 2.0]
    f(jnp.zeros(3), 2)  # same shapes and static argument: cached
    assert f.traces == 1
    f(jnp.ones(4), 2)  # new shape
    f(jnp.ones(3), 3)  # new static argument (a Python int is static under filter_jit)
    assert f.traces == 3
    f.lower(jnp.ones(5), 2)
    assert f.traces == 4
