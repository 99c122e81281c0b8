"""`deconvjax simulate`: write simulated fields (or training stamps) to a folder."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from .._cli_common import progress_option
from .surveys import SURVEYS


def _write_json(path: Path, obj):
    from deconvjax._atomic import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True)))


@click.command("simulate")
@click.option("--survey", type=click.Choice(sorted(SURVEYS)), default="lsst", show_default=True,
              help="Survey preset of the (ground) images.")
@click.option("--n-fields", type=click.IntRange(min=0), default=10, show_default=True,
              help="Number of blended fields (or of stamps with --stamps).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Master seed; field k depends only on (seed, k).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (created).")
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True,
              help="Field (or stamp) side in pixels of the survey.")
@click.option("--n-sources", type=click.IntRange(min=1), default=4, show_default=True,
              help="Sources per field.")
@click.option("--bands", default=None, help="Comma-separated subset of the preset's bands.")
@click.option("--min-sep", type=float, default=0.6, show_default=True,
              help="Minimum separation between neighbours (arcsec).")
@click.option("--max-sep", type=float, default=2.5, show_default=True,
              help="Maximum separation to the nearest placed neighbour (arcsec).")
@click.option("--star-fraction", type=float, default=0.1, show_default=True,
              help="Probability that a source is a star.")
@click.option("--real-fraction", type=float, default=0.0, show_default=True,
              help="Fraction of real COSMOS galaxies (drawn from --cosmos-dir).")
@click.option("--cosmos-dir", "cosmos", type=click.Path(exists=True, file_okay=False), default=None,
              help="COSMOS RealGalaxyCatalog folder of the real galaxies (default: $DECONVJAX_COSMOS, else the "
                   "21 galaxies shipped with deconvjax; `deconvjax data cosmos` fetches GalSim's full sample).")
@click.option("--paired", type=click.Choice(["hst", "euclid"]), default=None,
              help="Also write a space view of each field (same sky, consistent WCS).")
@click.option("--stamps", is_flag=True,
              help="Write isolated-galaxy stamp shards for training priors instead of fields.")
@click.option("--truth-format", type=click.Choice(["ecsv", "fits"]), default="ecsv",
              show_default=True, help="Format of the separate truth-table files.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes for --stamps (shards are identical whatever the count).")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Stamps per shard file for --stamps.")
@click.option("--fits-cubes", is_flag=True,
              help="With --stamps, also write each shard as a FITS (n, band, y, x) cube (the "
                   "layout `deconvjax train-prior --data DIR` reads).")
@progress_option
def simulate(survey, n_fields, seed, out_dir, size, n_sources, bands, min_sep, max_sep,
             star_fraction, real_fraction, cosmos, paired, stamps, truth_format, workers, shard_size,
             fits_cubes, progress):
    """Simulate blended fields with truth and write them as FITS + truth tables.

    Each field k goes to OUT/field_{k:05d}.fits (images, variance, mask, PSF per band, WCS,
    TRUTH table, SOURCES noise-free images) and OUT/truth_{k:05d}.ecsv. With --paired, the
    space view goes to OUT/field_{k:05d}_<space>.fits. Units: electrons over the preset's
    exposure. The same seed gives identical files.
    """
    from deconvjax.io import write_field, write_truth

    from .blends import simulate_fields
    from .paired import simulate_paired
    from .stamps import write_stamp_shards

    band_list = None if bands is None else tuple(b.strip() for b in bands.split(",") if b.strip())
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if stamps:
            write_stamp_shards(out_dir, survey, n_fields, seed=seed, size=size, bands=band_list,
                               real_fraction=real_fraction, progress=progress, cosmos_path=cosmos,
                               workers=workers, shard_size=shard_size, fits_cubes=fits_cubes)
            click.echo(f"wrote {n_fields} stamps to {out_dir}")
            return
        files = []
        common = dict(n_sources=n_sources, min_separation=min_sep, max_separation=max_sep,
                      star_fraction=star_fraction, real_fraction=real_fraction, cosmos_path=cosmos)
        if paired:
            from tqdm.auto import tqdm

            for k in tqdm(range(n_fields), desc=f"simulate {paired}+{survey}",
                          disable=not progress):
                rng = np.random.default_rng(np.random.SeedSequence([seed, k]))
                pf = simulate_paired(paired, survey, seed=rng, ground_shape=(size, size),
                                     ground_bands=band_list, **common)
                for view in (pf.ground, pf.space):
                    view.seed = seed
                    view.truth.meta["field_index"] = k
                    view.truth.meta["seed"] = int(seed)
                    suffix = "" if view is pf.ground else f"_{paired}"
                    fp = write_field(out_dir / f"field_{k:05d}{suffix}.fits", view)
                    tp = write_truth(out_dir / f"truth_{k:05d}{suffix}.{truth_format}",
                                     view.truth)
                    files.append({"field": fp.name, "truth": tp.name, "survey": view.survey})
        else:
            fields = simulate_fields(survey, n_fields, seed=seed, progress=progress,
                                     shape=(size, size), bands=band_list, **common)
            for k, f in enumerate(fields):
                fp = write_field(out_dir / f"field_{k:05d}.fits", f)
                tp = write_truth(out_dir / f"truth_{k:05d}.{truth_format}", f.truth)
                files.append({"field": fp.name, "truth": tp.name, "survey": f.survey})
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    _write_json(out_dir / "manifest.json", {
        "survey": survey, "paired": paired, "n_fields": n_fields, "seed": seed, "size": size,
        "n_sources": n_sources, "bands": band_list, "min_sep": min_sep, "max_sep": max_sep,
        "star_fraction": star_fraction, "real_fraction": real_fraction,
        "units": "electrons over the survey preset exposure", "files": files,
    })
    click.echo(f"wrote {n_fields} field(s) to {out_dir}")
