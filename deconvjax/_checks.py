"""Input checks shared by the user-facing constructors: turn an argument into a real
float64 numpy array, or raise an error that names the argument and says what was
expected (instead of numpy's own conversion error, or a silent cast)."""

import numbers

import jax
import numpy as np


def is_traced(value) -> bool:
    """Whether any leaf of ``value`` is a JAX tracer (its values are not known yet: it is
    being built inside `jit`, `vmap`, `grad`, ...)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def _real_scalar(v) -> bool:
    return v is None or isinstance(v, numbers.Real | np.bool_)


def real_array(value, name: str, expected: str = "an array of real numbers") -> np.ndarray:
    """``value`` as a float64 numpy array.

    Raises `TypeError` for strings, complex values (numpy would drop the imaginary part
    with only a warning), dates and other non-numbers, and `ValueError` for ragged
    nested sequences; each message starts with ``name``. ``None`` elements of an object
    array become NaN (left to the caller's NaN checks)."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected {expected}, could not make an array of it ({e})") from None
    kind = raw.dtype.kind
    if kind == "c":
        raise TypeError(
            f"{name}: expected {expected}, got complex values (dtype {raw.dtype}); pass the "
            "real part (.real) or the modulus (abs) explicitly"
        )
    if kind == "O" and all(_real_scalar(v) for v in raw.flat):
        return raw.astype(np.float64)
    if kind not in "biuf":
        what = {"U": "strings", "S": "bytes", "O": "objects that are not real numbers"}.get(kind, f"dtype {raw.dtype}")
        raise TypeError(f"{name}: expected {expected}, got {what} ({_short(value)})")
    return raw.astype(np.float64)


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def finite(value, name: str, expected: str = "real numbers"):
    """``value`` checked to be real and finite (as a float64 numpy array), or ``value``
    itself, unchecked, when it is traced."""
    if is_traced(value):
        return value
    arr = real_array(value, name, expected)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def check_shear(g1, g2) -> None:
    """Concrete reduced shears must have ``g1**2 + g2**2 < 1`` (else the shear matrix is NaN)."""
    if is_traced((g1, g2)):
        return
    g = np.hypot(np.asarray(g1, np.float64), np.asarray(g2, np.float64))
    if np.any(g >= 1):
        raise ValueError(f"g1, g2: a reduced shear needs g1**2 + g2**2 < 1, got |g| = {g.tolist()}")
