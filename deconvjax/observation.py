"""Observations and their forward operators."""

import warnings
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from astropy.wcs import WCS
from jaxtyping import Array, Complex, Float

from ._checks import is_traced, real_array
from ._fft import good_fft_size
from ._types import Cube
from .frame import Frame
from .likelihood import AbstractLikelihood, GaussianLikelihood
from .model.background import PlaneBackground
from .psf import AbstractPSF, ArrayPSF, difference_kernel_fft
from .psf.matching import GAIN_TOLERANCE, reshape_pixel_response, widest_model_sigma
from .resample import Method, bin_pixels, bspline3_prefilter, interpolate
from .wcs import affine_grid, checked_wcs, warp_grid


def _as_cube(arr, name: str) -> np.ndarray:
    arr = real_array(arr, name, "a (y, x) or (band, y, x) array of real numbers")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be (y, x) or (band, y, x), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); expected at least one band and one pixel")
    return arr


def _weights_from(data, weights, variance, rms) -> np.ndarray:
    given = [n for n, v in (("weights", weights), ("variance", variance), ("rms", rms)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "an observation needs its noise: give exactly one of weights (inverse variance), "
            f"variance or rms; got {given or 'none'}"
        )
    name = given[0]
    value = real_array({"weights": weights, "variance": variance, "rms": rms}[name], name)
    if value.ndim == 0:
        value = np.full(data.shape, float(value))
    value = _as_cube(value, name)
    if value.shape != data.shape:
        raise ValueError(f"{name} has shape {value.shape} but data has shape {data.shape}")
    if np.any(np.isnan(value)):
        raise ValueError(f"{name} contains NaN")
    if np.any(value < 0):
        raise ValueError(f"{name} must be non-negative (0 marks a masked pixel); found negative values")
    if name == "weights":
        if np.any(np.isinf(value)):
            raise ValueError("weights contains inf (zero variance)")
        return value
    var = value if name == "variance" else value**2
    # Zero or infinite variance: no information about that pixel.
    with np.errstate(divide="ignore"):
        return np.where((var > 0) & np.isfinite(var), 1.0 / var, 0.0)


def _light_box(kernel: np.ndarray, tail: float) -> tuple[int, int]:
    """The smallest odd ``(h, w)`` box, centred like `kernel` ``(band, H, W)``, outside of
    which every band has at most a fraction ``tail`` of its absolute light."""
    _, big_h, big_w = kernel.shape
    a = np.abs(kernel) / np.abs(kernel).sum(axis=(-2, -1), keepdims=True)
    cy, cx = big_h // 2, big_w // 2
    yy, xx = np.mgrid[:big_h, :big_w]
    # Chebyshev radius of each pixel from the centre: the box of half-width r is r' <= r.
    # The light outside each half-width, for all of them at once (one bincount per band
    # instead of a masked sum per candidate: observations of many cutouts are built fast).
    r = np.maximum(np.abs(yy - cy), np.abs(xx - cx)).ravel()
    n_r = int(r.max()) + 1
    ring = np.stack([np.bincount(r, weights=band.ravel(), minlength=n_r) for band in a])
    outside = ring[:, ::-1].cumsum(axis=1)[:, ::-1]  # outside[:, k]: light at r' >= k
    for half in range(1, max(cy, cx) + 1):
        if half + 1 >= n_r or np.all(outside[:, half + 1] <= tail):
            return (min(2 * half + 1, big_h), min(2 * half + 1, big_w))
    return big_h, big_w


def _same_wcs(a: WCS, b: WCS) -> bool:
    """Both WCSs describe the same linear celestial grid (no distortion tables)."""
    extras = ("sip", "cpdis1", "cpdis2", "det2im1", "det2im2")
    if any(getattr(w, e, None) is not None for w in (a, b) for e in extras):
        return False
    try:
        # wcsset() derives the internal parameters (astropy runs it lazily before any
        # transform anyway); unset and set copies of one WCS would compare unequal.
        a.wcs.set()
        b.wcs.set()
        return bool(a.wcs.compare(b.wcs, tolerance=1e-12))
    except (AttributeError, TypeError):
        return False


def _pixel_footprint(coords: np.ndarray) -> np.ndarray:
    """The ``(2, 2)`` matrix whose columns are the model-frame ``(y, x)`` steps from one
    (sub-)pixel centre to the next along the observation's y and x axes (medians over
    ``coords`` ``(sy, sx, 2)``); identity-like for a grid of the model's own pixels."""
    step_y = np.diff(coords, axis=0).reshape(-1, 2) if coords.shape[0] > 1 else None
    step_x = np.diff(coords, axis=1).reshape(-1, 2) if coords.shape[1] > 1 else None
    if step_y is None or step_x is None:
        return np.eye(2)
    return np.stack([np.median(step_y, axis=0), np.median(step_x, axis=0)], axis=-1)


def _padding_ladder(box: tuple[int, int], frame_shape: tuple[int, int]) -> tuple[int, int]:
    out = []
    for b, n in zip(box, frame_shape):
        for frac in (8, 4, 2, 1):
            side = n // frac - 1 + (n // frac) % 2  # odd, at most n // frac
            if side >= b:
                break
        out.append(max(side, 1))
    return tuple(out)


class Observation(eqx.Module):
    """Data of a scene seen by one instrument, band set and epoch, together with the
    linear operator that takes a model cube in the model frame to this data's pixels.

    The operator is built once, here, from the model `Frame`:

    1. **band selection**: the model bands this observation saw;
    2. **PSF matching**: convolution with the difference kernel between the model PSF
       and this observation's PSF, precomputed in Fourier space. For an optical PSF
       (`GaussianPSF`, `MoffatPSF`) the target is the PSF integrated over the footprint
       that each resampled point stands for (a whole pixel, or a sub-pixel of step 4,
       rotated and sheared as the WCSs say), so the pixel response is exact at any pixel
       ratio; an effective PSF (`ArrayPSF`) holds its pixel response already;
    3. **resampling**: interpolation (cubic B-spline by default, its prefilter folded into
       step 2; or Keys bicubic, or Lanczos-3) at the model-frame positions of this
       observation's pixels, from a warp grid computed on the host in float64 through
       both WCSs (distortions included), scaled by each pixel's area;
    4. **binning**: when this observation's pixels are coarser than the model's and its
       PSF is optical, each is split into ``s x s`` sub-pixels (``s`` the pixel ratio
       rounded up) that are resampled, then summed (flux is conserved).

    Steps 3-4 are skipped when the observation sits on the model grid. Everything is
    linear in the model cube, so `adjoint` is a VJP.

    **Arguments:**

    - `data`: ``(band, y, x)`` or ``(y, x)`` image(s), in the flux units of the scene.
      NaN or inf pixels are masked (weight 0) with a warning.
    - `frame`: the model `Frame` the scene lives in.
    - `psf`: this observation's PSF, an `AbstractPSF` or an image (an `ArrayPSF` at this
      observation's pixel scale). Wider than the model PSF.
    - `weights` | `variance` | `rms`: the noise, exactly one of them, an array of
      `data`'s shape or a scalar. Weights are inverse variances; 0 masks a pixel.
    - `bands`: names of `data`'s bands, a subset of the frame's (default: the frame's).
    - `wcs`: this observation's celestial WCS; needed when it differs from the frame's
      grid. Without any WCS, both grids share centre and axes.
    - `pixel_scale`: arcsec per pixel (default: from the WCS, else the frame's).
    - `likelihood`: the noise model (default `GaussianLikelihood`).
    - `interpolation`: ``"bspline3"`` (default), ``"bicubic"`` or ``"lanczos3"`` (see
      `deconvjax.resample.interpolate`).
    - `background`: a sky model (`PlaneBackground`: a constant, or a constant and a
      gradient, per band) fitted to this observation's data wherever the likelihood is
      evaluated (profiled out of fits); None (default) for data whose sky is already
      zero. The linear operator itself (`__call__`, `adjoint`) never includes it, and
      posterior samplers ignore it: subtract the sky before sampling.
    - `min_fft_shape`: the least FFT period ``(fy, fx)`` of the PSF matching (default:
      the smallest that keeps the convolution linear); observations given one shape
      stack into one batch whatever their PSF widths.
    - `allow_psf_gain`: accept a frame whose model PSF is wider than this observation's
      PSF at some spatial frequencies (a difference kernel with gain above 1, which
      amplifies noise there); by default that is an error that says which model PSF fits.
    """

    data: Cube
    weights: Cube
    kernel_fft: Complex[Array, "band fy fxr"]
    coords: Float[Array, "sy sx 2"] | None
    area: Float[Array, "sy sx"] | None
    likelihood: AbstractLikelihood
    background: PlaneBackground | None
    bands: tuple[str, ...] = eqx.field(static=True)
    band_index: tuple[int, ...] = eqx.field(static=True)
    frame_shape: tuple[int, int] = eqx.field(static=True)
    n_frame_bands: int = eqx.field(static=True)
    fft_shape: tuple[int, int] = eqx.field(static=True)
    subsample: int = eqx.field(static=True)
    interpolation: str = eqx.field(static=True)

    def __init__(
        self,
        data,
        *,
        frame: Frame,
        psf: AbstractPSF | np.ndarray,
        weights=None,
        variance=None,
        rms=None,
        bands: Sequence[str] | None = None,
        wcs: WCS | None = None,
        pixel_scale: float | None = None,
        likelihood: AbstractLikelihood | None = None,
        interpolation: Method = "bspline3",
        allow_psf_gain: bool = False,
        background: PlaneBackground | None = None,
        min_fft_shape: tuple[int, int] | None = None,
    ):
        if not isinstance(frame, Frame):
            raise TypeError(f"frame must be a Frame, got {type(frame).__name__}")
        data = _as_cube(data, "data")
        weights = _weights_from(data, weights, variance, rms)
        bad = ~np.isfinite(data)
        if bad.any():
            warnings.warn(
                f"data has {int(bad.sum())} NaN or inf pixels; they are masked (weight 0)",
                stacklevel=2,
            )
            data = np.where(bad, 0.0, data)
            weights = np.where(bad, 0.0, weights)

        if bands is None:
            if data.shape[0] != frame.n_bands:
                raise ValueError(
                    f"data has {data.shape[0]} bands but the frame has {frame.n_bands} "
                    f"{frame.bands}; give bands= to say which"
                )
            bands = frame.bands
        bands = tuple(bands)
        if len(bands) != data.shape[0]:
            raise ValueError(f"bands names {len(bands)} bands {bands} but data has {data.shape[0]}")
        missing = [b for b in bands if b not in frame.bands]
        if missing:
            raise ValueError(f"bands {missing} are not in the frame's bands {frame.bands}")

        wcs, pixel_scale = checked_wcs(wcs, pixel_scale, owner="observation")
        pixel_scale = frame.pixel_scale if pixel_scale is None else float(pixel_scale)
        if not (pixel_scale > 0 and np.isfinite(pixel_scale)):
            raise ValueError(f"pixel_scale must be positive and finite, got {pixel_scale}")

        if not isinstance(psf, AbstractPSF):
            psf = ArrayPSF(psf, pixel_scale=pixel_scale)
        elif isinstance(psf, ArrayPSF) and psf.pixel_scale is None:
            psf = ArrayPSF(psf.image, pixel_scale=pixel_scale, oversampling=psf.oversampling, center=tuple(psf.center[0]))
        extent = min(frame.shape) * frame.pixel_scale
        if 2 * psf.radius() > extent:
            raise ValueError(
                f"psf is larger than the model frame: it spans {2 * psf.radius():.3g} arcsec "
                f"but the frame spans {extent:.3g} arcsec; use a larger frame or a cropped PSF"
            )

        # Geometry: where this observation's pixels (or their sub-pixels) fall in the
        # model frame. An effective PSF (an image, which holds the detector's pixel
        # response) is sampled at each pixel's centre; an optical profile is integrated
        # over the pixel, as the sum of ``s x s`` sub-pixels each integrated over its own
        # footprint (set by the PSF-matching kernel below, exact at any pixel ratio).
        ratio = pixel_scale / frame.pixel_scale
        subsample = 1 if psf.effective else max(1, int(np.ceil(ratio - 1e-6)))
        obs_shape = data.shape[1:]
        if (wcs is None) != (frame.wcs is None):
            same_grid = obs_shape == frame.shape and np.isclose(pixel_scale, frame.pixel_scale)
            if not same_grid:
                raise ValueError(
                    "wcs: the observation and the frame must both have a WCS (or neither) "
                    "unless the observation lies on the frame's pixel grid"
                )
            coords = area = None
        else:
            on_grid = subsample == 1 and obs_shape == frame.shape
            if wcs is not None and on_grid and _same_wcs(wcs, frame.wcs):
                # The frame was made from this very grid (the usual cutout case): skip
                # the float64 round trip through the sky, which gives the identity.
                coords = area = None
            else:
                if wcs is not None:
                    coords, area = warp_grid(frame.wcs, wcs, obs_shape, subsample)
                else:
                    coords, area = affine_grid(frame.shape, frame.pixel_scale, obs_shape, pixel_scale, subsample)
                identity = np.stack(np.meshgrid(np.arange(obs_shape[0]), np.arange(obs_shape[1]), indexing="ij"), -1)
                if on_grid and np.abs(coords - identity).max() < 1e-6:
                    coords = area = None
        # The footprint of one (sub-)pixel in the model frame: the (y, x) steps, in model
        # pixels, between neighbouring (sub-)pixel centres (the median over the image, so
        # that a distortion's variation across a cutout averages out).
        footprint = np.eye(2) if coords is None else _pixel_footprint(coords)

        # PSF matching, in the model frame's pixels. Kernels are rendered over the whole
        # frame, then cut to the box that holds all but 1e-6 of their light, rounded up to
        # 1/8, 1/4, 1/2 or all of the frame: the FFTs are padded by that box's radius only, and
        # observations whose PSFs are of similar size share one compiled program.
        ny, nx = frame.shape
        kshape = (ny - 1 + ny % 2, nx - 1 + nx % 2)
        if psf.effective:
            obs_kernel = psf.kernel(kshape, frame.pixel_scale, len(bands), pixel_integrated=False)
        else:
            obs_kernel = psf.kernel(kshape, frame.pixel_scale, len(bands), pixel_integrated=True)
            obs_kernel = reshape_pixel_response(obs_kernel, footprint)
        big, full_kernel = kshape, obs_kernel
        kshape = _padding_ladder(_light_box(obs_kernel, 1e-6), frame.shape)
        # Both boxes are odd and centred on their middle pixel: the small kernel is the
        # big one's centre, renormalised (rendering it again cost as much).
        oy, ox = big[0] // 2 - kshape[0] // 2, big[1] // 2 - kshape[1] // 2
        obs_kernel = obs_kernel[:, oy : oy + kshape[0], ox : ox + kshape[1]]
        obs_kernel = obs_kernel / obs_kernel.sum(axis=(-2, -1), keepdims=True)
        model_kernel = frame.psf_kernel(kshape, pixel_integrated=True)[None]
        # A centred kernel of half-width r spreads a frame of n pixels over n + 2r, and
        # a period of n + r already keeps the wrapped-around part off the n pixels kept:
        # padding by the radius, not the full width (~25% fewer FFT points per side).
        fft_shape = (good_fft_size(ny + kshape[0] // 2), good_fft_size(nx + kshape[1] // 2))
        if min_fft_shape is not None:
            # A larger period is the same operator (more zero padding): observations of
            # different PSF widths then share one shape and stack into one batch.
            fft_shape = (max(fft_shape[0], int(min_fft_shape[0])), max(fft_shape[1], int(min_fft_shape[1])))
        kernel_fft = difference_kernel_fft(model_kernel, obs_kernel, fft_shape)
        gain = float(np.abs(kernel_fft).max())
        if gain > GAIN_TOLERANCE and not allow_psf_gain:
            # A model PSF wider than the observation's at some frequencies: matching would
            # amplify those frequencies (noise, aliasing: checkerboard models), silently.
            widest = widest_model_sigma(full_kernel) * frame.pixel_scale
            raise ValueError(
                f"psf: this observation's PSF is narrower than the frame's model PSF at some spatial "
                f"frequencies (difference kernel gain {gain:.3g} > 1), so fits would amplify noise there. "
                f"Give the Frame a narrower model PSF, e.g. psf=GaussianPSF({widest:.4g}) (sigma in arcsec, "
                f"FWHM {2.3548 * widest:.4g}; deconvjax.psf.model_psf_for picks it for several PSFs), "
                "use finer model pixels, or pass allow_psf_gain=True to force it"
            )
        if coords is not None and interpolation == "bspline3":
            # The B-spline prefilter rides on the PSF-matching product for free: the
            # matched cube comes out as the spline coefficients that are interpolated.
            kernel_fft = kernel_fft * bspline3_prefilter(fft_shape)

        if background is not None and not isinstance(background, PlaneBackground):
            raise TypeError(f"background must be a PlaneBackground or None, got {type(background).__name__}")
        if likelihood is None:
            likelihood = GaussianLikelihood()
        if not isinstance(likelihood, AbstractLikelihood):
            raise TypeError(f"likelihood must be an AbstractLikelihood, got {type(likelihood).__name__}")
        if interpolation not in ("bspline3", "bicubic", "lanczos3"):
            raise ValueError(f"interpolation must be 'bspline3', 'bicubic' or 'lanczos3', got {interpolation!r}")

        # Cast on the host: a device-side float64 -> float32 conversion is a small
        # compiled op per array, which dominated building hundreds of cutouts.
        f32 = np.dtype(jnp.result_type(float))
        self.data = jnp.asarray(data.astype(f32))
        self.weights = jnp.asarray(weights.astype(f32))
        self.kernel_fft = jnp.asarray(kernel_fft.astype(np.complex64))
        self.coords = None if coords is None else jnp.asarray(np.asarray(coords).astype(f32))
        self.area = None if area is None else jnp.asarray(np.asarray(area).astype(f32))
        self.likelihood = likelihood
        self.background = background
        self.bands = bands
        self.band_index = tuple(frame.bands.index(b) for b in bands)
        self.frame_shape = frame.shape
        self.n_frame_bands = frame.n_bands
        self.fft_shape = fft_shape
        self.subsample = subsample
        self.interpolation = interpolation

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape

    def __call__(self, model: Cube) -> Cube:
        """Apply the forward operator: model cube ``(frame band, ny, nx)`` -> this
        observation's ``(band, y, x)``."""
        if model.shape[-2:] != self.frame_shape:
            raise ValueError(f"model has shape {model.shape} but the frame is {self.frame_shape}")
        return self.apply(model) if is_traced((self, model)) else _apply(self, model)

    def apply(self, model: Cube) -> Cube:
        """`__call__` without its shape check and its jit (for use inside traced code
        that has checked shapes already)."""
        ny, nx = self.frame_shape
        # Band selection by static slices: an index-array gather would transpose, in the
        # gradient, into a scatter (slow on CPU), even when it selects every band in order.
        if self.band_index == tuple(range(model.shape[0])):
            x = model
        else:
            x = jnp.stack([model[b] for b in self.band_index])
        x = jnp.fft.irfft2(jnp.fft.rfft2(x, s=self.fft_shape) * self.kernel_fft, s=self.fft_shape)[:, :ny, :nx]
        if self.coords is None:
            return x
        x = jax.vmap(interpolate, in_axes=(0, None, None))(x, self.coords, self.interpolation)
        return bin_pixels(x * self.area, self.subsample)

    def adjoint(self, y: Cube, n_bands: int | None = None) -> Cube:
        """The transpose of the forward operator: this observation's pixels -> a model
        cube of ``n_bands`` bands (default: the model frame's)."""
        nb = self.n_frame_bands if n_bands is None else int(n_bands)
        if nb <= max(self.band_index):
            raise ValueError(
                f"n_bands: this observation sees model band {max(self.band_index)} ({self.bands}); "
                f"a model cube of {nb} bands does not have it"
            )
        _, vjp = jax.vjp(self.__call__, jnp.zeros((nb, *self.frame_shape)))
        return vjp(y)[0]

    def predict(self, model: Cube) -> Cube:
        """What this observation's pixels should hold for the model cube: the forward
        operator's image plus, with a `background`, the background that fits the rest of
        the data best."""
        if self.background is not None and not is_traced((self, model)):
            return _predict(self, model)
        return self._predict(model)

    def _predict(self, model: Cube) -> Cube:
        image = self(model)
        if self.background is None:
            return image
        return image + self.background.solve(self.data - image, self.weights, self.likelihood.whiten)[1]

    def background_model(self, model: Cube) -> Cube:
        """The fitted background ``(band, y, x)`` for the model cube (zeros without a
        `background`)."""
        if self.background is not None and not is_traced((self, model)):
            return _background_model(self, model)
        return self._background_model(model)

    def _background_model(self, model: Cube) -> Cube:
        image = self(model)
        if self.background is None:
            return jnp.zeros_like(image)
        return self.background.solve(self.data - image, self.weights, self.likelihood.whiten)[1]

    def log_likelihood(self, model: Cube) -> Float[Array, ""]:
        """log p(data | model cube), the model cube in the model frame (the background,
        if any, profiled out)."""
        return self.likelihood.log_prob(self.data, self.predict(model), self.weights)

    def chi2(self, model: Cube) -> Float[Array, ""]:
        return self.likelihood.chi2(self.data, self.predict(model), self.weights)

    def _repr_png_(self) -> bytes | None:
        """Jupyter's picture of the observation: its data and noise
        (`deconvjax.plot.plot_observation`); None (text only) for a stack of them."""
        from .plot import figure_png, plot_observation

        if np.ndim(self.data) != 3:
            return None
        return figure_png(plot_observation(self))

    @property
    def n_valid(self) -> Array:
        """The number of unmasked pixels."""
        return jnp.sum(self.weights > 0)


def render_observations(scene, observations: Sequence[Observation]) -> tuple[Cube, ...]:
    """Render a scene once and push it through every observation's operator."""
    args = (scene, as_observations(observations))
    return _render_observations_impl(*args) if is_traced(args) else _render_observations(*args)


def log_likelihood(scene, observations: Sequence[Observation]) -> Float[Array, ""]:
    """Total log-likelihood of all observations given the scene (rendered once)."""
    args = (scene, as_observations(observations))
    return _log_likelihood_impl(*args) if is_traced(args) else _log_likelihood(*args)


def chi2_per_dof(scene, observations: Sequence[Observation], n_params: int = 0) -> Float[Array, ""]:
    """Total chi2 over the unmasked pixels of all observations divided by the degrees
    of freedom, ``n_valid - n_params``."""
    args = (scene, as_observations(observations), n_params)
    return _chi2_per_dof_impl(*args) if is_traced(args) else _chi2_per_dof(*args)


# Jitted copies of the functions above (and of `Observation.__call__`) for eager calls, as
# in a notebook: each is one compiled program cached by the structure of its arguments, so
# a second call with new values compiles nothing. Traced calls use the bodies directly.
def _apply_impl(obs: Observation, model: Cube) -> Cube:
    return obs.apply(model)


def _render_observations_impl(scene, observations: tuple[Observation, ...]) -> tuple[Cube, ...]:
    model = scene.render()
    return tuple(obs(model) for obs in observations)


def _log_likelihood_impl(scene, observations: tuple[Observation, ...]) -> Float[Array, ""]:
    model = scene.render()
    return sum(obs.log_likelihood(model) for obs in observations)


def _chi2_per_dof_impl(scene, observations: tuple[Observation, ...], n_params) -> Float[Array, ""]:
    model = scene.render()
    chi2 = sum(o.chi2(model) for o in observations)
    dof = sum(o.n_valid for o in observations) - n_params
    return chi2 / jnp.maximum(dof, 1)


_apply = eqx.filter_jit(_apply_impl)
_predict = eqx.filter_jit(lambda obs, model: obs._predict(model))
_background_model = eqx.filter_jit(lambda obs, model: obs._background_model(model))
_render_observations = eqx.filter_jit(_render_observations_impl)
_log_likelihood = eqx.filter_jit(_log_likelihood_impl)
_chi2_per_dof = eqx.filter_jit(_chi2_per_dof_impl)


def as_observations(observations) -> tuple[Observation, ...]:
    """One `Observation` or a non-empty sequence of them, all built on the same model
    frame, as a tuple; a clear error otherwise."""
    if isinstance(observations, Observation):
        return (observations,)
    observations = tuple(observations)
    if not observations:
        raise ValueError("observations: expected at least one Observation")
    for i, o in enumerate(observations):
        if not isinstance(o, Observation):
            raise TypeError(f"observations[{i}]: expected an Observation, got {type(o).__name__}")
    frame_shapes = {o.frame_shape for o in observations}
    if len(frame_shapes) != 1:
        raise ValueError(f"observations: built on different model frames {sorted(frame_shapes)}")
    return observations
