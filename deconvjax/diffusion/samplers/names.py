"""The command line's sampler names, mapped to sampler objects in this one place.

``deconvjax sample --sampler NAME --steps N`` and the benchmarks' ``--sampler`` build their
sampler with `sampler_from_name`; with no ``--steps`` the sampler keeps its own default, so
the command line's default (``dpm2m``) is exactly the Python default ``DPMSolver2M()``.
"""

from __future__ import annotations

import diffrax as dfx

from .ancestral import Ancestral
from .base import AbstractSampler
from .dpm import DPMSolver2M
from .edm import EDMHeun
from .ode import AdaptiveODE, FixedStepODE
from .pc import PredictorCorrector
from .sde import ReverseSDE

__all__ = ["SAMPLER_NAMES", "DEFAULT_SAMPLER_NAME", "sampler_from_name"]

# name -> constructor (keyword options, e.g. steps)
_FACTORIES = {
    "dpm2m": lambda **kw: DPMSolver2M(**kw),
    "edm": lambda **kw: EDMHeun(**kw),
    "edm_euler": lambda **kw: EDMHeun(second_order=False, **kw),
    "ancestral": lambda **kw: Ancestral(**kw),
    "pf_ode": lambda **kw: AdaptiveODE(**kw),
    "ode_fixed": lambda **kw: FixedStepODE(**kw),
    "sde": lambda **kw: ReverseSDE(**kw),
    "sde_shark": lambda **kw: ReverseSDE(solver=dfx.ShARK(), **kw),
    "pc": lambda **kw: PredictorCorrector(**kw),
}

SAMPLER_NAMES: tuple[str, ...] = tuple(_FACTORIES)
DEFAULT_SAMPLER_NAME = "dpm2m"


def sampler_from_name(name: str, steps: int | None = None) -> AbstractSampler:
    """The sampler called ``name`` on the command line, with ``steps`` steps (``None``: the
    sampler's default; ``pf_ode`` is adaptive and takes none)."""
    if name not in _FACTORIES:
        raise ValueError(f"sampler: expected one of {SAMPLER_NAMES}, got {name!r}")
    if steps is None:
        return _FACTORIES[name]()
    if name == "pf_ode":
        raise ValueError("steps: the adaptive sampler 'pf_ode' takes no step count")
    return _FACTORIES[name](steps=int(steps))
