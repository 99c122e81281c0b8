import math

import numpy as np


def integrated_gaussian(shape, center, sigma):
    """Analytic image of a unit-flux round Gaussian integrated over unit pixels."""
    def axis(n, c):
        edges = (np.arange(n + 1) - 0.5 - c) / (math.sqrt(2) * sigma)
        return 0.5 * np.diff([math.erf(e) for e in edges])

    return np.outer(axis(shape[0], center[0]), axis(shape[1], center[1]))


#: Rows of the 100-galaxy COSMOS sample (`real_galaxy_catalog_26_extension_example.fits`).
COSMOS_SAMPLE_SIZE = 100


def cosmos_sample_rows(cosmos_dir, rows, why: str = "") -> np.ndarray:
    """Rows of the catalog in ``cosmos_dir`` holding the given rows of the 100-galaxy COSMOS
    sample: the same rows in that sample, their places in the shipped 21-galaxy subset
    (`deconvjax.data.COSMOS_SUBSET_ROWS`). Skips the test where the folder lacks one of them
    (another sample: point $DECONVJAX_COSMOS at the 100-galaxy one)."""
    import pytest
    from astropy.io import fits

    from deconvjax.data import COSMOS_SUBSET_ROWS

    rows = np.atleast_1d(np.asarray(rows, int))
    catalog = cosmos_dir / "real_galaxy_catalog_26_extension_example.fits"
    n = len(fits.getdata(catalog)) if catalog.is_file() else 0
    if n == COSMOS_SAMPLE_SIZE:
        return rows
    if n == len(COSMOS_SUBSET_ROWS):
        where = {r: k for k, r in enumerate(COSMOS_SUBSET_ROWS)}
        missing = [int(r) for r in rows if int(r) not in where]
        if not missing:
            return np.array([where[int(r)] for r in rows])
        shown = ", ".join(map(str, missing[:5])) + (f", ... ({len(missing)} rows)" if len(missing) > 5 else "")
        pytest.skip(f"needs rows {shown} of the 100-galaxy COSMOS sample, not in the shipped subset "
                    f"{'(' + why + ') ' if why else ''}: set DECONVJAX_COSMOS to that sample's folder")
    pytest.skip(f"needs the 100-galaxy COSMOS sample (real_galaxy_catalog_26_extension_example.fits); "
                f"{cosmos_dir} is another: set DECONVJAX_COSMOS to that sample's folder")
