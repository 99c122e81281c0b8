"""The command line's persistent compilation cache: a second process compiles nothing."""

import os
import subprocess
import sys
import textwrap

import numpy as np
from astropy.io import fits

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    # Programs compiled afresh: JAX records a persistent-cache miss for each (a hit
    # loads the executable instead of compiling it).
    compiles = [0]
    jax.monitoring.register_event_listener(
        lambda event, **kw: compiles.__setitem__(0, compiles[0] + (event == "/jax/compilation_cache/cache_misses")))
    from click.testing import CliRunner
    from deconvjax.cli import main
    result = CliRunner().invoke(main, ["fit", sys.argv[1], "--psf", sys.argv[2], "--variance", sys.argv[3],
                                       "--out", sys.argv[4], "--no-progress", "--max-iter", "30"])
    assert result.exit_code == 0, result.output
    print("COMPILES", compiles[0])
    """
)


def _write_inputs(tmp_path):
    import galsim

    rng = np.random.default_rng(0)
    image = galsim.ImageD(40, 40, scale=0.2)
    psf = galsim.Moffat(beta=3.5, fwhm=0.7)
    galsim.Convolve(galsim.Exponential(half_light_radius=0.5, flux=200.0), psf).drawImage(image)
    data = image.array + rng.normal(0.0, 0.5, image.array.shape)
    psf_image = psf.drawImage(nx=21, ny=21, scale=0.2).array
    paths = [tmp_path / n for n in ("image.fits", "psf.fits", "var.fits")]
    for path, arr in zip(paths, (data, psf_image, np.full(data.shape, 0.25))):
        fits.writeto(path, arr.astype(np.float32))
    return paths


def test_second_process_compiles_nothing(tmp_path):
    image, psf, var = _write_inputs(tmp_path)
    env = dict(os.environ, DECONVJAX_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
    counts = []
    for run in range(2):
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(image), str(psf), str(var), str(tmp_path / f"out{run}")],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        counts.append(int(out.stdout.split("COMPILES")[-1].split()[0]))
    assert counts[0] > 0
    assert counts[1] == 0, counts
    assert any((tmp_path / "cache").iterdir())
