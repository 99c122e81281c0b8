"""The fit's view of a batched group of sources: its parameters mapped to the
unconstrained values the optimiser moves, and projected back onto the constraints.

The spectrum is the fit's own (``log``: positive, and Adam steps are then relative flux
steps, as scarlet2's ``relative_step``); centres are unconstrained; everything about the
morphology is the morphology's (`deconvjax.model.base.AbstractMorphology`:
`to_unconstrained`, `from_unconstrained`, `project`, `sparsity`), so no morphology kind is
named here. Free-form morphologies are renormalised to unit sum after every step, their
sum moved into the spectrum, so that a source's spectrum is its flux per band, as for the
parametric morphologies, which have unit flux.

`Constraints`, `symmetrise` and `monotonise` live in `deconvjax.model.parametrisation`
and are re-exported here, where fitting code looks for them.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..model import Source
from ..model.parametrisation import Constraints, exp_clipped, log_floor, monotonise, symmetrise

__all__ = [
    "Constraints",
    "from_unconstrained",
    "monotonise",
    "project",
    "sparsity_penalty",
    "symmetrise",
    "to_unconstrained",
]


def to_unconstrained(group: Source, constraints: Constraints) -> Source:
    """A batched group's parameters mapped to the optimiser's unconstrained space."""
    return eqx.tree_at(
        lambda s: (s.spectrum, s.morphology),
        group,
        (log_floor(group.spectrum, 1e-12), group.morphology.to_unconstrained(constraints)),
    )


def from_unconstrained(group: Source, constraints: Constraints) -> Source:
    """The inverse of `to_unconstrained`."""
    return eqx.tree_at(
        lambda s: (s.spectrum, s.morphology),
        group,
        (exp_clipped(group.spectrum), group.morphology.from_unconstrained(constraints)),
    )


def project(group: Source, constraints: Constraints, *, full: bool = True) -> Source:
    """The morphology's projection onto the constraints (positivity, symmetry,
    monotonicity, unit sum: whatever the morphology applies; ``full=False``: its cheaper
    form inside the optimiser's loop), with the flux it took out of the morphology moved
    into the spectrum."""
    morphology, scale = group.morphology.project(constraints, full=full)
    spectrum = group.spectrum * jnp.asarray(scale)[..., None]
    return eqx.tree_at(lambda s: (s.spectrum, s.morphology), group, (spectrum, morphology))


def sparsity_penalty(group: Source) -> Float[Array, ""]:
    """Sum over sources of each morphology's sparsity measure (for pixel arrays, the L1
    norm of the max-normalised image: its effective number of pixels; 0 for profiles)."""
    return jnp.sum(group.morphology.sparsity())
