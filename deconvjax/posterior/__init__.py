"""Posterior sampling with diffusion priors through the forward model: a posterior
denoiser (MMPS, convolved likelihood, DPS) usable with every diffusion sampler,
deconvolution from one or several observations, deblending, TARP coverage, catalogs
(`posterior_catalog`) and FITS products (`write_posterior`)."""

from .base import AbstractCGSolve as AbstractCGSolve
from .base import AbstractEmbedding as AbstractEmbedding
from .base import AbstractGuidance as AbstractGuidance
from .base import ConvergedCG as ConvergedCG
from .base import FixedCG as FixedCG
from .base import PosteriorDenoiser as PosteriorDenoiser
from .base import ScaledIdentity as ScaledIdentity
from .base import pcg as pcg
from .batch import StackedPosterior as StackedPosterior
from .catalog import posterior_catalog as posterior_catalog
from .convolved import ConvolvedLikelihood as ConvolvedLikelihood
from .deblend import DeblendResult as DeblendResult
from .deblend import ProductDenoiser as ProductDenoiser
from .deblend import SourcePlacement as SourcePlacement
from .deblend import deblend as deblend
from .deconvolve import PosteriorResult as PosteriorResult
from .deconvolve import deconvolve as deconvolve
from .deconvolve import make_observations as make_observations
from .dps import DPS as DPS
from .mmps import MMPS as MMPS
from .products import write_posterior as write_posterior
from .sampling import sample_posterior as sample_posterior
from .slic import GaussianFitMMPS as GaussianFitMMPS
from .slic import NoiseScoreGuidance as NoiseScoreGuidance
from .slic import ScoreWhitenedMMPS as ScoreWhitenedMMPS
from .slic import effective_sigma as effective_sigma
from .tarp import tarp_coverage as tarp_coverage
from .tarp import tarp_max_deviation as tarp_max_deviation
