"""Expectation-maximisation: learn a galaxy prior from survey cutouts alone.

- `Cutouts` (`cutouts.py`): a batch of cutouts of one shape, each with its own PSF, noise
  and mask; isolated galaxies or blends (source centres).
- `estep` (`estep.py`): posterior samples of every cutout through its own forward model,
  one compiled program per chunk of cutouts, the prior network shared.
- `gaussian_em` (`gaussian.py`) and `fit_gaussian_prior` (`start.py`): the starting
  Gaussian prior by closed-form EM with the exact posterior.
- `run_em` (`run.py`): the laps (E-step, M-step by denoising score matching warm-started
  from the last network, diagnostics), resumable at any moment.
- `diagnostics.py`: morphology statistics, their distance, montages.
"""

from .cutouts import Cutouts as Cutouts
from .estep import EStepResult as EStepResult
from .estep import estep as estep
from .gaussian import GaussianCutouts as GaussianCutouts
from .gaussian import gaussian_em as gaussian_em
from .run import EM_TRAIN_NOISE as EM_TRAIN_NOISE
from .run import EMConfig as EMConfig
from .run import EMRun as EMRun
from .run import run_em as run_em
from .start import fit_gaussian_prior as fit_gaussian_prior
from .start import load_gaussian_prior as load_gaussian_prior
