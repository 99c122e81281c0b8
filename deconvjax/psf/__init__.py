"""Point-spread functions and PSF matching."""

from .array import ArrayPSF as ArrayPSF
from .base import AbstractPSF as AbstractPSF
from .gaussian import GaussianPSF as GaussianPSF
from .matching import difference_kernel_fft as difference_kernel_fft
from .matching import model_psf_for as model_psf_for
from .matching import widest_model_sigma as widest_model_sigma
from .moffat import MoffatPSF as MoffatPSF
