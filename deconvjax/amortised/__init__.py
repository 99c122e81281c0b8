"""Amortised deconvolution: methods trained on (clean, observed) pairs that answer in one
pass or a few (conditional diffusion, conditional VAE, Tikhonov + learned denoiser), joint
multi-survey deconvolution, and the metrics that compare them with posterior sampling."""

from .conditional import (
    AbstractDataConsistency as AbstractDataConsistency,
)
from .conditional import (
    BoundConditionalDenoiser as BoundConditionalDenoiser,
)
from .conditional import (
    ConditionalConfig as ConditionalConfig,
)
from .conditional import (
    ConditionalDenoiser as ConditionalDenoiser,
)
from .conditional import (
    NoDataConsistency as NoDataConsistency,
)
from .conditional import (
    WienerDataConsistency as WienerDataConsistency,
)
from .conditional import (
    load_conditional as load_conditional,
)
from .conditional import (
    pad_psf as pad_psf,
)
from .conditional import (
    sample_conditional as sample_conditional,
)
from .conditional import (
    save_conditional as save_conditional,
)
from .conditional import (
    train_conditional as train_conditional,
)
from .conditional import (
    train_loop as train_loop,
)
from .convolution import (
    convolve as convolve,
)
from .convolution import (
    transfer_function as transfer_function,
)
from .cvae import (
    CVAE as CVAE,
)
from .cvae import (
    CVAEConfig as CVAEConfig,
)
from .cvae import (
    cvae_loss as cvae_loss,
)
from .cvae import (
    load_cvae as load_cvae,
)
from .cvae import (
    sample_cvae as sample_cvae,
)
from .cvae import (
    save_cvae as save_cvae,
)
from .cvae import (
    train_cvae as train_cvae,
)
from .hallucination import (
    hallucination_rate as hallucination_rate,
)
from .hallucination import (
    hallucination_threshold as hallucination_threshold,
)
from .joint import (
    FISTA as FISTA,
)
from .joint import (
    AbstractJointSolver as AbstractJointSolver,
)
from .joint import (
    AbstractRegulariser as AbstractRegulariser,
)
from .joint import (
    ColourRegulariser as ColourRegulariser,
)
from .joint import (
    DiffusionPriorRegulariser as DiffusionPriorRegulariser,
)
from .joint import (
    GradientDescent as GradientDescent,
)
from .joint import (
    JointObservations as JointObservations,
)
from .joint import (
    JointSolution as JointSolution,
)
from .joint import (
    LaplacianRegulariser as LaplacianRegulariser,
)
from .joint import (
    bin2x2 as bin2x2,
)
from .joint import (
    ground_only_deconvolve as ground_only_deconvolve,
)
from .joint import (
    joint_deconvolve as joint_deconvolve,
)
from .joint import (
    joint_forward as joint_forward,
)
from .joint import (
    joint_objective as joint_objective,
)
from .joint import (
    lipschitz_constant as lipschitz_constant,
)
from .joint import (
    minimise as minimise,
)
from .joint import (
    simulate_joint as simulate_joint,
)
from .joint import (
    space_only_deconvolve as space_only_deconvolve,
)
from .learned_denoiser import (
    TikhonovUNet as TikhonovUNet,
)
from .learned_denoiser import (
    TikhonovUNetConfig as TikhonovUNetConfig,
)
from .learned_denoiser import (
    choose_alpha as choose_alpha,
)
from .learned_denoiser import (
    deconvolve_batch as deconvolve_batch,
)
from .learned_denoiser import (
    load_tikhonov_unet as load_tikhonov_unet,
)
from .learned_denoiser import (
    residual_chi2 as residual_chi2,
)
from .learned_denoiser import (
    save_tikhonov_unet as save_tikhonov_unet,
)
from .learned_denoiser import (
    tikhonov_batch as tikhonov_batch,
)
from .learned_denoiser import (
    train_tikhonov_unet as train_tikhonov_unet,
)
from .metrics import (
    ellipticity as ellipticity,
)
from .metrics import (
    ellipticity_error as ellipticity_error,
)
from .metrics import (
    flux_error as flux_error,
)
from .metrics import (
    psnr as psnr,
)
from .metrics import (
    ssim as ssim,
)
from .mrs import (
    mrs_debias as mrs_debias,
)
from .mrs import (
    multiresolution_support as multiresolution_support,
)
from .mrs import (
    starlet_noise_levels as starlet_noise_levels,
)
from .mrs import (
    starlet_operator_norm as starlet_operator_norm,
)
from .pairs import (
    Pairs as Pairs,
)
from .pairs import (
    make_pairs as make_pairs,
)
from .pairs import (
    moffat_psf as moffat_psf,
)
from .retention import (
    DEFAULT_SLACK as DEFAULT_SLACK,
)
from .retention import (
    chi2_per_pixel as chi2_per_pixel,
)
from .retention import (
    conditional_variance as conditional_variance,
)
from .retention import (
    conditional_variances as conditional_variances,
)
from .retention import (
    image_features as image_features,
)
from .retention import (
    is_retained as is_retained,
)
