"""Data shipped with deconvjax, and GalSim's full COSMOS sample on demand.

- ``data/prior/``: the shipped 32x32 galaxy prior (`deconvjax.load_prior`).
- ``data/cosmos/``: 21 real HST COSMOS F814W galaxies with their PSFs and the ACS noise
  correlation function, in GalSim's RealGalaxyCatalog layout (`cosmos_path`; attribution
  and licence in its README.md). Built by ``scripts/make_cosmos_subset.py``.

Every function of deconvjax that reads COSMOS takes the folder as an argument; where it is
left out, `deconvjax.sims.galaxies.cosmos_dir` picks ``$DECONVJAX_COSMOS``, else the
shipped subset. ``deconvjax data cosmos --out DIR`` (`download_cosmos`) fetches GalSim's
full sample (tens of thousands of galaxies, GB) where the internet is reachable.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

__all__ = ["cosmos_path", "cosmos_catalog_file", "download_cosmos", "CosmosDownloadError",
           "COSMOS_SUBSET_ROWS", "COSMOS_SAMPLES"]

#: Rows of the 100-galaxy COSMOS sample (the RealGalaxyCatalog
#: ``real_galaxy_catalog_26_extension_example.fits`` redistributed by the LSST DESC
#: BlendingToolKit) held by the shipped subset, in its order: every 5th row (the galaxies
#: the shipped prior was not trained on) and row 46 (a bright clumpy disc).
COSMOS_SUBSET_ROWS = (4, 9, 14, 19, 24, 29, 34, 39, 44, 46, 49, 54, 59, 64, 69, 74, 79, 84, 89, 94, 99)

#: Magnitude limits of GalSim's COSMOS training samples (``galsim_download_cosmos -s``).
COSMOS_SAMPLES = ("23.5", "25.2")


def cosmos_path() -> Path:
    """The folder of the COSMOS subset shipped in the package (``deconvjax/data/cosmos``):
    21 galaxies with their PSFs, the catalog, its ``_fits.fits`` companion and the ACS
    noise correlation function, readable by ``galsim.RealGalaxyCatalog``."""
    return Path(str(resources.files("deconvjax") / "data" / "cosmos"))


def cosmos_catalog_file(path: str | os.PathLike) -> Path | None:
    """The RealGalaxyCatalog file of a COSMOS folder (``real_galaxy_catalog*.fits``, not its
    ``_fits.fits`` companion nor GalSim's ``_selection.fits``; the shortest name where
    several are there), or None."""
    p = Path(path)
    if not p.is_dir():
        return None
    cats = [f for f in p.glob("real_galaxy_catalog*.fits")
            if not f.name.endswith(("_fits.fits", "_selection.fits"))]
    return min(cats, key=lambda f: (len(f.name), f.name)) if cats else None


class CosmosDownloadError(RuntimeError):
    """GalSim's COSMOS sample could not be fetched (no network, server error, disk)."""


def download_cosmos(out: str | os.PathLike, sample: str = "25.2", *, force: bool = False) -> Path:
    """Fetch GalSim's COSMOS training sample (``sample`` 23.5 or 25.2, the magnitude limit)
    into ``out`` with GalSim's own downloader (what ``galsim_download_cosmos -d OUT -s
    SAMPLE`` does; no link is made in GalSim's share folder) and return the unpacked
    folder, e.g. ``OUT/COSMOS_25.2_training_sample`` (point ``$DECONVJAX_COSMOS`` at it).

    The 25.2 sample is a 4 GB download (almost 6 GB unpacked). Raises
    `CosmosDownloadError` when the download fails, e.g. with no network."""
    from urllib.error import URLError

    from galsim import download_cosmos as galsim_download

    sample = str(sample)
    if sample not in COSMOS_SAMPLES:
        raise ValueError(f"sample: expected one of {COSMOS_SAMPLES}, got {sample!r}")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    args = ["-d", str(out), "-s", sample, "--nolink", "-q", "-v", "1"] + (["-f"] if force else [])
    url = f"https://zenodo.org/record/3242143/files/COSMOS_{sample}_training_sample.tar.gz"
    try:
        galsim_download.main(args)
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise CosmosDownloadError(
            f"could not download GalSim's COSMOS {sample} sample ({url}): {reason}. Is the internet "
            "reachable from here? Without it, use the shipped subset (deconvjax.data.cosmos_path()) or "
            "copy a COSMOS folder here and set DECONVJAX_COSMOS to it") from None
    folder = out / f"COSMOS_{sample}_training_sample"
    if cosmos_catalog_file(folder) is None:
        raise CosmosDownloadError(f"the download finished but {folder} holds no real_galaxy_catalog*.fits")
    return folder
