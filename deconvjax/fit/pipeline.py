"""The everyday pipeline: data in, fitted scene and its products out (used by the CLI
and the demo)."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import numpy as np
from astropy.table import Table

from .._atomic import atomic_write
from ..frame import Frame
from ..io.products import write_image
from ..observation import as_observations
from .io import save_scene, write_results
from .measure import catalog as make_catalog
from .measure import deblend


def write_products(
    out_dir, scene, frame: Frame, observations, result=None, *, title: str | None = None, segmentation=None,
    header_cards=(), bunit: str | None = None, observation_wcs=None,
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
    header. ``bunit``: the data's unit (the FITS ``BUNIT``, `ObservationData.bunit`),
    written into the image files and used for the catalog's fluxes. ``observation_wcs``:
    the first observation's WCS (default: the frame's, when that observation is on the
    model grid); the files on the observation's pixels (residual, background, sources,
    segmentation) carry it and ``model.fits`` the frame's, so every product opens on
    the sky. Returns the paths written.
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
        # The subtraction on the host: eager jax arithmetic compiles a program of its own.
        o if sky is None else eqx.tree_at(lambda t: (t.data, t.background), o,
                                          (jnp.asarray(np.asarray(o.data) - sky), None))
        for o, sky in zip(fitted_observations, skies)
    )
    obs = observations[0]
    model_wcs = frame.wcs
    if observation_wcs is None and obs.coords is None:
        observation_wcs = frame.wcs  # on the model grid: the same pixels
    seen = np.asarray(obs(model))
    table: Table = make_catalog(scene, frame, observations, result=result, unit=bunit)
    cards = list(header_cards)
    on_obs = dict(wcs=observation_wcs, bunit=bunit, cards=cards)
    written = [
        write_image(out / "model.fits", model, wcs=model_wcs, bunit=bunit, name="MODEL", cards=cards),
        write_image(out / "residual.fits", (np.asarray(obs.data) - seen) * (np.asarray(obs.weights) > 0),
                    name="RESIDUAL", **on_obs),
        write_image(out / "sources.fits", deblend(scene, obs), name="DEBLEND", **on_obs),
    ]
    if skies[0] is not None:
        written.append(write_image(out / "background.fits", skies[0], name="SKY", **on_obs))
    if segmentation is not None:
        seg = np.asarray(segmentation)
        if seg.shape != tuple(obs.frame_shape):
            raise ValueError(f"segmentation has shape {seg.shape} but the observation is {tuple(obs.frame_shape)}")
        written.append(write_image(out / "segmentation.fits", seg, wcs=observation_wcs, name="SEGMENT", cards=cards,
                                   dtype=np.int32))
    cat_path = out / "catalog.ecsv"
    atomic_write(cat_path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
    written.append(cat_path)
    written.append(write_results(out / "results.fits", scene, frame, observations, result, table, header_cards=cards,
                                 bunit=bunit, observation_wcs=[observation_wcs] + [None] * (len(observations) - 1)))
    written.extend(save_scene(out / "scene", scene, frame, result))
    png = out / "panel.png"
    from ..plot import plot_scene

    centres = np.stack([np.asarray(table["y"]), np.asarray(table["x"])], axis=1)
    plot_scene(np.asarray(obs.data), seen, png, weights=np.asarray(obs.weights), positions=centres if obs.coords is None else None, title=title)
    written.append(png)
    return written
