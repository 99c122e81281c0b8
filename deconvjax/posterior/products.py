"""Writing a posterior's products (samples, mean, std, residuals and a panel) as FITS files
that keep the WCS and flux unit of the data (`deconvjax.io.write_image`); the ``sample``
command calls `write_posterior`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

__all__ = ["write_posterior"]


def _cards(extra: Mapping) -> list[tuple[str, object, str]]:
    """``{key: value or (value, comment)}`` as ``(key, value, comment)`` cards."""
    out = []
    for k, v in extra.items():
        value, comment = v if isinstance(v, tuple) else (v, "")
        out.append((k, value, comment))
    return out


def write_posterior(
    out,
    result,
    *,
    wcs: WCS | None = None,
    bunit: str | None = None,
    residual_wcs: Sequence[WCS | None] | None = None,
    header: Mapping | None = None,
    panel_data=None,
) -> list[Path]:
    """Write a `PosteriorResult` into the folder ``out``:

    - ``samples.fits`` ``(n, band, y, x)``, ``mean.fits``, ``std.fits``: on the model
      stamp, with its WCS ``wcs`` and ``BUNIT`` ``bunit``;
    - ``residuals.fits``: ``data - A mean`` of each observation on its own pixels, with
      its WCS (``residual_wcs``, one per observation, or None) and ``BUNIT``; one HDU
      ``(observation, band, y, x)`` when all observations have one shape (then with the
      first one's WCS), else one HDU each (``RES1``, ... after the primary);
    - ``panel.png`` (`deconvjax.plot.plot_posterior`) where ``panel_data`` (the first
      observation's ``(band, y, x)`` data) is given.

    ``header``: keywords for every file (values or ``(value, comment)``). ``bunit`` None
    (unknown) writes no BUNIT. Returns the paths written."""
    from astropy.io import fits

    from .._atomic import atomic_write
    from ..io.products import image_header, write_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cards = _cards(dict(header or {}))
    written = [
        write_image(out / "samples.fits", result.samples, wcs=wcs, bunit=bunit,
                    cards=cards + [("COMMENT", "posterior samples", "")]),
        write_image(out / "mean.fits", result.mean, wcs=wcs, bunit=bunit, cards=cards + [("COMMENT", "posterior mean", "")]),
        write_image(out / "std.fits", result.std, wcs=wcs, bunit=bunit,
                    cards=cards + [("COMMENT", "posterior standard deviation", "")]),
    ]
    res = [np.asarray(r, np.float32) for r in result.residuals]
    rwcs = [None] * len(res) if residual_wcs is None else list(residual_wcs)
    if len(rwcs) != len(res):
        raise ValueError(f"residual_wcs: expected one per observation ({len(res)}), got {len(rwcs)}")
    if len({r.shape for r in res}) == 1:
        written.append(write_image(out / "residuals.fits", np.stack(res), wcs=rwcs[0], bunit=bunit, cards=cards))
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(res[0], header=image_header(rwcs[0], bunit, cards=cards))]
                            + [fits.ImageHDU(r, header=image_header(w, bunit), name=f"RES{i}")
                               for i, (r, w) in enumerate(zip(res[1:], rwcs[1:]), 1)])
        written.append(atomic_write(out / "residuals.fits",
                                    lambda tmp: hdul.writeto(tmp, overwrite=True, output_verify="fix")))
    if panel_data is not None:
        from ..plot import plot_posterior, save_figure

        fig = plot_posterior(result, data=panel_data)
        written.append(save_figure(fig, out / "panel.png"))
    return written
