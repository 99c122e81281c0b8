import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The command line's persistent compilation cache stays off in the test process: tests
# count compilations, and must not read programs cached by an earlier run.
os.environ["DECONVJAX_CACHE_DIR"] = "off"

import pytest  # noqa: E402

from deconvjax.data import cosmos_path  # noqa: E402

#: The real COSMOS galaxies of the tests: $DECONVJAX_COSMOS (e.g. the 100-galaxy sample, or
#: GalSim's full one from `deconvjax data cosmos`), else the 21-galaxy subset shipped in
#: the package, so that the tests run on a fresh clone.
COSMOS = Path(os.environ.get("DECONVJAX_COSMOS") or cosmos_path())


@pytest.fixture(scope="session")
def cosmos_dir():
    """The real COSMOS folder (`COSMOS`); tests that need particular galaxies find them with
    `helpers.cosmos_sample_rows`, which skips where the folder lacks them."""
    if not any(COSMOS.glob("real_galaxy_catalog*.fits")):
        pytest.skip(f"no real_galaxy_catalog*.fits in {COSMOS} ($DECONVJAX_COSMOS or the shipped subset)")
    return COSMOS
