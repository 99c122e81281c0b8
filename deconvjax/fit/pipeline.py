"""The everyday pipeline: data in, fitted scene and its products out (used by the CLI
and the demo)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..frame import Frame
from ..io._atomic import atomic_write
from ..observation import as_observations
from .io import save_scene, write_results
from .measure import catalog as make_catalog
from .measure import deblend


def _write_image(path: Path, array, header=None, name=None):
    hdu = fits.PrimaryHDU(np.asarray(array, dtype=np.float32), header=header)
    if name:
        hdu.header["EXTNAME"] = name
    atomic_write(path, lambda tmp: hdu.writeto(tmp, overwrite=True))
    return path


def write_products(out_dir, scene, frame: Frame, observations, result=None, *, title: str | None = None) -> list[Path]:
    """Write the products of a fit into ``out_dir``:

    - ``model.fits``: model cube in the model frame (with the frame's WCS);
    - ``residual.fits``: data minus model of the first observation (masked pixels 0);
    - ``sources.fits``: deblended per-source images of the first observation
      ``(source, band, y, x)`` (each source's model share of the data);
    - ``catalog.ecsv``: the measurement table (`deconvjax.fit.catalog`);
    - ``results.fits``: all of the above in one file (`write_results`);
    - ``scene.eqx`` + ``scene.json``: the fitted scene (`load_scene` reads it back);
    - ``panel.png``: observation, model and residual.

    Returns the paths written.
    """
    import jax.numpy as jnp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    observations = as_observations(observations)
    obs = observations[0]
    header = frame.wcs.to_header() if frame.wcs is not None else None
    model = jnp.asarray(scene.render())
    seen = np.asarray(obs(model))
    table: Table = make_catalog(scene, frame, observations)
    written = [
        _write_image(out / "model.fits", model, header, "MODEL"),
        _write_image(out / "residual.fits", (np.asarray(obs.data) - seen) * (np.asarray(obs.weights) > 0), None, "RESIDUAL"),
        _write_image(out / "sources.fits", deblend(scene, obs), None, "DEBLEND"),
    ]
    cat_path = out / "catalog.ecsv"
    atomic_write(cat_path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
    written.append(cat_path)
    written.append(write_results(out / "results.fits", scene, frame, observations, result, table))
    written.extend(save_scene(out / "scene", scene, frame, result))
    png = out / "panel.png"
    from ..plot import plot_scene

    centres = np.stack([np.asarray(table["y"]), np.asarray(table["x"])], axis=1)
    plot_scene(np.asarray(obs.data), seen, png, weights=np.asarray(obs.weights), positions=centres if obs.coords is None else None, title=title)
    written.append(png)
    return written
