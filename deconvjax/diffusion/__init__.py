"""Diffusion priors: SDEs, denoisers (analytic and U-Net), training, samplers (`deconvjax.diffusion.samplers`),
log-densities, the shipped galaxy prior and a MAP regulariser."""

from ..checkpoint import load_checkpoint as load_checkpoint
from ..checkpoint import read_header as read_header
from ..checkpoint import save_checkpoint as save_checkpoint
from .denoiser import AbstractDenoiser as AbstractDenoiser
from .denoiser import GaussianDenoiser as GaussianDenoiser
from .denoiser import GaussianMixtureDenoiser as GaussianMixtureDenoiser
from .denoiser import StationaryGaussianDenoiser as StationaryGaussianDenoiser
from .denoiser import score_from_denoiser as score_from_denoiser
from .logprob import log_prob as log_prob
from .prior import ScorePrior as ScorePrior
from .prior import load_prior as load_prior
from .prior import save_prior as save_prior
from .regulariser import prior_score as prior_score
from .regulariser import prior_score_penalty as prior_score_penalty
from .samplers import AbstractSampler as AbstractSampler
from .samplers import AdaptiveODE as AdaptiveODE
from .samplers import Ancestral as Ancestral
from .samplers import DPMSolver2M as DPMSolver2M
from .samplers import EDMHeun as EDMHeun
from .samplers import FixedStepODE as FixedStepODE
from .samplers import PredictorCorrector as PredictorCorrector
from .samplers import ReverseSDE as ReverseSDE
from .samplers import edm_sigmas as edm_sigmas
from .samplers import sample as sample
from .samplers import score_at as score_at
from .sde import VESDE as VESDE
from .sde import VPSDE as VPSDE
from .sde import AbstractSDE as AbstractSDE
from .train import TrainConfig as TrainConfig
from .train import dsm_loss as dsm_loss
from .train import flux_scale_of as flux_scale_of
from .train import train_prior as train_prior
from .unet import UNet as UNet
from .unet import UNetDenoiser as UNetDenoiser
