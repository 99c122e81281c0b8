"""The tutorial notebooks: every notebook listed in the README exists with stored outputs
and no error (cheap, default suite); executing them all is slow (`pytest -m slow`), as is
`python notebooks/make_notebooks.py`, which also writes them."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def listed() -> list[str]:
    """The notebooks the README links to, in order."""
    return re.findall(r"\(notebooks/(\d\d_[\w]+\.ipynb)\)", (ROOT / "README.md").read_text())


def test_readme_lists_every_built_notebook():
    script = (NOTEBOOKS / "make_notebooks.py").read_text()
    built = re.findall(r'^    "(\d\d_\w+\.ipynb)": ', script, re.M)
    assert built and listed() == built
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(listed())


@pytest.mark.parametrize("name", listed())
def test_notebook_has_outputs_and_no_errors(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert code and counts == list(range(1, len(code) + 1)), f"{name}: not executed top to bottom in one run"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{name}: stored error output"
    assert any(o["output_type"] == "display_data" and "image/png" in o.get("data", {}) for o in outputs), \
        f"{name}: no figure"


@pytest.mark.slow
@pytest.mark.parametrize("name", listed())
def test_notebook_executes(name, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    if "cosmos" in name:
        from deconvjax.sims.galaxies import cosmos_dir

        if cosmos_dir() is None:
            pytest.skip("no COSMOS galaxies found (deconvjax.sims.galaxies.cosmos_dir)")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    # Raises CellExecutionError, naming the cell and the error, on any failing cell.
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
