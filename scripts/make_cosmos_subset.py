"""Build the COSMOS subset shipped in ``deconvjax/data/cosmos`` from the 100-galaxy sample.

    python scripts/make_cosmos_subset.py --source /path/to/cosmos [--out deconvjax/data/cosmos]

``--source`` (default: $DECONVJAX_COSMOS) is a folder in GalSim's RealGalaxyCatalog layout
holding ``real_galaxy_catalog_26_extension_example.fits`` (the 100 HST COSMOS F814W galaxies
redistributed by the LSST DESC BlendingToolKit). The subset keeps, unchanged (float64
pixels, same headers, same file names):

* the 20 galaxies the shipped prior was not trained on (catalog rows 4, 9, ..., 99: every
  5th row, ``deconvjax train-prior --cosmos-holdout-every 5``), so that evaluations of the
  shipped prior on the subset are on held-out galaxies;
* row 46, the brightest clumpy galaxy (a lopsided disc) that the structure tests fit;

with their PSFs, the catalog and its ``_fits.fits`` companion rows (GAL_HDU and PSF_HDU
renumbered; IDENT keeps the row number of the 100-galaxy sample), and the ACS noise
correlation function. The output is the same bytes on every run.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
from astropy.io import fits

CATALOG = "real_galaxy_catalog_26_extension_example.fits"
ROWS = sorted(set(range(4, 100, 5)) | {46})

README = """\
# Real HST COSMOS galaxy stamps: the subset shipped with deconvjax ({n} galaxies)

Real Hubble Space Telescope ACS/WFC F814W postage stamps of {n} COSMOS galaxies, each with
its own PSF image, in the RealGalaxyCatalog layout that GalSim reads
(`galsim.RealGalaxyCatalog`, `galsim.RealGalaxy`). `deconvjax.data.cosmos_path()` returns
this folder; `deconvjax.sims.galaxies.cosmos_dir()` falls back to it when neither a path
nor `$DECONVJAX_COSMOS` is given.

| file | what it holds |
| --- | --- |
| `real_galaxy_images_extension.fits` | {n} image HDUs, one galaxy each, 0.03 arcsec/pixel, counts/s |
| `real_galaxy_PSF_images_extension.fits` | {n} PSF HDUs matching the galaxies |
| `real_galaxy_catalog_26_extension_example.fits` | catalog: IDENT, RA, DEC, MAG, BAND, PIXEL_SCALE, NOISE_MEAN, NOISE_VARIANCE, file names and HDU indices |
| `real_galaxy_catalog_26_extension_example_fits.fits` | companion table: flux_radius, HSC g r i z y magnitudes, photometric redshift |
| `acs_I_unrot_sci_20_cf.fits` | the correlation function of the real ACS F814W noise (what `galsim.getCOSMOSNoise` uses) |

Which galaxies: rows {rows} of the 100-galaxy sample (IDENT keeps that row number): the
20 galaxies the shipped prior was held out from (every 5th row), and row 46, a bright
clumpy disc. Pixels and headers are copied unchanged; the files are written by
`scripts/make_cosmos_subset.py` from the 100-galaxy sample. For more galaxies, point
`$DECONVJAX_COSMOS` (or the `path` arguments) at a larger sample, e.g. GalSim's full one
fetched with `deconvjax data cosmos --out DIR`.

## Attribution and licence

Provenance: the COSMOS sample distributed for GalSim (Mandelbaum et al. 2012, 2014;
Koekemoer et al. 2007), as redistributed in the data folder of the LSST DESC
BlendingToolKit repository (MIT licence). The images are public HST data.

- Mandelbaum, R., et al. 2012, MNRAS 420, 1518 (precision simulation of ground-based lensing data using observations from space);
- Mandelbaum, R., et al. 2014, ApJS 212, 5 (the third gravitational lensing accuracy testing (GREAT3) challenge handbook);
- Koekemoer, A. M., et al. 2007, ApJS 172, 196 (the COSMOS survey: HST/ACS observations and data processing);
- LSST DESC BlendingToolKit, https://github.com/LSSTDESC/BlendingToolKit (MIT licence).
"""


def _str(value) -> str:
    return (value.decode() if isinstance(value, bytes) else str(value)).strip()


def _hdu(data, header, primary: bool):
    cls = fits.PrimaryHDU if primary else fits.ImageHDU
    hdu = cls(np.asarray(data))
    for card in header.cards:
        if card.keyword not in hdu.header and card.keyword not in ("XTENSION", "PCOUNT", "GCOUNT", "SIMPLE", "EXTEND"):
            hdu.header.append(card)
    return hdu


def make_subset(source: Path, out: Path, rows=ROWS) -> list[Path]:
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with fits.open(source / CATALOG, memmap=False) as hdul:
        cat = hdul[1].data[np.asarray(rows)].copy()
        cat_hdr = hdul[1].header.copy()
    images = source / _str(cat["GAL_FILENAME"][0])
    psfs = source / _str(cat["PSF_FILENAME"][0])
    written = []
    for name, column in ((images, "GAL_HDU"), (psfs, "PSF_HDU")):
        with fits.open(name, memmap=False) as hdul:
            hdus = [_hdu(hdul[int(i)].data, hdul[int(i)].header, k == 0) for k, i in enumerate(cat[column])]
        fits.HDUList(hdus).writeto(out / name.name, overwrite=True)
        written.append(out / name.name)
    table = fits.BinTableHDU(cat, header=cat_hdr)
    table.data["GAL_HDU"] = np.arange(len(rows))
    table.data["PSF_HDU"] = np.arange(len(rows))
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(out / CATALOG, overwrite=True)
    written.append(out / CATALOG)
    companion = CATALOG.replace(".fits", "_fits.fits")
    with fits.open(source / companion, memmap=False) as hdul:
        extra = hdul[1].data
        keep = np.concatenate([np.flatnonzero(extra["IDENT"] == ident) for ident in cat["IDENT"]])
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(extra[keep], header=hdul[1].header)]).writeto(
            out / companion, overwrite=True)
    written.append(out / companion)
    for noise in sorted({_str(n) for n in cat["NOISE_FILENAME"]}):
        shutil.copyfile(source / noise, out / noise)
        written.append(out / noise)
    (out / "README.md").write_text(README.format(n=len(rows), rows=", ".join(map(str, rows))))
    written.append(out / "README.md")
    return written


def main():
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=os.environ.get("DECONVJAX_COSMOS"),
                        help="the 100-galaxy COSMOS folder (default: $DECONVJAX_COSMOS)")
    parser.add_argument("--out", default=str(here / "deconvjax" / "data" / "cosmos"), help="output folder")
    args = parser.parse_args()
    if not args.source or not (Path(args.source) / CATALOG).is_file():
        parser.error(f"--source: give a folder holding {CATALOG} (or set DECONVJAX_COSMOS)")
    written = make_subset(Path(args.source), Path(args.out))
    total = sum(p.stat().st_size for p in written)
    for p in written:
        print(f"wrote {p} ({p.stat().st_size / 1e3:.0f} kB)")
    print(f"{len(ROWS)} galaxies, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
