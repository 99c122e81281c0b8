"""Noise models: log-likelihoods of data given a model, and noise distributions (analytic
or learned from blank-sky cutouts, SLIC) whose scores serve as likelihoods."""

from .base import AbstractLikelihood as AbstractLikelihood
from .correlated import CorrelatedGaussianLikelihood as CorrelatedGaussianLikelihood
from .gaussian import GaussianLikelihood as GaussianLikelihood
from .noise_data import blank_cutouts as blank_cutouts
from .noise_data import check_noise_cutouts as check_noise_cutouts
from .noise_data import correlated_noise_cutouts as correlated_noise_cutouts
from .noise_data import cosmos_blank_cutouts as cosmos_blank_cutouts
from .noise_data import non_gaussian_noise_cutouts as non_gaussian_noise_cutouts
from .noise_model import AbstractNoiseModel as AbstractNoiseModel
from .noise_model import GaussianNoiseModel as GaussianNoiseModel

# The learned noise model needs the diffusion package (U-Net, training); it is imported on
# first use so that `import deconvjax` stays as fast as it was.
_LEARNED = ("LearnedNoiseModel", "NoiseModelLikelihood", "fisher_power_spectrum", "load_noise_model",
            "noise_train_config", "save_noise_model", "train_noise_model")


def __getattr__(name):
    if name in _LEARNED:
        from . import learned

        return getattr(learned, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LEARNED))
