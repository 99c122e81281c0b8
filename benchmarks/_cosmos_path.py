"""The COSMOS folder of the benchmarks: ``--cosmos-dir PATH``, else $DECONVJAX_COSMOS, else
the 21-galaxy subset shipped in the package (`deconvjax.data.cosmos_path`).

The benchmarks that index the 100-galaxy sample by row (the shipped prior's held-out rows
4, 9, ..., 99 and its 80 training rows) need that sample: `require_sample` stops them with
a message naming the option where the folder holds another."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_CATALOG = "real_galaxy_catalog_26_extension_example.fits"
SAMPLE_SIZE = 100

HELP = ("COSMOS RealGalaxyCatalog folder (default: $DECONVJAX_COSMOS, else the 21-galaxy subset shipped in "
        "deconvjax/data/cosmos)")
HELP_FULL = HELP + "; this benchmark needs the 100-galaxy sample (real_galaxy_catalog_26_extension_example.fits)"


def default_cosmos() -> Path:
    from deconvjax.data import cosmos_path

    return Path(os.environ.get("DECONVJAX_COSMOS") or cosmos_path())


def add_cosmos_argument(parser, full: bool = True) -> None:
    parser.add_argument("--cosmos-dir", type=Path, default=None, help=HELP_FULL if full else HELP)


def n_galaxies(path: Path) -> int:
    from astropy.io import fits

    catalog = Path(path) / SAMPLE_CATALOG
    return len(fits.getdata(catalog)) if catalog.is_file() else 0


def require_sample(path: Path) -> Path:
    """``path`` if it holds the 100-galaxy sample, else SystemExit naming --cosmos-dir."""
    n = n_galaxies(path)
    if n != SAMPLE_SIZE:
        raise SystemExit(f"this benchmark needs the 100-galaxy COSMOS sample ({SAMPLE_CATALOG} with 100 rows); "
                         f"{path} holds {n}: give --cosmos-dir or set DECONVJAX_COSMOS")
    return Path(path)
