"""Build and execute the tutorial notebooks (outputs stored in the .ipynb files).

    pip install -e ".[dev]" && python notebooks/make_notebooks.py
"""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent

FORWARD_MODEL = [
    ("markdown", "# The forward model\n\nA scene of batched sources rendered in a model frame and "
     "pushed through the forward operators of a ground-based and a space-based observation of the "
     "same sky: PSF matching, WCS resampling and binning, all in one jitted call."),
    ("code", "import jax\nimport jax.numpy as jnp\nimport matplotlib.pyplot as plt\nimport numpy as np\n\n"
     "import deconvjax as dj\nfrom deconvjax.plot import lupton_rgb"),
    ("markdown", "A model frame at HST-like resolution (0.03 arcsec), three bands, with a WCS."),
    ("code", "frame = dj.Frame(['g', 'r', 'i'], (160, 160), wcs=dj.make_wcs((160, 160), 0.03),\n"
     "                 psf=dj.GaussianPSF(0.03))\n"
     "scene = dj.Scene(frame, [\n"
     "    dj.Source([30., 60., 90.], dj.SersicMorphology(4.0, 10.0, 0.1, 0.05, shape=(81, 81)), (75.3, 82.1)),\n"
     "    dj.Source([40., 30., 20.], dj.SersicMorphology(1.0, 14.0, -0.3, 0.2, shape=(81, 81)), (95.0, 60.0)),\n"
     "    dj.Source([10., 12., 14.], dj.PointMorphology(shape=(21, 21)), (50.2, 110.7)),\n"
     "])\nmodel = scene.render()\nmodel.shape, float(model.sum())"),
    ("markdown", "Two observations: a space view on the model grid, and a ground view at 0.2 arcsec, "
     "rotated by 25 degrees, with Moffat seeing. Both render from the same model in one jitted call."),
    ("code", "space = dj.Observation(np.zeros((3, 160, 160)), frame=frame, psf=dj.GaussianPSF(0.05), rms=0.01,\n"
     "                       wcs=dj.make_wcs((160, 160), 0.03))\n"
     "ground = dj.Observation(np.zeros((3, 24, 24)), frame=frame, psf=dj.MoffatPSF(0.7, 3.5), rms=0.1,\n"
     "                        wcs=dj.make_wcs((24, 24), 0.2, rotation_deg=25.0))\n"
     "render = jax.jit(dj.render_observations)\nseen_space, seen_ground = render(scene, [space, ground])\n"
     "print('flux kept by the space view :', float(seen_space.sum() / model.sum()))\n"
     "print('flux kept by the ground view:', float(seen_ground.sum() / model.sum()))"),
    ("code", "fig, axes = plt.subplots(1, 3, figsize=(12, 4))\n"
     "for ax, img, title in zip(axes, [model, seen_space, seen_ground], ['model frame', 'space view', 'ground view']):\n"
     "    ax.imshow(lupton_rgb(np.asarray(img)), origin='lower')\n"
     "    ax.set_title(title)\n"
     "    ax.axis('off')"),
    ("markdown", "The operator is linear; its adjoint is a VJP. The dot-product test:"),
    ("code", "kx, ky = jax.random.split(jax.random.key(0))\nx = jax.random.normal(kx, (3, 160, 160))\n"
     "y = jax.random.normal(ky, ground.shape)\n"
     "float(jnp.vdot(ground(x), y)), float(jnp.vdot(x, ground.adjoint(y, 3)))"),
    ("markdown", "Gradients of the log-likelihood with respect to every source parameter, batched over "
     "sources: the traced program does not grow with their number."),
    ("code", "grads = jax.grad(lambda s: dj.log_likelihood(s, [space, ground]))(scene)\n"
     "[g.center for g in grads.groups]"),
]


def build(cells, name):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(nb, HERE / name)
    print(f"wrote {HERE / name}")


if __name__ == "__main__":
    build(FORWARD_MODEL, "01_forward_model.ipynb")
