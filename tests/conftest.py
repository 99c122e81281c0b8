import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
# The command line's persistent compilation cache stays off in the test process: tests
# count compilations, and must not read programs cached by an earlier run.
os.environ["DECONVJAX_CACHE_DIR"] = "off"

import pytest  # noqa: E402

COSMOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cosmos"


@pytest.fixture(scope="session")
def cosmos_dir():
    """The real COSMOS data folder beside the checkout; tests using it skip without it."""
    if not (COSMOS / "real_galaxy_catalog_26_extension_example.fits").exists():
        pytest.skip("../shared/data/cosmos is not present")
    return COSMOS
