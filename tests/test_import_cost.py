"""What importing deconvjax costs: the heavy optional packages load only where used.

Each check runs in a fresh interpreter (this test process has imported everything already)
and reads its ``sys.modules``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "photutils", "galsim", "diffrax", "scipy.signal", "scipy.stats")


def _loaded(statement: str, names) -> dict[str, bool]:
    code = f"import json, sys\n{statement}\nprint(json.dumps({{n: n in sys.modules for n in {list(names)!r}}}))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_deconvjax_imports_nothing_heavy():
    loaded = _loaded("import deconvjax", (*HEAVY, "jax", "astropy", "deconvjax.fit"))
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


@pytest.mark.parametrize("statement", [
    "import deconvjax.cli",
    "import deconvjax.fit._cli",
    "import deconvjax.fit, deconvjax.model, deconvjax.psf",
])
def test_command_line_and_fit_modules_import_no_plotting_or_detection(statement):
    loaded = _loaded(statement, HEAVY)
    assert not any(loaded.values()), {k for k, v in loaded.items() if v}


def test_lazy_exports_resolve():
    """Every public name of the package resolves, to the object its module defines."""
    import importlib

    import deconvjax

    for name, (module, attribute) in deconvjax._LAZY.items():
        if name in ("diffusion", "posterior", "sims", "em", "load_prior"):
            continue  # their own tests import them
        value = getattr(deconvjax, name)
        expected = importlib.import_module(module)
        assert value is (expected if attribute is None else getattr(expected, attribute)), name
    assert set(deconvjax.__all__) <= set(dir(deconvjax))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        deconvjax.nope  # noqa: B018
