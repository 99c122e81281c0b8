"""PSF matching: the difference kernel that takes the model frame's narrow PSF to an
observation's PSF, evaluated once in Fourier space."""

import numpy as np

from .._fft import centred_to_origin

#: The largest difference-kernel gain accepted by default: float32 rounding of the
#: kernels and the 1e-10 regularisation move a matched pair's gain by far less.
GAIN_TOLERANCE = 1.01

#: The default margin of `widest_model_sigma`: the model PSF is this fraction narrower
#: than the widest one whose difference kernels have gain 1, so that noise in PSF images
#: and the small change of a kernel between observations do not push a gain above 1.
MODEL_PSF_MARGIN = 0.1


def difference_kernel_fft(
    model_kernel: np.ndarray, obs_kernel: np.ndarray, fft_shape: tuple[int, int]
) -> np.ndarray:
    """Fourier transform (``rfft2`` layout, ``(band, fy, fx // 2 + 1)``) of the kernel
    ``D`` with ``model_psf * D = obs_psf``.

    Both kernels are ``(band or 1, h, w)`` arrays on the model pixel grid, centred on
    ``(h // 2, w // 2)``. The ratio is regularised as
    ``P_obs conj(P_model) / (|P_model|^2 + eps)`` with ``eps`` a 1e-10 fraction of the peak
    power, which only matters where the model PSF carries no information. Its largest
    modulus (the gain) must not exceed 1: `Observation` checks it (see `widest_model_sigma`)."""
    pm = np.fft.rfft2(centred_to_origin(model_kernel, fft_shape))
    po = np.fft.rfft2(centred_to_origin(obs_kernel, fft_shape))
    power = np.abs(pm) ** 2
    eps = 1e-10 * power.max()
    return po * np.conj(pm) / (power + eps)


def widest_model_sigma(obs_kernel: np.ndarray, margin: float = MODEL_PSF_MARGIN) -> float:
    """The widest Gaussian model PSF (its sigma in model pixels) whose difference kernel
    to every band of ``obs_kernel`` has gain at most 1, narrowed by ``margin``.

    ``obs_kernel`` is ``(band, h, w)``, observation PSFs on the model grid as
    `Observation` matches them (centred, unit sum). The model PSF is integrated over
    model pixels, so the condition at every frequency ``k`` (cycles per model pixel) is
    ``|P_obs(k)| <= exp(-2 pi^2 sigma^2 |k|^2) sinc(k_y) sinc(k_x)``, which bounds
    ``sigma^2`` by ``-ln(|P_obs| / sinc sinc) / (2 pi^2 |k|^2)``: the answer is the
    smallest bound over the grid's frequencies, times ``1 - margin``. Zero when some
    frequency of an observation PSF is at least as strong as the model pixel's own
    response (a PSF narrower than the model pixels: use finer model pixels)."""
    kernel = np.asarray(obs_kernel, dtype=np.float64)
    h, w = kernel.shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    transfer = np.abs(np.fft.fft2(np.fft.ifftshift(kernel, axes=(-2, -1))))
    transfer = transfer / (np.abs(np.sinc(ky) * np.sinc(kx)) * transfer[..., :1, :1])
    k2 = np.broadcast_to(ky**2 + kx**2, transfer.shape)
    nonzero = k2 > 0
    with np.errstate(divide="ignore"):
        bound = -np.log(np.maximum(transfer[nonzero], 1e-300)) / (2 * np.pi**2 * k2[nonzero])
    return float(np.sqrt(max(bound.min(), 0.0)) * (1.0 - margin))


def model_psf_for(psfs, pixel_scale: float, n_bands: int = 1, *, margin: float = MODEL_PSF_MARGIN,
                  shape: tuple[int, int] = (63, 63)):
    """The default model PSF for a frame of ``pixel_scale`` arcsec per pixel that
    observations with the PSFs ``psfs`` (an `AbstractPSF` or a sequence of them; images
    are effective PSFs at ``pixel_scale``) are matched to: the widest Gaussian whose
    difference kernel to each has gain at most 1, narrowed by ``margin``
    (`widest_model_sigma`), as a `GaussianPSF` in arcsec. Raises a `ValueError` when
    no Gaussian model PSF fits (PSFs narrower than the model pixels)."""
    from .array import ArrayPSF
    from .base import AbstractPSF
    from .gaussian import GaussianPSF

    if isinstance(psfs, AbstractPSF | np.ndarray):
        psfs = [psfs]
    sigmas = []
    for i, psf in enumerate(psfs):
        if not isinstance(psf, AbstractPSF):
            psf = ArrayPSF(psf, pixel_scale=pixel_scale)
        elif isinstance(psf, ArrayPSF) and psf.pixel_scale is None:
            psf = ArrayPSF(psf.image, pixel_scale=pixel_scale, oversampling=psf.oversampling,
                           center=tuple(psf.center[0]))
        nb = psf.image.shape[0] if isinstance(psf, ArrayPSF) else n_bands
        kernel = psf.kernel(shape, pixel_scale, nb, pixel_integrated=not psf.effective)
        sigma = widest_model_sigma(kernel, margin)
        if not sigma > 0:
            raise ValueError(
                f"psfs[{i}] is narrower than a model pixel of {pixel_scale:.4g} arcsec at some spatial "
                "frequencies: no model PSF can be matched to it; use a model frame with finer pixels"
            )
        sigmas.append(sigma)
    return GaussianPSF(min(sigmas) * pixel_scale)


def reshape_pixel_response(kernel: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """Change the pixel response of centred kernels from the unit model pixel to another
    pixel shape: ``kernel`` ``(band, h, w)``, integrated over unit pixels of the grid it
    is sampled on (``pixel_integrated=True``), becomes the same profile integrated over
    the parallelogram spanned by the columns of ``jacobian`` ``(2, 2)`` (the ``(y, x)``
    steps, in model pixels, of one pixel of another grid: a rotated, larger or smaller
    pixel), still sampled on the model grid with unit sum.

    The kernel's transform is multiplied by the ratio of the two boxes' transforms,
    ``sinc(k.a) sinc(k.b) / (sinc(k_y) sinc(k_x))``; the denominator is at least
    ``sinc(1/2)^2 = 0.41`` below the Nyquist frequency, so the ratio is well conditioned.
    An identity ``jacobian`` returns ``kernel`` unchanged.
    """
    jacobian = np.asarray(jacobian, dtype=np.float64)
    if np.allclose(jacobian, np.eye(2), rtol=0.0, atol=1e-9):
        return kernel
    h, w = kernel.shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    (ay, by), (ax, bx) = jacobian
    ratio = np.sinc(ky * ay + kx * ax) * np.sinc(ky * by + kx * bx) / (np.sinc(ky) * np.sinc(kx))
    if not (h % 2 and w % 2):
        raise ValueError(f"kernel must have odd sizes (centred on a pixel), got {(h, w)}")
    origin = np.fft.ifftshift(kernel, axes=(-2, -1))
    out = np.fft.ifft2(np.fft.fft2(origin) * ratio).real
    out = np.fft.fftshift(out, axes=(-2, -1))
    return out / out.sum(axis=(-2, -1), keepdims=True)
