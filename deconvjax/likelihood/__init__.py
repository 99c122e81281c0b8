"""Noise models: log-likelihoods of data given a model."""

from .base import AbstractLikelihood as AbstractLikelihood
from .correlated import CorrelatedGaussianLikelihood as CorrelatedGaussianLikelihood
from .gaussian import GaussianLikelihood as GaussianLikelihood
