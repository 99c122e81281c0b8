"""Samplers of diffusion models as strategy objects, and the one entry point `sample`.

Every sampler is a final `equinox.Module` holding its options; ``sample(key, denoiser,
sampler, sde=..., shape=..., n_samples=...)`` runs it, for priors (any `AbstractDenoiser`)
and posteriors (a `PosteriorDenoiser`) alike.

Samplers (NFE: denoiser calls per trajectory, plus one for the final denoising):

- `DPMSolver2M` (default, 48 steps: 49 NFE): DPM-Solver++(2M) on the EDM schedule, one call
  per step; the fast choice for networks.
- `EDMHeun` (18 steps: 37 NFE): EDM's Heun (or Euler) steps, optional churn noise.
- `Ancestral`: ancestral (DDPM-posterior) steps on the EDM schedule.
- `AdaptiveODE`: adaptive probability-flow ODE (diffrax Tsit5 + PIDController); the exact
  choice for analytic denoisers.
- `FixedStepODE`: probability-flow ODE with a fixed diffrax step (Heun by default).
- `ReverseSDE`: the reverse SDE with Euler-Maruyama (default) or ShARK.
- `PredictorCorrector`: Euler-Maruyama predictor + Langevin corrector.

The fixed-step samplers on the EDM schedule and `PredictorCorrector` are
`AbstractStepSampler`s: their host form steps from a Python loop (on XLA:CPU a U-Net inside
a compiled loop ran ~30x slower), their traceable form is a ``lax.scan`` over the same step,
usable inside ``jit`` / ``vmap`` (``sample(..., traceable=True)``; ``unroll=True`` to unroll
it). The diffrax samplers are one compiled solve either way.

Adding a sampler takes one file: a final subclass of `AbstractSampler` with its options as
fields (defaults, and ``__check_init__`` raising ``ValueError`` naming the field) that
implements ``run(key, denoiser, sde, x1, *, progress) -> (x, nfe)``: integrate from ``x1`` at
``t = 1`` (SDE coordinates) to ``sde.t_min`` and return the batch in VE coordinates
``x / s(t_min)``, pure JAX. A fixed-step sampler subclasses `AbstractStepSampler` instead
and implements ``plan(sde)`` (per-step inputs), ``stepper()`` (an `AbstractStep`:
``init``, ``__call__``, ``output``) and ``nfe()``; it then has both forms (`Ancestral` is
such a file). Export it here, and add a name in ``names.py`` for the command line.
"""

from .ancestral import Ancestral as Ancestral
from .base import AbstractSampler as AbstractSampler
from .base import AbstractStep as AbstractStep
from .base import AbstractStepSampler as AbstractStepSampler
from .base import edm_sigmas as edm_sigmas
from .base import reverse_drift as reverse_drift
from .base import score_at as score_at
from .dpm import DPMSolver2M as DPMSolver2M
from .edm import EDMHeun as EDMHeun
from .entry import DEFAULT_SAMPLER as DEFAULT_SAMPLER
from .entry import sample as sample
from .names import SAMPLER_NAMES as SAMPLER_NAMES
from .names import sampler_from_name as sampler_from_name
from .ode import AdaptiveODE as AdaptiveODE
from .ode import FixedStepODE as FixedStepODE
from .pc import PredictorCorrector as PredictorCorrector
from .sde import ReverseSDE as ReverseSDE
