"""deconvjax: differentiable forward modelling of astronomical images in JAX."""

import importlib as _importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Every export loads on first use (PEP 562): `import deconvjax` imports neither JAX nor
# astropy, and each `deconvjax` command (a fresh process) imports only the modules it
# uses. Public name -> (module, attribute; None for the module itself).
_LAZY = {
    # subpackages
    "fit": ("deconvjax.fit", None),
    "io": ("deconvjax.io", None),
    "likelihood": ("deconvjax.likelihood", None),
    "model": ("deconvjax.model", None),
    "psf": ("deconvjax.psf", None),
    "diffusion": ("deconvjax.diffusion", None),
    "posterior": ("deconvjax.posterior", None),
    "sims": ("deconvjax.sims", None),
    "em": ("deconvjax.em", None),
    # functions and classes
    "enable_compilation_cache": ("deconvjax._cache", "enable_compilation_cache"),
    "richardson_lucy": ("deconvjax.classical", "richardson_lucy"),
    "tikhonov": ("deconvjax.classical", "tikhonov"),
    "wiener": ("deconvjax.classical", "wiener"),
    "Frame": ("deconvjax.frame", "Frame"),
    "CorrelatedGaussianLikelihood": ("deconvjax.likelihood", "CorrelatedGaussianLikelihood"),
    "GaussianLikelihood": ("deconvjax.likelihood", "GaussianLikelihood"),
    "GaussianMorphology": ("deconvjax.model", "GaussianMorphology"),
    "PixelMorphology": ("deconvjax.model", "PixelMorphology"),
    "PlaneBackground": ("deconvjax.model", "PlaneBackground"),
    "PointMorphology": ("deconvjax.model", "PointMorphology"),
    "Scene": ("deconvjax.model", "Scene"),
    "SersicMorphology": ("deconvjax.model", "SersicMorphology"),
    "Source": ("deconvjax.model", "Source"),
    "StructuredMorphology": ("deconvjax.model", "StructuredMorphology"),
    "Observation": ("deconvjax.observation", "Observation"),
    "chi2_per_dof": ("deconvjax.observation", "chi2_per_dof"),
    "log_likelihood": ("deconvjax.observation", "log_likelihood"),
    "render_observations": ("deconvjax.observation", "render_observations"),
    "ArrayPSF": ("deconvjax.psf", "ArrayPSF"),
    "GaussianPSF": ("deconvjax.psf", "GaussianPSF"),
    "MoffatPSF": ("deconvjax.psf", "MoffatPSF"),
    "make_wcs": ("deconvjax.wcs", "make_wcs"),
    "load_prior": ("deconvjax.diffusion", "load_prior"),
}

__all__ = sorted(n for n in _LAZY if n not in ("diffusion", "posterior", "sims", "em", "load_prior"))


def __getattr__(name):
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = _importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'deconvjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
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
    from .likelihood import CorrelatedGaussianLikelihood as CorrelatedGaussianLikelihood
    from .likelihood import GaussianLikelihood as GaussianLikelihood
    from .model import GaussianMorphology as GaussianMorphology
    from .model import PixelMorphology as PixelMorphology
    from .model import PlaneBackground as PlaneBackground
    from .model import PointMorphology as PointMorphology
    from .model import Scene as Scene
    from .model import SersicMorphology as SersicMorphology
    from .model import Source as Source
    from .model import StructuredMorphology as StructuredMorphology
    from .observation import Observation as Observation
    from .observation import chi2_per_dof as chi2_per_dof
    from .observation import log_likelihood as log_likelihood
    from .observation import render_observations as render_observations
    from .psf import ArrayPSF as ArrayPSF
    from .psf import GaussianPSF as GaussianPSF
    from .psf import MoffatPSF as MoffatPSF
    from .wcs import make_wcs as make_wcs
