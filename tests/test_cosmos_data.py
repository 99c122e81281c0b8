"""Real data at hand (issue 18, item 6): the COSMOS subset shipped in the package, where
COSMOS is looked for, `deconvjax data cosmos` without a network, no machine paths."""

import re
import tomllib
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from deconvjax.data import COSMOS_SUBSET_ROWS, CosmosDownloadError, cosmos_catalog_file, cosmos_path, download_cosmos

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_subset_is_small_complete_and_attributed():
    d = cosmos_path()
    files = sorted(p.name for p in d.iterdir())
    assert files == sorted(["README.md", "acs_I_unrot_sci_20_cf.fits", "real_galaxy_PSF_images_extension.fits",
                            "real_galaxy_catalog_26_extension_example.fits",
                            "real_galaxy_catalog_26_extension_example_fits.fits", "real_galaxy_images_extension.fits"])
    assert sum(p.stat().st_size for p in d.iterdir()) < 1.5e6
    cat = fits.getdata(cosmos_catalog_file(d))
    assert len(cat) == len(COSMOS_SUBSET_ROWS) == 21
    companion = fits.getdata(d / "real_galaxy_catalog_26_extension_example_fits.fits")
    np.testing.assert_array_equal(companion["IDENT"], cat["IDENT"])
    readme = (d / "README.md").read_text()
    for words in ("Mandelbaum", "Koekemoer", "BlendingToolKit", "MIT", "public HST data"):
        assert words in readme


def test_galsim_reads_the_subset():
    import galsim

    d = cosmos_path()
    cat = galsim.RealGalaxyCatalog(cosmos_catalog_file(d).name, dir=str(d))
    assert cat.nobjects == 21
    for i in (0, 20):
        gal, psf = cat.getGalImage(i).array, cat.getPSFImage(i).array
        assert gal.ndim == 2 and psf.shape == (65, 51) and np.isfinite(gal).all()
    noise = galsim.getCOSMOSNoise(file_name=str(d / "acs_I_unrot_sci_20_cf.fits"))
    assert noise.getVariance() > 0


def test_package_data_carries_the_subset():
    """pyproject's package-data globs cover data/cosmos (a non-editable install copies it)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["deconvjax"]
    assert "data/**/*" in patterns or "data/cosmos/*" in patterns


def test_cosmos_dir_order(monkeypatch, tmp_path):
    from deconvjax.sims.galaxies import cosmos_dir

    monkeypatch.delenv("DECONVJAX_COSMOS", raising=False)
    assert cosmos_dir() == cosmos_path()
    other = tmp_path / "other"
    other.mkdir()
    (other / "real_galaxy_catalog_25.2.fits").write_bytes(b"")
    (other / "real_galaxy_catalog_25.2_fits.fits").write_bytes(b"")
    assert cosmos_catalog_file(other).name == "real_galaxy_catalog_25.2.fits"
    monkeypatch.setenv("DECONVJAX_COSMOS", str(other))
    assert cosmos_dir() == other
    assert cosmos_dir(cosmos_path()) == cosmos_path()  # an explicit path wins
    monkeypatch.setenv("DECONVJAX_COSMOS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="DECONVJAX_COSMOS"):
        cosmos_dir()
    with pytest.raises(FileNotFoundError, match="path="):
        cosmos_dir(tmp_path)


def test_simulate_draws_real_galaxies_from_cosmos_dir(tmp_path):
    from deconvjax.cli import main

    args = ["simulate", "--n-fields", "1", "--size", "32", "--n-sources", "1", "--real-fraction", "1",
            "--star-fraction", "0", "--bands", "i", "--no-progress"]
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "sims"), "--cosmos-dir", str(cosmos_path())])
    assert r.exit_code == 0, r.output
    truth = fits.getdata(tmp_path / "sims" / "field_00000.fits", "TRUTH")
    assert truth["kind"][0] == "real" and 0 <= truth["cosmos_index"][0] < 21
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "bad"), "--cosmos-dir", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "real_galaxy_catalog" in r.output and "Traceback" not in r.output, r.output


def _no_network(monkeypatch):
    import galsim.download_cosmos as gdc

    def refuse(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(gdc, "urlopen", refuse)


def test_download_without_network_is_a_clear_error(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    with pytest.raises(CosmosDownloadError, match="internet"):
        download_cosmos(tmp_path, "23.5")
    with pytest.raises(ValueError, match="sample"):
        download_cosmos(tmp_path, "24")


def test_cli_data_cosmos(monkeypatch, tmp_path):
    from deconvjax.cli import main

    _no_network(monkeypatch)
    r = CliRunner().invoke(main, ["data", "cosmos", "--out", str(tmp_path / "cosmos"), "--sample", "23.5"])
    assert r.exit_code == 1, r.output
    assert "could not download" in r.output and "internet" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["data", "cosmos"])
    assert r.exit_code == 0 and str(cosmos_path()) in r.output


def test_no_machine_specific_paths():
    """No path outside the checkout (the shared data folder beside it, a home or work
    folder) in the package, scripts, benchmarks, tests, notebooks or docs."""
    pattern = re.compile(r"shared/data|shared\" / \"data|\.\./shared|/work/|/home/")
    hits = []
    for folder in ("deconvjax", "scripts", "benchmarks", "tests", "notebooks"):
        for p in (ROOT / folder).rglob("*"):
            if p.suffix in (".py", ".sh", ".md", ".ipynb", ".toml") and p.name != "test_cosmos_data.py":
                hits += [f"{p.relative_to(ROOT)}:{i + 1}" for i, line in enumerate(p.read_text().splitlines())
                         if pattern.search(line)]
    hits += [f"README.md:{i + 1}" for i, line in enumerate((ROOT / "README.md").read_text().splitlines())
             if pattern.search(line)]
    assert not hits, hits
