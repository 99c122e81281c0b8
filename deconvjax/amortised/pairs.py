"""Training and test pairs for amortised deconvolution: a space-resolution truth ``x``, a
ground-based PSF ``h`` (random seeing per pair) and the observation ``y = h * x + n``.

Truths are GalSim bulge + disk galaxies (`deconvjax.diffusion.data.simulate_galaxies`) or
real COSMOS HST stamps (`cosmos_stamps`); the observation is the periodic convolution of
`deconvjax.amortised.convolution` plus white Gaussian noise, so that the forward operator of
a pair is known exactly and every method (amortised or posterior sampling) sees the same one.
"""

import dataclasses

import numpy as np

from ..diffusion.data import cosmos_stamps, simulate_galaxies
from .convolution import convolve


@dataclasses.dataclass(frozen=True)
class Pairs:
    """A batch of pairs (host arrays).

    - `truth`: ``(n, 1, size, size)``, the clean image (counts per pixel).
    - `observed`: ``(n, 1, size, size)``, ``psf * truth + noise``.
    - `psf`: ``(n, 1, psf_size, psf_size)``, unit-sum PSFs centred on ``psf_size // 2``.
    - `noise_sigma`: ``(n,)``, the white noise's standard deviation per pair.
    """

    truth: np.ndarray
    observed: np.ndarray
    psf: np.ndarray
    noise_sigma: np.ndarray

    def __post_init__(self):
        n = len(self.truth)
        if self.truth.ndim != 4 or self.observed.shape != self.truth.shape:
            raise ValueError(f"observed: expected the truth's shape {self.truth.shape}, got {self.observed.shape}")
        if self.psf.ndim != 4 or len(self.psf) != n or self.psf.shape[1] != self.truth.shape[1]:
            raise ValueError(f"psf: expected ({n}, {self.truth.shape[1]}, h, w), got {self.psf.shape}")
        if self.psf.shape[-1] > self.truth.shape[-1] or self.psf.shape[-2] > self.truth.shape[-2]:
            raise ValueError(f"psf: larger than the images ({self.psf.shape[-2:]} > {self.truth.shape[-2:]})")
        if np.shape(self.noise_sigma) != (n,):
            raise ValueError(f"noise_sigma: expected shape ({n},), got {np.shape(self.noise_sigma)}")

    def __len__(self):
        return len(self.truth)

    def __getitem__(self, index) -> "Pairs":
        index = np.atleast_1d(np.arange(len(self))[index])
        return Pairs(self.truth[index], self.observed[index], self.psf[index], self.noise_sigma[index])


def moffat_psf(fwhm: float, size: int, beta: float = 3.5) -> np.ndarray:
    """A unit-sum Moffat PSF of `fwhm` pixels on an odd ``(size, size)`` grid centred on
    ``size // 2`` (GalSim, pixel-integrated)."""
    import galsim

    if not fwhm > 0:
        raise ValueError(f"fwhm: expected a positive FWHM in pixels, got {fwhm}")
    if size % 2 == 0:
        raise ValueError(f"size: expected an odd PSF size (centred on a pixel), got {size}")
    img = galsim.Moffat(beta=beta, fwhm=fwhm).drawImage(nx=size, ny=size, scale=1.0)
    a = img.array.astype(np.float64)
    return a / a.sum()


def make_pairs(seed: int, n: int, size: int = 32, *, psf_size: int = 15,
               fwhm_range: tuple[float, float] = (2.5, 4.5), noise_sigma: float | tuple[float, float] = 0.01,
               truths: np.ndarray | None = None, galaxies: str = "simulated",
               cosmos_dir=None) -> Pairs:
    """`n` pairs of ``size``-pixel images.

    - `fwhm_range`: Moffat FWHM in pixels, uniform per pair (ground seeing at the truth's scale).
    - `noise_sigma`: white-noise standard deviation, a number or a ``(lo, hi)`` log-uniform range.
    - `truths`: ``(n, 1, size, size)`` clean images to use; otherwise drawn as `galaxies`:
      ``"simulated"`` (GalSim bulge + disk) or ``"cosmos"`` (the COSMOS stamps in `cosmos_dir`,
      rows ``seed, seed + 1, ...`` cycled; they carry HST noise).
    """
    rng = np.random.default_rng(seed)
    if truths is None:
        if galaxies == "simulated":
            truths = simulate_galaxies(seed, n, size)
        elif galaxies == "cosmos":
            if cosmos_dir is None:
                raise ValueError("cosmos_dir: needed for galaxies='cosmos'")
            truths = cosmos_stamps(cosmos_dir, size)
            truths = truths[(seed + np.arange(n)) % len(truths)]
        else:
            raise ValueError(f"galaxies: expected 'simulated' or 'cosmos', got {galaxies!r}")
    truths = np.asarray(truths, dtype=np.float64)
    if truths.shape != (n, 1, size, size):
        raise ValueError(f"truths: expected shape {(n, 1, size, size)}, got {truths.shape}")
    if psf_size > size:
        raise ValueError(f"psf_size: expected at most size={size}, got {psf_size}")
    fwhm = rng.uniform(*fwhm_range, n)
    psf = np.stack([moffat_psf(f, psf_size) for f in fwhm])[:, None]
    if np.ndim(noise_sigma) == 0:
        sigma = np.full(n, float(noise_sigma))
    else:
        lo, hi = noise_sigma
        sigma = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    blurred = np.asarray(convolve(truths, psf))
    observed = blurred + sigma[:, None, None, None] * rng.standard_normal(truths.shape)
    return Pairs(truths.astype(np.float32), observed.astype(np.float32), psf.astype(np.float32), sigma)
