"""Host-side geometry: where each observed pixel falls in the model frame.

Everything here runs once, in float64 numpy, when an observation is matched to a model
frame; the result is handed to the device as float32 arrays. Distortions (SIP, TPV, ...)
are whatever astropy's ``all_pix2world`` / ``all_world2pix`` implement.
"""

import numpy as np
from astropy.wcs import WCS, SingularMatrixError


def subpixel_centres(shape: tuple[int, int], subsample: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, x)`` pixel coordinates (float64, shape ``(ny * s, nx * s)`` each) of the
    centres of the ``s x s`` sub-pixels of every pixel of an image of ``shape``."""
    ny, nx = shape
    s = subsample
    sub = (np.arange(s) + 0.5) / s - 0.5
    yy = (np.arange(ny)[:, None] + sub[None, :]).reshape(-1)
    xx = (np.arange(nx)[:, None] + sub[None, :]).reshape(-1)
    return np.meshgrid(yy, xx, indexing="ij")


def pixel_to_pixel(
    src_wcs: WCS, dst_wcs: WCS, y: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(y, x)`` pixel coordinates of ``src_wcs`` through the sky to pixel
    coordinates of ``dst_wcs`` (0-based, distortions included)."""
    world = src_wcs.all_pix2world(np.stack([x.ravel(), y.ravel()], axis=-1), 0)
    pix = dst_wcs.all_world2pix(world, 0, tolerance=1e-10, maxiter=100)
    return pix[:, 1].reshape(y.shape), pix[:, 0].reshape(y.shape)


def warp_grid(
    model_wcs: WCS, obs_wcs: WCS, obs_shape: tuple[int, int], subsample: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Positions in the model frame of the sub-pixels of an observation.

    **Returns:** ``coords`` (float64, ``(ny * s, nx * s, 2)``), the model-frame ``(y, x)``
    of each sub-pixel centre; and ``area`` (float64, ``(ny * s, nx * s)``), the area of each
    sub-pixel in model pixels, ``|det J| / s**2`` with ``J`` the Jacobian of the map
    obs pixel -> model pixel, by central differences.
    """
    y, x = subpixel_centres(obs_shape, subsample)
    my, mx = pixel_to_pixel(obs_wcs, model_wcs, y, x)
    h = 1e-3
    yp, xp = pixel_to_pixel(obs_wcs, model_wcs, y + h, x)
    ym, xm = pixel_to_pixel(obs_wcs, model_wcs, y - h, x)
    dy_dy, dx_dy = (yp - ym) / (2 * h), (xp - xm) / (2 * h)
    yp, xp = pixel_to_pixel(obs_wcs, model_wcs, y, x + h)
    ym, xm = pixel_to_pixel(obs_wcs, model_wcs, y, x - h)
    dy_dx, dx_dx = (yp - ym) / (2 * h), (xp - xm) / (2 * h)
    area = np.abs(dy_dy * dx_dx - dy_dx * dx_dy) / subsample**2
    return np.stack([my, mx], axis=-1), area


def affine_grid(
    model_shape: tuple[int, int],
    model_scale: float,
    obs_shape: tuple[int, int],
    obs_scale: float,
    subsample: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The same as `warp_grid` for frames without a WCS: both grids share their centre
    and axes and differ only in pixel scale."""
    y, x = subpixel_centres(obs_shape, subsample)
    ratio = obs_scale / model_scale
    my = (y - (obs_shape[0] - 1) / 2) * ratio + (model_shape[0] - 1) / 2
    mx = (x - (obs_shape[1] - 1) / 2) * ratio + (model_shape[1] - 1) / 2
    area = np.full(y.shape, ratio**2 / subsample**2)
    return np.stack([my, mx], axis=-1), area


def checked_wcs(
    wcs, pixel_scale: float | None, *, name: str = "wcs", owner: str = "observation"
) -> tuple[WCS | None, float | None]:
    """Validate an optional celestial WCS; return its celestial part and the pixel scale
    (the given one, else the WCS's own, else None).

    Errors start with ``name`` and say whose WCS it is (``owner``: ``"frame"``,
    ``"observation"``): CRVAL, CRPIX and the pixel matrix (CD, or PC times CDELT) must be
    finite and the matrix non-singular, or every position derived from it is NaN."""
    if wcs is None:
        return None, pixel_scale
    what = f"{name} (the {owner}'s WCS)"
    if not isinstance(wcs, WCS):
        raise TypeError(f"{what} must be a celestial astropy.wcs.WCS, got {type(wcs).__name__}")
    try:
        celestial = wcs.celestial if wcs.has_celestial else None
    except SingularMatrixError:
        raise ValueError(f"{what} has a singular pixel matrix (CD, or PC x CDELT)") from None
    except Exception as e:  # wcslib refuses it otherwise (bad projection, ...)
        raise ValueError(f"{what} is invalid: {str(e).strip()}") from None
    if celestial is None:
        raise TypeError(f"{what} must be a celestial astropy.wcs.WCS (RA/Dec axes), got {wcs!r}")
    wcs = celestial
    p = wcs.wcs
    # wcslib stores undefined values as 9.87654321e+107: not finite either.
    finite = lambda a: bool(np.all(np.isfinite(a)) and np.all(np.abs(a) < 1e100))
    matrix = ("CD", p.cd) if p.has_cd() else ("PC", p.get_pc())
    for label, value in (("CRVAL", p.crval), ("CRPIX", p.crpix), matrix, ("CDELT", p.get_cdelt())):
        if not finite(value):
            raise ValueError(f"{what} has a non-finite {label}: {np.asarray(value).tolist()}")
    try:
        m = np.asarray(wcs.pixel_scale_matrix, dtype=np.float64)
    except Exception as e:
        raise ValueError(f"{what} is invalid: {str(e).strip()}") from None
    sv = np.linalg.svd(m, compute_uv=False) if finite(m) else np.zeros(2)
    if not finite(m) or sv.min() <= 1e-12 * sv.max():
        raise ValueError(f"{what} has a singular or non-finite pixel matrix (CD, or PC x CDELT): {m.tolist()}")
    return wcs, pixel_scale_of(wcs) if pixel_scale is None else pixel_scale


def pixel_scale_of(wcs: WCS) -> float:
    """Mean pixel scale of a celestial WCS, in arcsec per pixel, at its reference pixel."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial))) * 3600.0)


#: (RA, Dec) in degrees of the default image centre: the COSMOS field.
COSMOS_CENTER: tuple[float, float] = (150.1, 2.2)


def make_wcs(
    shape: tuple[int, int],
    pixel_scale: float,
    center: tuple[float, float] = COSMOS_CENTER,
    rotation_deg: float = 0.0,
) -> WCS:
    """A gnomonic (TAN) WCS for an image of ``shape`` (ny, nx) with square pixels of
    ``pixel_scale`` arcsec, its centre at sky position ``center`` (RA, Dec in degrees, ICRS),
    and the y axis ``rotation_deg`` degrees east of north (0: north up, east left).

    The sky centre falls on the geometric centre of the image, pixel ((ny-1)/2, (nx-1)/2)
    (0-based). Used by the simulations (`deconvjax.sims`), the posterior's synthetic grids
    and tests."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(center[0]), float(center[1])]
    w.wcs.crpix = [(shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0]  # FITS is 1-based
    s = pixel_scale / 3600.0
    c, t = np.cos(np.radians(rotation_deg)), np.sin(np.radians(rotation_deg))
    # East to the left (RA increases with -x), north up, then rotated.
    w.wcs.cd = s * np.array([[-c, t], [t, c]])
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w
