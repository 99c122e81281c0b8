"""The everyday pipeline: data in, fitted scene and its products out (used by the CLI
and the demo)."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import numpy as np
from astropy.io import fits
from astropy.table import Table

from .._atomic import atomic_write
from ..frame import Frame
from ..observation import as_observations
from .io import save_scene, write_results
from .measure import catalog as make_catalog
from .measure import deblend


def _write_image(path: Path, array, header=None, name=None, cards=(), dtype=np.float32):
    hdu = fits.PrimaryHDU(np.asarray(array, dtype=dtype), header=None if header is None else header.copy())
    if name:
        hdu.header["EXTNAME"] = name
    for key, value, comment in cards:
        hdu.header[key] = (value, comment)
    atomic_write(path, lambda tmp: hdu.writeto(tmp, overwrite=True))
    return path


def write_products(
    out_dir, scene, frame: Frame, observations, result=None, *, title: str | None = None, segmentation=None,
    header_cards=(),
) -> list[Path]:
    """Write the products of a fit into ``out_dir``:

    - ``model.fits``: model cube in the model frame (with the frame's WCS);
    - ``residual.fits``: data minus model of the first observation (masked pixels 0),
      and minus its fitted background where it has one (`PlaneBackground`);
    - ``background.fits``: that fitted background, where there is one;
    - ``sources.fits``: deblended per-source images of the first observation
      ``(source, band, y, x)`` (each source's model share of the data);
    - ``catalog.ecsv``: the measurement table (`deconvjax.fit.catalog`);
    - ``results.fits``: all of the above in one file (`write_results`);
    - ``scene.eqx``: the fitted scene, one checkpoint file (`load_scene` reads it back);
    - ``panel.png``: observation, model and residual;
    - ``segmentation.fits`` where ``segmentation`` is given: the ``(y, x)`` int32 map of
      the detection (`deconvjax.fit.detection.Detection.segmentation`: 0 background,
      ``k + 1`` the pixels of the ``k``-th source, the catalog's row ``k``).

    ``header_cards``: ``(key, value, comment)`` FITS cards (e.g. how the noise was set,
    `deconvjax.io.ObservationData.noise_cards`) written into every FITS file's primary
    header. Returns the paths written.
    """
    import jax.numpy as jnp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = jnp.asarray(scene.render())
    # Observations with a fitted sky background: the products describe the data less that
    # background (residuals, deblended shares, catalogs), which is written on its own.
    fitted_observations = as_observations(observations)
    skies = [None if o.background is None else np.asarray(o.background_model(model)) for o in fitted_observations]
    observations = tuple(
        o if sky is None else eqx.tree_at(lambda t: (t.data, t.background), o, (o.data - sky, None))
        for o, sky in zip(fitted_observations, skies)
    )
    obs = observations[0]
    header = frame.wcs.to_header() if frame.wcs is not None else None
    seen = np.asarray(obs(model))
    table: Table = make_catalog(scene, frame, observations)
    cards = list(header_cards)
    written = [
        _write_image(out / "model.fits", model, header, "MODEL", cards),
        _write_image(out / "residual.fits", (np.asarray(obs.data) - seen) * (np.asarray(obs.weights) > 0), None, "RESIDUAL",
                     cards),
        _write_image(out / "sources.fits", deblend(scene, obs), None, "DEBLEND", cards),
    ]
    if skies[0] is not None:
        written.append(_write_image(out / "background.fits", skies[0], None, "SKY", cards))
    if segmentation is not None:
        seg = np.asarray(segmentation)
        if seg.shape != tuple(obs.frame_shape):
            raise ValueError(f"segmentation has shape {seg.shape} but the observation is {tuple(obs.frame_shape)}")
        written.append(_write_image(out / "segmentation.fits", seg, header, "SEGMENT", cards, dtype=np.int32))
    cat_path = out / "catalog.ecsv"
    atomic_write(cat_path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
    written.append(cat_path)
    written.append(write_results(out / "results.fits", scene, frame, observations, result, table, header_cards=cards))
    written.extend(save_scene(out / "scene", scene, frame, result))
    png = out / "panel.png"
    from ..plot import plot_scene

    centres = np.stack([np.asarray(table["y"]), np.asarray(table["x"])], axis=1)
    plot_scene(np.asarray(obs.data), seen, png, weights=np.asarray(obs.weights), positions=centres if obs.coords is None else None, title=title)
    written.append(png)
    return written
