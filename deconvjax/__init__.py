"""deconvjax: differentiable forward modelling of astronomical images in JAX."""

from . import likelihood as likelihood, model as model, psf as psf
from .frame import Frame as Frame
from .likelihood import (
    CorrelatedGaussianLikelihood as CorrelatedGaussianLikelihood,
    GaussianLikelihood as GaussianLikelihood,
)
from .model import (
    GaussianMorphology as GaussianMorphology,
    PixelMorphology as PixelMorphology,
    PointMorphology as PointMorphology,
    Scene as Scene,
    SersicMorphology as SersicMorphology,
    Source as Source,
)
from .observation import (
    Observation as Observation,
    chi2_per_dof as chi2_per_dof,
    log_likelihood as log_likelihood,
    render_observations as render_observations,
)
from .psf import ArrayPSF as ArrayPSF, GaussianPSF as GaussianPSF, MoffatPSF as MoffatPSF
from .wcs import make_wcs as make_wcs

__version__ = "0.1.0"
