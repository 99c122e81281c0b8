"""deconvjax: differentiable forward modelling of astronomical images in JAX."""

import importlib as _importlib

from . import fit as fit
from . import io as io
from . import likelihood as likelihood
from . import model as model
from . import psf as psf
from ._cache import enable_compilation_cache as enable_compilation_cache
from .classical import richardson_lucy as richardson_lucy
from .classical import tikhonov as tikhonov
from .classical import wiener as wiener
from .frame import Frame as Frame
from .likelihood import (
    CorrelatedGaussianLikelihood as CorrelatedGaussianLikelihood,
)
from .likelihood import (
    GaussianLikelihood as GaussianLikelihood,
)
from .model import (
    GaussianMorphology as GaussianMorphology,
)
from .model import (
    PixelMorphology as PixelMorphology,
)
from .model import (
    PlaneBackground as PlaneBackground,
)
from .model import (
    PointMorphology as PointMorphology,
)
from .model import (
    Scene as Scene,
)
from .model import (
    SersicMorphology as SersicMorphology,
)
from .model import (
    Source as Source,
)
from .model import (
    StructuredMorphology as StructuredMorphology,
)
from .observation import (
    Observation as Observation,
)
from .observation import (
    chi2_per_dof as chi2_per_dof,
)
from .observation import (
    log_likelihood as log_likelihood,
)
from .observation import (
    render_observations as render_observations,
)
from .psf import ArrayPSF as ArrayPSF
from .psf import GaussianPSF as GaussianPSF
from .psf import MoffatPSF as MoffatPSF
from .wcs import make_wcs as make_wcs

__version__ = "0.1.0"

# The diffusion and posterior packages (diffrax, the U-Net, the samplers) load on first
# use: fitting and simulating do not need them, and every process (each `deconvjax fit`)
# would pay for their imports.
_LAZY = {"diffusion": ("deconvjax.diffusion", None), "posterior": ("deconvjax.posterior", None),
         "sims": ("deconvjax.sims", None), "io": ("deconvjax.io", None), "em": ("deconvjax.em", None),
         "load_prior": ("deconvjax.diffusion", "load_prior")}


def __getattr__(name):
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = _importlib.import_module(module_name)
        return module if attribute is None else getattr(module, attribute)
    raise AttributeError(f"module 'deconvjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
