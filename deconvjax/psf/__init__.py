"""Point-spread functions and PSF matching."""

from .array import ArrayPSF as ArrayPSF
from .base import AbstractPSF as AbstractPSF
from .gaussian import GaussianPSF as GaussianPSF
from .matching import difference_kernel_fft as difference_kernel_fft
from .moffat import MoffatPSF as MoffatPSF
