"""Build and execute the tutorial notebooks (outputs stored in the .ipynb files).

    pip install -e ".[dev]" && python notebooks/make_notebooks.py [NAME ...]

One cell list per notebook (``NOTEBOOKS``); with no name every notebook is built, else
those whose file name starts with a given name (``02``, ``03_deblend``...). Each notebook
is executed top to bottom in a fresh kernel and written with its outputs; the script
prints each one's wall time (kernel start included), and each notebook prints its own
run time in its last cell. A failing cell stops the script with the error, after writing
the notebook as far as it ran (its error output shows where).

Notebook 06 needs real COSMOS galaxies: `deconvjax.sims.galaxies.cosmos_dir()` finds
them (``DECONVJAX_COSMOS`` or the folder shipped with the package).
"""

import argparse
import sys
import time
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



INTERACTIVE_FIT = [
    ("markdown", '# Interactive scene fitting\n'
     '\n'
     'Fit a blended field, look at the model and the residuals, add a source the catalog missed and\n'
     'remove a spurious one, and refit. The scene is built with **spare source slots** and an **active\n'
     'mask** (`deconvjax.fit.PaddedScene`): adding or removing a source changes which slots are\n'
     'active, not the shape of the arrays, so the refit reuses the compiled fitting program instead of\n'
     'compiling a new one. The timings below show the difference.'),
    ("code", 'import tempfile\n'
     'from pathlib import Path\n'
     '\n'
     'import matplotlib.pyplot as plt\n'
     'import numpy as np\n'
     'from IPython.display import Image, display\n'
     'from scipy.ndimage import gaussian_filter\n'
     '\n'
     'from deconvjax import fit as djfit\n'
     'from deconvjax.plot import lupton_rgb, plot_scene\n'
     'from deconvjax.sims import simulate_field\n'
     '\n'
     'TMP = Path(tempfile.mkdtemp())'),
    ("markdown", '## The data\n'
     '\n'
     "A simulated LSST-like field (GalSim: bulge + disk galaxies, the preset's PSF and noise, in\n"
     'electrons), 64x64 pixels of 0.2 arcsec in g, r, i. The seed fixes the field bit for bit. The\n'
     'galaxies are smooth (no star-forming knots), so that Sersic profiles describe them. The truth\n'
     "table gives every source's position and flux."),
    ("code", "field = simulate_field('lsst', seed=3, shape=(64, 64), n_sources=5, bands=('g', 'r', 'i'),\n"
     '                       star_fraction=0.0, mag_range=(20.5, 23.0), min_separation=1.2, max_separation=3.0,\n'
     '                       knots=False)\n'
     "frame = field.frame()              # the model frame: this image's grid, a narrow model PSF\n"
     'obs = field.to_observation(frame)  # data, inverse-variance weights, PSF, WCS\n'
     'truth = field.truth\n'
     "truth_pos = np.stack([np.asarray(truth['y']), np.asarray(truth['x'])], axis=1)\n"
     "truth['id', 'y', 'x', 'flux_r', 'hlr']"),
    ("markdown", '## A first catalog, with one source missed and one spurious\n'
     '\n'
     'Input catalogs are rarely perfect. We start from the truth positions with one source left out\n'
     '(the *missed* source) and one position added on empty sky (a *spurious* detection, e.g. a cosmic\n'
     'ray or an artefact in another catalog).'),
    ("code", 'dist = np.linalg.norm(truth_pos[:, None] - truth_pos[None], axis=-1) + 1e9 * np.eye(len(truth_pos))\n'
     'MISSED = int(dist.min(axis=1).argmax())   # the most isolated source\n'
     'catalog = np.delete(truth_pos, MISSED, axis=0)\n'
     'yy, xx = np.mgrid[8:56, 8:56]\n'
     'grid = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(float)\n'
     'far = np.linalg.norm(grid[:, None] - truth_pos[None], axis=-1).min(axis=1)\n'
     'spurious = grid[np.argmax(far)]        # the empty spot farthest from every source\n'
     'catalog = np.vstack([catalog, spurious])\n'
     '\n'
     'fig, ax = plt.subplots(figsize=(5, 5))\n'
     "ax.imshow(lupton_rgb(np.asarray(obs.data)), origin='lower')\n"
     "ax.scatter(catalog[:, 1], catalog[:, 0], marker='+', s=120, c='cyan', label='input catalog')\n"
     "ax.scatter(truth_pos[MISSED, 1], truth_pos[MISSED, 0], marker='o', s=200, facecolors='none', edgecolors='orange',\n"
     "           label='missed source')\n"
     "ax.legend(loc='upper right', fontsize=8)\n"
     "ax.set_title('g, r, i image');"),
    ("markdown", '## A scene with spare slots\n'
     '\n'
     '`init_scene` initialises one Sersic source per catalog position (sizes and shapes from second\n'
     'moments, fluxes by least squares). `pad_scene` puts them into a scene of 8 slots: the 5 sources\n'
     'are active, 3 slots are spare (zero flux, not fitted). All sources share one stamp size, so they\n'
     'form a single batch on a source axis.'),
    ("code", "scene0 = djfit.init_scene(frame, obs, catalog, kind='sersic', stamp_size=25)\n"
     'padded = djfit.pad_scene(frame, scene0, n_slots=8)\n'
     'padded.active'),
    ("markdown", '## Fit\n'
     '\n'
     '`fit` minimises chi2 / 2 with Adam inside a compiled loop. The first call compiles that loop\n'
     '(`compilation_count` counts compiled programs); the warning says the model does not reach the\n'
     'noise: a source is missing.'),
    ("code", 'c0 = djfit.compilation_count()\n'
     't = time.perf_counter()\n'
     'fitted, result = djfit.fit(padded, obs, progress=False)\n'
     't_fit = time.perf_counter() - t\n'
     'n_compiled_fit = djfit.compilation_count() - c0\n'
     "print(f'fit: {t_fit:.1f} s, {result.iterations} steps, chi2/pixel {result.chi2_per_pixel:.2f}, '\n"
     "      f'{n_compiled_fit} programs compiled')"),
    ("code", 'def show(p, name, title):\n'
     '    """Data, model and residual (in sigma) of a PaddedScene, with its active sources marked."""\n'
     '    centers = np.asarray(p.scene.groups[0].center)[p.active_indices]\n'
     '    plot_scene(obs.data, obs(p.render()), TMP / name, weights=obs.weights, positions=centers, title=title)\n'
     '    display(Image(filename=str(TMP / name)))\n'
     '\n'
     "show(fitted, 'fit.png', 'first fit')"),
    ("markdown", '## Inspect: find the missed source and the spurious one\n'
     '\n'
     'The missed source stands out in the residual: smooth the residual in units of sigma, sum the\n'
     'bands, and take the highest peak. The spurious source has a flux consistent with zero: its flux\n'
     'signal-to-noise (flux over the noise in an aperture of its size) is the lowest.'),
    ("code", 'resid = (np.asarray(obs.data) - np.asarray(obs(fitted.render()))) * np.sqrt(np.asarray(obs.weights))\n'
     'smooth = gaussian_filter(resid.sum(0), 2.0)\n'
     'peak = np.array(np.unravel_index(np.argmax(smooth), smooth.shape), float)\n'
     "print('residual peak at (y, x) =', peak, '; the missed source is at', truth_pos[MISSED].round(1))\n"
     '\n'
     'g = fitted.scene.groups[0]\n'
     'flux = np.asarray(g.spectrum)                      # total flux per band (Sersic: unit-flux profile)\n'
     'noise = 1 / np.sqrt(np.median(np.asarray(obs.weights), axis=(1, 2)))  # per-pixel sigma per band\n'
     'area = 4 * np.pi * (np.asarray(g.morphology.r_e) ** 2 + 1.0)            # rough aperture, pixels\n'
     'snr = flux.sum(1) / (noise.mean() * np.sqrt(3 * area))\n'
     'for i in fitted.active_indices:\n'
     "    print(f'slot {i}: centre {np.asarray(g.center[i]).round(1)}, flux_r {flux[i, 1]:10.0f}, S/N ~ {snr[i]:7.1f}')\n"
     'bad = int(fitted.active_indices[np.argmin(snr[fitted.active_indices])])\n'
     "print('spurious: slot', bad)"),
    ("markdown", '## Edit the scene and refit\n'
     '\n'
     '`remove_source` deactivates the spurious slot; `add_source` initialises a new Sersic source at\n'
     'the residual peak, on the residual of the fitted sources, in the first free slot. Both return a\n'
     'new `PaddedScene` of the same structure, so the refit (which starts from the fitted values of\n'
     'the other sources) compiles nothing.'),
    ("code", 'edited = djfit.add_source(djfit.remove_source(fitted, bad), obs, peak)\n'
     "print('active slots:', edited.active_indices)\n"
     'c0 = djfit.compilation_count()\n'
     't = time.perf_counter()\n'
     'refitted, result2 = djfit.fit(edited, obs, progress=False)\n'
     't_refit = time.perf_counter() - t\n'
     'n_compiled_refit = djfit.compilation_count() - c0\n'
     "print(f'refit: {t_refit:.1f} s, {result2.iterations} steps, chi2/pixel {result2.chi2_per_pixel:.2f}, '\n"
     "      f'{n_compiled_refit} programs compiled')\n"
     'assert n_compiled_refit == 0\n'
     "show(refitted, 'refit.png', 'after adding the missed source and removing the spurious one')"),
    ("markdown", '## Timings\n'
     '\n'
     'The first fit pays for compiling; the refit runs the compiled program.'),
    ("code", 'fig, ax = plt.subplots(figsize=(5, 3))\n'
     "ax.barh(['first fit\\n(compiles)', 'refit\\n(edited scene)'], [t_fit, t_refit], color=['C1', 'C0'])\n"
     'for y, v in enumerate([t_fit, t_refit]):\n'
     "    ax.text(v, y, f' {v:.1f} s', va='center')\n"
     "ax.set_xlabel('wall time [s]')\n"
     'ax.set_xlim(0, 1.3 * t_fit)\n'
     'fig.tight_layout()'),
    ("markdown", '## The catalog against the truth\n'
     '\n'
     'Each fitted source matched to its nearest true source.'),
    ("code", 'g = refitted.scene.groups[0]\n'
     'idx = refitted.active_indices\n'
     'centers, fluxes = np.asarray(g.center)[idx], np.asarray(g.spectrum)[idx]\n'
     'match = np.linalg.norm(centers[:, None] - truth_pos[None], axis=-1).argmin(axis=1)\n'
     "true_r = np.asarray(truth['flux_r'])[match]\n"
     'for c, f, m, tr in zip(centers, fluxes, match, true_r):\n'
     "    print(f'truth id {m}: offset {np.linalg.norm(c - truth_pos[m]):.2f} px, flux_r fit/true {f[1] / tr:.3f}')\n"
     'fig, ax = plt.subplots(figsize=(4, 4))\n'
     "ax.loglog(true_r, fluxes[:, 1], 'o')\n"
     'lim = [0.5 * true_r.min(), 2 * true_r.max()]\n'
     "ax.plot(lim, lim, 'k:')\n"
     "ax.set_xlabel('true flux r [e-]')\n"
     "ax.set_ylabel('fitted flux r [e-]')\n"
     'fig.tight_layout()'),
]

DEBLEND = [
    ("markdown", '# Deblending a multi-band blended field\n'
     '\n'
     'A blend of galaxies seen in g, r, i. First the MAP answer: a parametric (Sersic) scene fitted to\n'
     "the data. Then the posterior: samples of every source's free-form morphology under the shipped\n"
     'diffusion prior of galaxy shapes (`deconvjax.load_prior()`), each source with its own colour,\n'
     'drawn through the same forward model (PSF, noise) as the fit. From the samples: per-source\n'
     "posterior mean and standard deviation, and a posterior of each source's flux, against the truth."),
    ("code", 'import equinox as eqx\n'
     'import jax\n'
     'import matplotlib.pyplot as plt\n'
     'import numpy as np\n'
     '\n'
     'import deconvjax as dj\n'
     'from deconvjax import fit as djfit\n'
     'from deconvjax.diffusion.samplers import DPMSolver2M\n'
     'from deconvjax.plot import lupton_rgb\n'
     'from deconvjax.posterior.deblend import deblend\n'
     'from deconvjax.psf import ArrayPSF, model_psf_for\n'
     'from deconvjax.sims import simulate_field\n'
     'from deconvjax.wcs import make_wcs'),
    ("markdown", '## The blend\n'
     '\n'
     'Three galaxies within about 2 arcsec of each other in a 40x40 LSST-like cutout (0.2 arcsec\n'
     'pixels, electrons).'),
    ("code", "field = simulate_field('lsst', seed=11, shape=(40, 40), n_sources=3, bands=('g', 'r', 'i'),\n"
     '                       star_fraction=0.0, mag_range=(20.0, 21.5), min_separation=0.8, max_separation=1.8)\n'
     'frame = field.frame()\n'
     'obs = field.to_observation(frame)\n'
     'truth = field.truth\n'
     "centers = np.stack([np.asarray(truth['y']), np.asarray(truth['x'])], axis=1)\n"
     "bands = ['g', 'r', 'i']\n"
     "true_flux = np.stack([np.asarray(truth[f'flux_{b}']) for b in bands], axis=1)\n"
     'fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))\n'
     "axes[0].imshow(lupton_rgb(np.asarray(obs.data)), origin='lower')\n"
     "axes[0].scatter(centers[:, 1], centers[:, 0], marker='+', c='w')\n"
     "axes[0].set_title('observed g, r, i')\n"
     'for k, ax in enumerate(axes[1:]):\n'
     "    ax.imshow(lupton_rgb(field.source_images[k]), origin='lower')\n"
     "    ax.set_title(f'truth: source {k} alone')\n"
     'for ax in axes:\n'
     "    ax.axis('off')\n"
     "truth['id', 'y', 'x', 'flux_g', 'flux_r', 'flux_i', 'hlr', 'blendedness']"),
    ("markdown", '## MAP: a Sersic scene\n'
     '\n'
     'The maximum-likelihood fit of one Sersic profile per source (positions from the truth table, as\n'
     'from a detection catalog).'),
    ("code", "scene = djfit.init_scene(frame, obs, centers, kind='sersic', stamp_size=25)\n"
     'fitted, result = djfit.fit(scene, obs, progress=False)\n'
     'map_flux = np.asarray(fitted.groups[0].spectrum)[np.argsort(fitted.order[0])]\n'
     "print(f'MAP: {result.iterations} steps, chi2/pixel {result.chi2_per_pixel:.2f}')\n"
     "print('MAP flux / true flux (g, r, i):')\n"
     'print((map_flux / true_flux).round(3))'),
    ("code", 'model = np.asarray(obs(fitted.render()))\n'
     'resid = (np.asarray(obs.data) - model) * np.sqrt(np.asarray(obs.weights))\n'
     'fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))\n'
     'stretch = float(np.percentile(np.asarray(obs.data), 99.5)) / 2\n'
     "axes[0].imshow(lupton_rgb(np.asarray(obs.data), stretch=stretch), origin='lower')\n"
     "axes[0].set_title('data')\n"
     "axes[1].imshow(lupton_rgb(model, stretch=stretch), origin='lower')\n"
     "axes[1].set_title('MAP model (Sersic)')\n"
     "im = axes[2].imshow(resid.sum(0) / np.sqrt(3), origin='lower', cmap='RdBu_r', vmin=-5, vmax=5)\n"
     "axes[2].set_title('residual / sigma')\n"
     'fig.colorbar(im, ax=axes[2])\n'
     'for ax in axes:\n'
     "    ax.axis('off')"),
    ("markdown", '## The posterior\n'
     '\n'
     'The shipped prior describes single-band 32x32 galaxy stamps in units of its `flux_scale` (HST\n'
     'counts/s of bright COSMOS galaxies), galaxies of 2.5 to 7 pixels half-light radius. Two\n'
     'adaptations bring this blend to it:\n'
     '\n'
     '- **pixels**: these galaxies have half-light radii of 1 to 1.5 LSST pixels, so we sample them\n'
     '  on a model frame twice as fine (0.1 arcsec pixels, the same sky); the observation\'s operator\n'
     '  resamples and bins it to the LSST pixels (`field.to_observation(fine)`);\n'
     '- **flux units**: one global factor `f` (data divided by `f`, weights multiplied by `f^2`: the\n'
     '  same likelihood in other units); every flux is multiplied by `f` afterwards.\n'
     '\n'
     "Each source's colour (spectrum, normalised to mean 1) is fixed at the MAP's; `deblend` then\n"
     'samples the morphologies given them (MMPS guidance, DPM-Solver++(2M) with 24 steps): 8\n'
     'samples of the whole blend, with an explicit PRNG key.'),
    ("code", 'R = 2\n'
     'fine = dj.Frame(field.bands, (40 * R, 40 * R), pixel_scale=field.pixel_scale / R,\n'
     '                wcs=make_wcs((40 * R, 40 * R), field.pixel_scale / R),\n'
     '                psf=model_psf_for([ArrayPSF(field.psf_images, pixel_scale=field.pixel_scale)], field.pixel_scale / R))\n'
     'obs_fine = field.to_observation(fine)\n'
     "x_fine, y_fine = fine.wcs.world_to_pixel_values(np.asarray(truth['ra']), np.asarray(truth['dec']))\n"
     'centers_fine = np.stack([y_fine, x_fine], axis=1)\n'
     'prior = dj.load_prior()\n'
     'f = float(np.asarray(obs.data).mean(0).max() / R**2 / prior.flux_scale)\n'
     'scaled = eqx.tree_at(lambda o: (o.data, o.weights), obs_fine, (obs_fine.data / f, obs_fine.weights * f**2))\n'
     'spectra = map_flux / map_flux.mean(axis=1, keepdims=True)\n'
     't = time.perf_counter()\n'
     'post = deblend(jax.random.key(0), prior, scaled, centers_fine, spectra=spectra, n_samples=8,\n'
     '               sampler=DPMSolver2M(steps=24))\n'
     "print(f'flux factor f = {f:.3g}; posterior sampling took {time.perf_counter() - t:.0f} s')\n"
     "print('chi2/pixel of the samples:', np.asarray(post.chi2_per_pixel).round(2))"),
    ("markdown", '## Per-source posterior mean and standard deviation\n'
     '\n'
     "Each row: one source's posterior mean (colour image), its pixelwise standard deviation (summed\n"
     "over bands), and one sample. The std is largest where the sources overlap and in the galaxies'\n"
     'cores, where the data constrain the split between sources least.'),
    ("code", 'src = np.asarray(post.sources) * f     # (sample, source, band, h, w) in electrons\n'
     'mean, std = src.mean(0), src.std(0, ddof=1)\n'
     'fig, axes = plt.subplots(3, 3, figsize=(9, 9))\n'
     'for k in range(3):\n'
     '    s = float(np.percentile(mean[k], 99.5)) / 2\n'
     "    axes[k, 0].imshow(lupton_rgb(mean[k], stretch=s), origin='lower')\n"
     "    axes[k, 0].set_title(f'source {k}: mean')\n"
     "    im = axes[k, 1].imshow(std[k].sum(0), origin='lower', cmap='magma')\n"
     "    axes[k, 1].set_title('std (band sum)')\n"
     '    fig.colorbar(im, ax=axes[k, 1], fraction=0.046)\n'
     "    axes[k, 2].imshow(lupton_rgb(src[0, k], stretch=s), origin='lower')\n"
     "    axes[k, 2].set_title('a sample')\n"
     'for ax in axes.ravel():\n'
     "    ax.axis('off')\n"
     'fig.tight_layout()'),
    ("markdown", '## Flux posteriors against the truth\n'
     '\n'
     "The flux of a sample is the sum of its stamp. Histograms: the posterior of each source's r-band\n"
     'flux; black: the truth; dashed: the MAP Sersic flux. Below, every band: posterior mean and std\n'
     'against the truth.'),
    ("code", 'flux_samples = src.sum(axis=(-2, -1))        # (sample, source, band)\n'
     'fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))\n'
     'for k, ax in enumerate(axes):\n'
     "    ax.hist(flux_samples[:, k, 1], bins=6, color='C0', alpha=0.7, label='posterior')\n"
     "    ax.axvline(true_flux[k, 1], color='k', label='truth')\n"
     "    ax.axvline(map_flux[k, 1], color='C1', ls='--', label='MAP Sersic')\n"
     "    ax.set_title(f'source {k}: flux r [e-]')\n"
     'axes[0].legend(fontsize=8)\n'
     'fig.tight_layout()\n'
     'pm, ps = flux_samples.mean(0), flux_samples.std(0, ddof=1)\n'
     'for k in range(3):\n'
     '    for b, name in enumerate(bands):\n'
     "        print(f'source {k} {name}: posterior {pm[k, b]:9.0f} +- {ps[k, b]:7.0f}   truth {true_flux[k, b]:9.0f}   '\n"
     "              f'(truth - mean) / std = {(true_flux[k, b] - pm[k, b]) / ps[k, b]:+.1f}')"),
    ("markdown", 'The spread of the samples reflects what the data allow given the prior and the colours;\n'
     'the colours are fixed at the MAP\'s, not sampled, so the three bands of a source move together\n'
     'and the spread is a lower bound. With 8 samples the std itself is uncertain by about 25 %.\n'
     '\n'
     'The samples\' chi2 per pixel above 1 says that the prior (trained on COSMOS galaxies and\n'
     'simple simulations, not on this survey\'s) and 24 sampler steps do not reproduce these galaxies\n'
     'down to the noise; a prior learned from the survey itself (notebook 07, `deconvjax em`) and more\n'
     'steps tighten the fit.'),
]

MULTI_RESOLUTION = [
    ("markdown", '# Joint multi-resolution and multi-epoch fits\n'
     '\n'
     '**Part 1**: the same field seen from space (Euclid VIS-like: 0.1 arcsec pixels, one broad band,\n'
     'sharp PSF) and from the ground (LSST-like g, r, i: 0.2 arcsec pixels, 0.7 arcsec seeing). One\n'
     'scene on the space grid is fitted to both images at once: the space view pins down positions and\n'
     'shapes, the ground view gives the colours. **Part 2**: one field observed in four epochs, each\n'
     'with its own seeing (a PSF per epoch), fitted jointly.'),
    ("code", 'import matplotlib.pyplot as plt\n'
     'import numpy as np\n'
     '\n'
     'import deconvjax as dj\n'
     'from deconvjax import fit as djfit\n'
     'from deconvjax.plot import lupton_rgb\n'
     'from deconvjax.psf import ArrayPSF, model_psf_for\n'
     'from deconvjax.sims import simulate_epochs, simulate_paired'),
    ("markdown", '## Part 1: space + ground\n'
     '\n'
     '`simulate_paired` draws one source catalog and renders it in both surveys, each with its own\n'
     'WCS, PSF and noise; both views cover the same 8.8 arcsec.'),
    ("code", "space, ground = simulate_paired('euclid', 'lsst', seed=3, ground_shape=(44, 44), n_sources=3,\n"
     "                                ground_bands=('g', 'r', 'i'), star_fraction=0.0, mag_range=(21.0, 23.0),\n"
     '                                min_separation=0.6, max_separation=1.2)\n'
     "print('space image', space.images.shape, f'{space.pixel_scale} arcsec/px;  ground image', ground.images.shape,\n"
     "      f'{ground.pixel_scale} arcsec/px')\n"
     'fig, axes = plt.subplots(1, 2, figsize=(8, 4))\n'
     "axes[0].imshow(space.images[0], origin='lower', cmap='gray_r')\n"
     "axes[0].set_title('space (VIS)')\n"
     "axes[1].imshow(lupton_rgb(ground.images), origin='lower')\n"
     "axes[1].set_title('ground (g, r, i)')\n"
     'for ax in axes:\n'
     "    ax.axis('off')"),
    ("markdown", 'The model frame: the space pixel grid and WCS, the four bands (VIS, g, r, i), and a model PSF\n'
     "that both observations' PSFs can be matched to. Each observation selects its own bands and\n"
     'carries its WCS: the ground operator convolves, resamples to 0.2 arcsec pixels through both WCSs\n'
     'and bins.'),
    ("code", 'psfs = [ArrayPSF(v.psf_images, pixel_scale=v.pixel_scale) for v in (space, ground)]\n'
     'frame = dj.Frame(space.bands + ground.bands, space.shape, pixel_scale=space.pixel_scale, wcs=space.wcs,\n'
     '                 psf=model_psf_for(psfs, space.pixel_scale))\n'
     'obs_space, obs_ground = space.to_observation(frame), ground.to_observation(frame)\n'
     "pos_space = np.stack([np.asarray(space.truth['y']), np.asarray(space.truth['x'])], axis=1)\n"
     't = time.perf_counter()\n'
     "scene = djfit.init_scene(frame, [obs_space, obs_ground], pos_space, kind='sersic', stamp_size=41)\n"
     'joint, res = djfit.fit(scene, [obs_space, obs_ground], progress=False)\n'
     "print(f'joint fit: {time.perf_counter() - t:.0f} s, {res.iterations} steps, chi2/pixel {res.chi2_per_pixel:.2f}')"),
    ("markdown", 'For comparison, the ground image alone, fitted on its own grid.'),
    ("code", 'gframe = ground.frame()\n'
     'gobs = ground.to_observation(gframe)\n'
     "pos_ground = np.stack([np.asarray(ground.truth['y']), np.asarray(ground.truth['x'])], axis=1)\n"
     't = time.perf_counter()\n'
     "gscene = djfit.init_scene(gframe, gobs, pos_ground, kind='sersic', stamp_size=21)\n"
     'alone, gres = djfit.fit(gscene, gobs, progress=False)\n'
     "print(f'ground-only fit: {time.perf_counter() - t:.0f} s, chi2/pixel {gres.chi2_per_pixel:.2f}')"),
    ("code", 'fig, axes = plt.subplots(2, 3, figsize=(11, 7))\n'
     "for row, (o, name) in enumerate([(obs_space, 'space'), (obs_ground, 'ground')]):\n"
     '    data, model = np.asarray(o.data), np.asarray(o(joint.render()))\n'
     '    show = (lambda c: c[0]) if data.shape[0] == 1 else None\n'
     "    for col, (img, title) in enumerate([(data, 'data'), (model, 'joint model')]):\n"
     '        if show:\n'
     "            axes[row, col].imshow(show(img), origin='lower', cmap='gray_r', vmax=np.percentile(data, 99.5))\n"
     '        else:\n'
     "            axes[row, col].imshow(lupton_rgb(img, stretch=float(np.percentile(data, 99.5)) / 2), origin='lower')\n"
     "        axes[row, col].set_title(f'{name}: {title}')\n"
     '    r = (data - model) * np.sqrt(np.asarray(o.weights))\n'
     "    im = axes[row, 2].imshow(r.sum(0) / np.sqrt(len(r)), origin='lower', cmap='RdBu_r', vmin=-5, vmax=5)\n"
     "    axes[row, 2].set_title(f'{name}: residual / sigma')\n"
     '    fig.colorbar(im, ax=axes[row, 2], fraction=0.046)\n'
     'for ax in axes.ravel():\n'
     "    ax.axis('off')\n"
     'fig.tight_layout()'),
    ("markdown", '### What the space view adds\n'
     '\n'
     'Positions (in arcsec on the sky) and ground-band fluxes of the joint fit and of the ground-only\n'
     'fit, against the truth. The space view makes the positions and shapes sharper, which in turn\n'
     'makes the split of the ground flux among blended sources more accurate.'),
    ("code", 'def sky_offsets(scene_fit, frame_wcs, truth):\n'
     '    c = np.asarray(scene_fit.groups[0].center)[np.argsort(scene_fit.order[0])]\n'
     '    ra, dec = frame_wcs.pixel_to_world_values(c[:, 1], c[:, 0])\n'
     "    dra = (ra - np.asarray(truth['ra'])) * np.cos(np.deg2rad(np.asarray(truth['dec'])))\n"
     "    return 3600 * np.hypot(dra, dec - np.asarray(truth['dec']))\n"
     '\n'
     'def ground_flux(scene_fit, first_band):\n'
     '    s = np.asarray(scene_fit.groups[0].spectrum)[np.argsort(scene_fit.order[0])]\n'
     '    return s[:, first_band:first_band + 3]\n'
     '\n'
     "true = np.stack([np.asarray(ground.truth[f'flux_{b}']) for b in ground.bands], axis=1)\n"
     'err_joint = ground_flux(joint, 1) / true - 1\n'
     'err_alone = ground_flux(alone, 0) / true - 1\n'
     'off_joint, off_alone = sky_offsets(joint, space.wcs, space.truth), sky_offsets(alone, ground.wcs, ground.truth)\n'
     'for k in range(len(true)):\n'
     '    print(f\'source {k}: position error {off_alone[k]:.3f}" ground-only, {off_joint[k]:.3f}" joint;  \'\n'
     "          f'|flux error| (g, r, i) ground-only {np.abs(err_alone[k]).round(3)}, joint {np.abs(err_joint[k]).round(3)}')\n"
     'fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))\n'
     'x = np.arange(len(true))\n'
     "axes[0].bar(x - 0.2, off_alone, 0.4, label='ground only')\n"
     "axes[0].bar(x + 0.2, off_joint, 0.4, label='space + ground')\n"
     "axes[0].set_xlabel('source')\n"
     "axes[0].set_ylabel('position error [arcsec]')\n"
     'axes[0].legend()\n'
     'axes[1].bar(x - 0.2, np.abs(err_alone).mean(1), 0.4)\n'
     'axes[1].bar(x + 0.2, np.abs(err_joint).mean(1), 0.4)\n'
     "axes[1].set_xlabel('source')\n"
     "axes[1].set_ylabel('mean |flux error| (g, r, i)')\n"
     'fig.tight_layout()'),
    ("markdown", '## Part 2: four epochs, a PSF per epoch\n'
     '\n'
     '`simulate_epochs` renders one catalog on one pixel grid in four epochs of a quarter of the depth\n'
     'each, each with its own seeing. Every epoch is an `Observation` with its own PSF image; the\n'
     "model frame's PSF is one all four can be matched to."),
    ("code", "epochs = simulate_epochs('lsst', 4, seed=5, shape=(48, 48), n_sources=3, bands=('r',), star_fraction=0.0,\n"
     '                         mag_range=(21.5, 23.0), seeing_scatter=0.15, min_separation=0.8, max_separation=1.6,\n'
     '                         knots=False)\n'
     'def fwhm(psf, scale):\n'
     '    p = psf / psf.sum()\n'
     '    yy, xx = np.indices(p.shape)\n'
     '    cy, cx = (p * yy).sum(), (p * xx).sum()\n'
     '    return 2.355 * np.sqrt(0.5 * (p * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()) * scale\n'
     'seeing = [fwhm(e.psf_images[0], e.pixel_scale) for e in epochs]\n'
     "eframe = dj.Frame(('r',), epochs[0].shape, pixel_scale=epochs[0].pixel_scale, wcs=epochs[0].wcs,\n"
     '                  psf=model_psf_for([ArrayPSF(e.psf_images, pixel_scale=e.pixel_scale) for e in epochs],\n'
     '                                    epochs[0].pixel_scale))\n'
     'eobs = [e.to_observation(eframe) for e in epochs]\n'
     'fig, axes = plt.subplots(1, 4, figsize=(12, 3.2))\n'
     'for ax, e, s in zip(axes, epochs, seeing):\n'
     "    ax.imshow(e.images[0], origin='lower', cmap='gray_r', vmax=np.percentile(epochs[0].images, 99.7))\n"
     '    ax.set_title(f\'epoch {e.truth.meta["epoch"]}: FWHM {s:.2f}"\')\n'
     "    ax.axis('off')"),
    ("code", "epos = np.stack([np.asarray(epochs[0].truth['y']), np.asarray(epochs[0].truth['x'])], axis=1)\n"
     "true_r = np.asarray(epochs[0].truth['flux_r'])\n"
     't = time.perf_counter()\n'
     "escene = djfit.init_scene(eframe, eobs, epos, kind='sersic', stamp_size=25)\n"
     'efit, eres = djfit.fit(escene, eobs, progress=False)\n'
     "print(f'4-epoch joint fit: {time.perf_counter() - t:.0f} s, chi2/pixel {eres.chi2_per_pixel:.2f}')\n"
     'single = []\n'
     'for o in eobs:\n'
     "    s1, _ = djfit.fit(djfit.init_scene(eframe, o, epos, kind='sersic', stamp_size=25), o, progress=False)\n"
     '    single.append(np.asarray(s1.groups[0].spectrum)[:, 0])\n'
     'joint_r = np.asarray(efit.groups[0].spectrum)[:, 0]\n'
     'single = np.array(single)\n'
     'fig, ax = plt.subplots(figsize=(6, 3.4))\n'
     'for e in range(4):\n'
     "    ax.plot(np.arange(3) + 0.1 * (e - 1.5), single[e] / true_r - 1, 'o', alpha=0.6, label=f'epoch {e} alone')\n"
     "ax.plot(np.arange(3), joint_r / true_r - 1, 'k*', ms=14, label='4 epochs jointly')\n"
     "ax.axhline(0, color='gray', lw=0.5)\n"
     'ax.set_xticks(range(3))\n'
     "ax.set_xlabel('source')\n"
     "ax.set_ylabel('flux r: fit / truth - 1')\n"
     'ax.legend(fontsize=7)\n'
     'fig.tight_layout()\n'
     "rms = lambda v: float(np.sqrt(np.mean(v**2)))\n"
     "print(f'single epochs scatter around their mean by {np.std(single / single.mean(0), axis=0).mean():.3f} (noise, seeing)')\n"
     "print(f'rms flux error: single epochs {rms(single / true_r - 1):.3f}, 4 epochs jointly {rms(joint_r / true_r - 1):.3f}')"),
    ("markdown", 'The joint fit uses every epoch\'s photons through its own PSF, so the epoch-to-epoch scatter\n'
     '(noise, seeing) averages out. What error remains is the model\'s: Sersic profiles for bulge + disk\n'
     'galaxies, and the split of flux between blended neighbours, errors that every epoch shares (the\n'
     'epochs agree with each other far better than with the truth) and that more data of the same kind\n'
     'does not remove.'),
]

SURVEY_BATCH = [
    ("markdown", '# A survey batch: hundreds of cutouts in a few compiled calls\n'
     '\n'
     'A survey hands us many small cutouts, each with a few detected sources. `fit_batch` fits them\n'
     'all in one compiled program: every cutout is padded to the same number of source slots (a source\n'
     'mask marks the real ones), the fit step is vmapped over cutouts, and a cutout that has converged\n'
     'hands its slot to the next one. Then the catalog against the truth: flux and position scatter.'),
    ("code", 'import matplotlib.pyplot as plt\n'
     'import numpy as np\n'
     '\n'
     'from deconvjax import fit as djfit\n'
     'from deconvjax.fit import stack\n'
     'from deconvjax.plot import lupton_rgb\n'
     'from deconvjax.sims import simulate_field'),
    ("markdown", '## 300 cutouts\n'
     '\n'
     '40x40 LSST-like g, r, i cutouts (0.2 arcsec pixels) with 1 to 3 galaxies each, i-band magnitudes\n'
     '21 to 24. Cutout `k` is drawn from the seed sequence `[2026, k]`, so any cutout can be\n'
     'regenerated alone. The positions given to the fit are the truth positions plus a 0.3-pixel\n'
     'scatter, standing in for a detection catalog.'),
    ("code", 'N = 300\n'
     't = time.perf_counter()\n'
     'fields, catalogs = [], []\n'
     'for k in range(N):\n'
     '    rng = np.random.default_rng(np.random.SeedSequence([2026, k]))\n'
     '    n_src = int(rng.integers(1, 4))\n'
     "    f = simulate_field('lsst', seed=rng, shape=(40, 40), n_sources=n_src, bands=('g', 'r', 'i'), star_fraction=0.0,\n"
     '                       mag_range=(21.0, 24.0), min_separation=0.6, max_separation=2.0, knots=False)\n'
     "    pos = np.stack([np.asarray(f.truth['y']), np.asarray(f.truth['x'])], axis=1)\n"
     '    fields.append(f)\n'
     '    catalogs.append(pos + rng.normal(0, 0.3, pos.shape))\n'
     "print(f'simulated {N} cutouts in {time.perf_counter() - t:.0f} s; sources per cutout:',\n"
     '      np.bincount([len(c) for c in catalogs])[1:])\n'
     'fig, axes = plt.subplots(2, 8, figsize=(14, 3.8))\n'
     'for ax, f in zip(axes.ravel(), fields):\n'
     "    ax.imshow(lupton_rgb(f.images), origin='lower')\n"
     "    ax.axis('off')\n"
     "fig.suptitle('the first 16 cutouts')\n"
     'fig.tight_layout()'),
    ("markdown", '## Initialise and fit\n'
     '\n'
     'All cutouts share one model frame (same shape, bands, PSF). `init_batch` initialises every\n'
     'cutout (moments, least-squares fluxes) and pads it to 3 sources; `fit_batch` fits them, 8\n'
     'cutouts per slot pool, one pool per CPU core.'),
    ("code", 'frame = fields[0].frame()\n'
     't = time.perf_counter()\n'
     'observations = [f.to_observation(frame) for f in fields]\n'
     "scenes, source_mask = djfit.init_batch(frame, observations, catalogs, n_max=3, kind='sersic', stamp_size=21)\n"
     't_init = time.perf_counter() - t\n'
     't = time.perf_counter()\n'
     'fitted, result = djfit.fit_batch(scenes, stack(observations), source_mask=source_mask, progress=False)\n'
     't_fit = time.perf_counter() - t\n'
     "print(f'observations + initialisation: {t_init:.1f} s; fit_batch: {t_fit:.1f} s for {N} cutouts '\n"
     "      f'({1000 * t_fit / N:.0f} ms per cutout, compiling included)')\n"
     "print(f'converged: {np.mean(result.converged):.0%}, failed: {int(np.sum(result.failed))}, '\n"
     "      f'median chi2/dof {np.median(result.chi2_per_dof):.2f}, median steps {np.median(result.iterations):.0f}')"),
    ("markdown", '## The catalog against the truth\n'
     '\n'
     'One row per real source (the mask drops the padding): the fitted centre and the fitted total\n'
     'flux per band (the Sersic profiles have unit flux, so the spectrum is the flux), next to the\n'
     'true ones.'),
    ("code", 'from astropy.table import Table, vstack\n'
     '\n'
     'rows = []\n'
     'g = fitted.groups[0]\n'
     'centers, spectra = np.asarray(g.center), np.asarray(g.spectrum)\n'
     'for k, f in enumerate(fields):\n'
     '    n = len(f.truth)\n'
     "    rows.append(Table({'cutout': np.full(n, k), 'y_true': f.truth['y'], 'x_true': f.truth['x'],\n"
     "                       'y': centers[k, :n, 0], 'x': centers[k, :n, 1], 'mag_i': f.truth['mag_i'],\n"
     "                       'blendedness': f.truth['blendedness'],\n"
     "                       'flux_r_true': f.truth['flux_r'], 'flux_r': spectra[k, :n, 1]}))\n"
     'cat = vstack(rows)\n'
     "cat['dpos'] = np.hypot(cat['y'] - cat['y_true'], cat['x'] - cat['x_true'])\n"
     "cat['dflux'] = np.asarray(cat['flux_r']) / np.asarray(cat['flux_r_true']) - 1\n"
     'mad = lambda v: 1.4826 * np.median(np.abs(v - np.median(v)))\n'
     'print(f\'{len(cat)} sources; flux r: median bias {np.median(cat["dflux"]):+.3f}, robust scatter {mad(np.asarray(cat["dflux"])):.3f}\')\n'
     'print(f\'position: median offset {np.median(cat["dpos"]):.3f} px, 90th percentile {np.percentile(cat["dpos"], 90):.3f} px\')\n'
     'cat[:8]'),
    ("code", 'fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))\n'
     "sc = axes[0].scatter(cat['mag_i'], cat['dflux'], c=cat['blendedness'], s=8, cmap='viridis', vmin=0, vmax=0.5)\n"
     "axes[0].axhline(0, color='k', lw=0.5)\n"
     'axes[0].set_ylim(-0.5, 0.5)\n'
     "axes[0].set_xlabel('true i magnitude')\n"
     "axes[0].set_ylabel('flux r: fit / truth - 1')\n"
     "fig.colorbar(sc, ax=axes[0], label='blendedness')\n"
     'bins = np.arange(21, 24.5, 0.5)\n'
     "which = np.digitize(cat['mag_i'], bins)\n"
     "scat = [mad(np.asarray(cat['dflux'])[which == i]) if np.sum(which == i) > 5 else np.nan for i in range(1, len(bins))]\n"
     "axes[1].plot(0.5 * (bins[1:] + bins[:-1]), scat, 'o-')\n"
     "axes[1].set_xlabel('true i magnitude')\n"
     "axes[1].set_ylabel('robust flux scatter')\n"
     "axes[2].hist(cat['dpos'], bins=40, range=(0, 2))\n"
     "axes[2].set_xlabel('position offset [px]')\n"
     "axes[2].set_ylabel('sources')\n"
     'fig.tight_layout()'),
    ("markdown", 'Flux errors grow toward faint magnitudes (noise) and with blendedness (the flux split between\n'
     'overlapping sources); the most blended sources carry the outliers. For surveys far larger than\n'
     'memory, `deconvjax fit-survey` runs the same `fit_batch` over Parquet shards on Dask workers\n'
     '(see the README).'),
]

COSMOS_POSTERIOR = [
    ("markdown", '# Posterior deconvolution of a real COSMOS galaxy\n'
     '\n'
     'A real HST galaxy (COSMOS, F814W) is the truth. We make a ground-like view of it (a Moffat\n'
     'seeing disk, coarser pixels, noise), then draw posterior samples of the deconvolved galaxy under\n'
     'the shipped diffusion prior, through the forward model of that view. The samples give a\n'
     'posterior mean and a per-pixel uncertainty; the **coverage** test asks whether the truth falls\n'
     "inside the posterior's credible intervals as often as their level says."),
    ("code", 'import galsim\n'
     'import jax\n'
     'import jax.numpy as jnp\n'
     'import matplotlib.pyplot as plt\n'
     'import numpy as np\n'
     'from astropy.io import fits\n'
     '\n'
     'import deconvjax as dj\n'
     'from deconvjax.data import COSMOS_SUBSET_ROWS\n'
     'from deconvjax.diffusion.data import cosmos_stamps\n'
     'from deconvjax.diffusion.samplers import DPMSolver2M\n'
     'from deconvjax.posterior.deconvolve import deconvolve_images\n'
     'from deconvjax.psf import GaussianPSF\n'
     'from deconvjax.sims.galaxies import COSMOS_CATALOG_FILE, cosmos_dir\n'
     'from deconvjax.wcs import make_wcs'),
    ("markdown", '## The truth: a held-out COSMOS galaxy\n'
     '\n'
     '`cosmos_dir()` finds the real galaxies (the set shipped with the package, or\n'
     '`$DECONVJAX_COSMOS`). The shipped prior was trained on 80 of the 100 galaxies; we take the\n'
     "brightest of the 20 it never saw (`prior.cosmos_heldout`). Like the prior's training stamps, the truth is the whole HST stamp rebinned\n"
     '(flux conserved) to 32x32 pixels of `s = 0.03 n_orig / 32` arcsec, in HST counts/s.'),
    ("code", 'COSMOS = cosmos_dir()\n'
     "assert COSMOS is not None, 'no COSMOS galaxies found: set DECONVJAX_COSMOS'\n"
     'prior = dj.load_prior()\n'
     'cat = fits.getdata(COSMOS / COSMOS_CATALOG_FILE)\n'
     'rgc = galsim.RealGalaxyCatalog(str(COSMOS / COSMOS_CATALOG_FILE))\n'
     "held = set(prior.cosmos_heldout(100).tolist())  # rows of the 100-galaxy sample\n"
     "if len(cat) == len(COSMOS_SUBSET_ROWS):  # the shipped subset: its rows are these rows of the sample\n"
     "    heldout = [i for i, r in enumerate(COSMOS_SUBSET_ROWS) if r in held]\n"
     "else:\n"
     "    heldout = [int(r) for r in prior.cosmos_heldout(len(cat))]\n"
     "row = min(heldout, key=lambda r: cat['MAG'][r])  # the brightest of them\n"
     'n_orig = rgc.getGalImage(row).array.shape[0]\n'
     's = 0.03 * n_orig / 32\n'
     'truth = cosmos_stamps(COSMOS, 32, np.array([row]))[0, 0].astype(np.float64)\n'
     'print(f\'COSMOS row {row}: F814W mag {cat["MAG"][row]:.2f}, truth pixels {s:.3f} arcsec\')'),
    ("markdown", '## A ground-like view\n'
     '\n'
     'The truth drawn by GalSim through a Moffat PSF (beta 3.5, FWHM 4 truth pixels), on 48x48 pixels\n'
     '1.5 times coarser, with white noise of rms 1/20 of the blurred peak (peak S/N 20). The PSF is\n'
     "given as an image at the view's pixels, as for real data."),
    ("code", "gal = galsim.InterpolatedImage(galsim.Image(truth, scale=s), x_interpolant='lanczos5')\n"
     'moffat = galsim.Moffat(beta=3.5, fwhm=4 * s)\n'
     'view_scale = 1.5 * s\n'
     'clean = galsim.Convolve(gal, moffat).drawImage(nx=48, ny=48, scale=view_scale).array\n'
     'psf_img = moffat.drawImage(nx=31, ny=31, scale=view_scale).array\n'
     'rms = clean.max() / 20\n'
     'data = clean + rms * np.random.default_rng(0).normal(size=clean.shape)\n'
     'fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))\n'
     "for ax, img, title in zip(axes, [truth, data, psf_img], ['truth (HST)', 'ground-like view', 'PSF']):\n"
     "    ax.imshow(img, origin='lower', cmap='magma')\n"
     '    ax.set_title(title)\n'
     "    ax.axis('off')"),
    ("markdown", '## Posterior samples\n'
     '\n'
     "`deconvolve_images` takes the image as it comes: it measures the galaxy's flux to bring the data\n"
     "into the prior's flux range (undone on output), places the prior's 32x32 grid on the data\n"
     "through the WCS resampling, and samples with MMPS guidance. Here we set the grid's pixel scale\n"
     "to the truth's, so that the samples can be compared with it pixel by pixel. 32 samples,\n"
     'DPM-Solver++(2M) with 24 steps, PRNG key 0.'),
    ("code", 't = time.perf_counter()\n'
     'res, setup = deconvolve_images(jax.random.key(0), prior, [data], [psf_img], [rms**2], pixel_scales=[view_scale],\n'
     '                               grid_scale=s, n_samples=32, sampler=DPMSolver2M(steps=24))\n'
     "print(f'{time.perf_counter() - t:.0f} s; flux factor {setup.flux_factor:.3g}; '\n"
     "      f'chi2/pixel of the samples {float(np.mean(res.chi2_per_pixel)):.2f}')\n"
     'for note in setup.notes + setup.warnings:\n'
     "    print(' -', note)"),
    ("markdown", "## On the truth's grid\n"
     '\n'
     "The posterior describes the galaxy seen through the model frame's narrow PSF; the HST truth has\n"
     "its own PSF and noise. To compare them fairly, both are pushed to the truth's 32x32 grid through\n"
     'the same Gaussian (a little wider than the model PSF), exactly as `benchmarks/posterior.py`\n'
     'does.'),
    ("code", 'sigma = setup.model_psf_sigma * 1.05\n'
     'truth_wcs = make_wcs((32, 32), s)\n'
     'def to_truth_grid(cubes, frame):\n'
     '    o = dj.Observation(np.zeros((1, 32, 32)), frame=frame, psf=GaussianPSF(sigma), rms=1.0, wcs=truth_wcs,\n'
     '                       allow_psf_gain=True)\n'
     '    return np.asarray(jax.vmap(o)(jnp.asarray(cubes, jnp.float32)), np.float64)[:, 0]\n'
     '\n'
     'pad = setup.embed.pad\n'
     'samples = np.pad(np.asarray(res.samples), ((0, 0), (0, 0), (pad, pad), (pad, pad)))\n'
     'post = to_truth_grid(samples, setup.frame)                      # (sample, 32, 32)\n'
     "tiny = dj.Frame(['b0'], (32, 32), wcs=truth_wcs, psf=GaussianPSF(0.05 * s))\n"
     'ref = to_truth_grid(truth[None, None], tiny)[0]\n'
     'mean, std = post.mean(0), post.std(0, ddof=1)\n'
     'z = (ref - mean) / std\n'
     'vmax = ref.max()\n'
     'fig, axes = plt.subplots(2, 4, figsize=(13, 6.4))\n'
     "image = dict(cmap='magma', vmin=0, vmax=vmax)\n"
     "panels = [(ref, 'truth (smoothed)', image), (mean, 'posterior mean', image),\n"
     "          (std, 'posterior std', dict(cmap='viridis')), (z, '(truth - mean) / std', dict(cmap='RdBu_r', vmin=-3, vmax=3)),\n"
     "          (post[0], 'sample 1', image), (post[1], 'sample 2', image), (post[2], 'sample 3', image),\n"
     "          (ref - mean, 'truth - mean', dict(cmap='RdBu_r', vmin=-np.abs(ref - mean).max(), vmax=np.abs(ref - mean).max()))]\n"
     'for ax, (img, title, style) in zip(axes.ravel(), panels):\n'
     "    im = ax.imshow(img, origin='lower', **style)\n"
     '    fig.colorbar(im, ax=ax, fraction=0.046)\n'
     '    ax.set_title(title)\n'
     "    ax.axis('off')\n"
     'fig.tight_layout()'),
    ("markdown", '## Coverage\n'
     '\n'
     'For each level `p`, the share of pixels whose truth lies within the central `p` credible\n'
     'interval of the samples (their quantiles). A calibrated posterior follows the diagonal; below\n'
     'it, the intervals are too narrow (overconfident); above it, too wide. Two pixel sets: the galaxy (smoothed truth above 5 % of its\n'
     "peak) and the whole stamp. Caveats: one galaxy's pixels are correlated, so this is a check, not\n"
     'a test; 32 samples resolve levels to a few per cent; and the truth carries HST noise (small\n'
     'after smoothing) that no posterior of the noiseless galaxy covers.'),
    ("code", 'levels = np.linspace(0.05, 0.95, 19)\n'
     'galaxy = ref > 0.05 * ref.max()\n'
     'def coverage(mask):\n'
     '    out = []\n'
     '    for p in levels:\n'
     '        lo, hi = np.quantile(post, [0.5 - p / 2, 0.5 + p / 2], axis=0)\n'
     '        out.append(np.mean(((ref >= lo) & (ref <= hi))[mask]))\n'
     '    return np.array(out)\n'
     'cov_gal, cov_all = coverage(galaxy), coverage(np.ones_like(galaxy))\n'
     'fig, ax = plt.subplots(figsize=(4.5, 4.2))\n'
     "ax.plot(levels, cov_gal, 'o-', label=f'galaxy pixels ({galaxy.sum()})')\n"
     "ax.plot(levels, cov_all, 's-', label='all 1024 pixels')\n"
     "ax.plot([0, 1], [0, 1], 'k:')\n"
     "ax.set_xlabel('credible level')\n"
     "ax.set_ylabel('share of truth pixels inside')\n"
     'ax.legend(fontsize=8)\n'
     'fig.tight_layout()\n'
     "print(f'68% intervals hold {np.interp(0.68, levels, cov_gal):.0%} of the galaxy pixels, '\n"
     "      f'95% intervals {np.interp(0.95, levels, cov_gal):.0%}')\n"
     "print(f'flux: truth {truth.sum():.3f}, posterior {post.sum((1, 2)).mean():.3f} +- {post.sum((1, 2)).std(ddof=1):.3f} counts/s')"),
]

EM_SURVEY = [
    ("markdown", "# EM: a galaxy prior learned from the survey's own cutouts\n"
     '\n'
     'A diffusion prior can be learned from noisy, PSF-blurred survey cutouts alone, without clean\n'
     'training images, by expectation-maximisation (Rozet et al. 2024): the **E-step** draws a\n'
     "posterior sample of every cutout's deconvolved galaxy under the current prior, through that\n"
     "cutout's own PSF and noise; the **M-step** trains the prior (denoising score matching) on those\n"
     'samples. EM starts from a Gaussian prior fitted to the cutouts in closed form. Everything here\n'
     'is small, a couple of minutes on two CPU cores: 128 cutouts of 16x16 pixels, a tiny U-Net, two\n'
     'laps. Real runs use thousands of cutouts and more laps (`deconvjax em`, `benchmarks/em.py`).'),
    ("code", 'import tempfile\n'
     'from pathlib import Path\n'
     '\n'
     'import galsim\n'
     'import jax\n'
     'import matplotlib.pyplot as plt\n'
     'import numpy as np\n'
     'from IPython.display import Image, display\n'
     '\n'
     'from deconvjax.diffusion.samplers import DPMSolver2M\n'
     'from deconvjax.diffusion.train import TrainConfig\n'
     'from deconvjax.em import Cutouts, EMConfig, estep, load_gaussian_prior, run_em'),
    ("markdown", '## Survey cutouts\n'
     '\n'
     'LSST-like i-band cutouts (0.2 arcsec pixels): one galaxy each (an exponential disk plus a de\n'
     'Vaucouleurs bulge of random size, shape and flux), seen through its own Moffat seeing (FWHM\n'
     '0.6-0.9 arcsec, a PSF image per cutout), with white noise. For the evaluation we also keep each\n'
     'galaxy as the E-step models it: seen through the narrow model PSF (a Gaussian of sigma 0.5\n'
     'pixel). 64 cutouts train, 64 are held out.'),
    ("code", 'SIZE, PSF_SIZE, SCALE, NOISE = 16, 11, 0.2, 1.0\n'
     'def simulate(n, seed):\n'
     '    rng = np.random.default_rng(seed)\n'
     '    data, psfs, truths = [], [], []\n'
     '    model_psf = galsim.Gaussian(sigma=0.5 * SCALE)\n'
     '    for _ in range(n):\n'
     '        hlr, bulge = rng.uniform(0.3, 0.8), rng.uniform(0.0, 0.6)\n'
     '        gal = galsim.Add(galsim.Exponential(half_light_radius=hlr).withFlux(1 - bulge),\n'
     '                         galsim.DeVaucouleurs(half_light_radius=0.5 * hlr).withFlux(bulge))\n'
     '        e = rng.uniform(0, 0.5)\n'
     '        gal = gal.shear(e1=e * np.cos(a := rng.uniform(0, np.pi)), e2=e * np.sin(a)).withFlux(rng.lognormal(np.log(300), 0.4))\n'
     '        psf = galsim.Moffat(beta=3.5, fwhm=rng.uniform(0.6, 0.9))\n'
     '        clean = galsim.Convolve(gal, psf).drawImage(nx=SIZE, ny=SIZE, scale=SCALE).array\n'
     '        data.append(clean + NOISE * rng.normal(size=clean.shape))\n'
     '        p = psf.drawImage(nx=PSF_SIZE, ny=PSF_SIZE, scale=SCALE).array\n'
     '        psfs.append(p / p.sum())\n'
     "        truths.append(galsim.Convolve(gal, model_psf).drawImage(nx=SIZE, ny=SIZE, scale=SCALE, method='no_pixel').array)\n"
     '    return np.array(data)[:, None], np.array(psfs)[:, None], np.array(truths)\n'
     '\n'
     'data, psfs, truths = simulate(128, seed=0)\n'
     "train = Cutouts.from_arrays(data[:64], psfs[:64], rms=NOISE, bands=('i',))\n"
     "heldout = Cutouts.from_arrays(data[64:], psfs[64:], rms=NOISE, bands=('i',))\n"
     'fig, axes = plt.subplots(2, 8, figsize=(13, 3.6))\n'
     'for k in range(8):\n'
     "    axes[0, k].imshow(data[k, 0], origin='lower', cmap='magma')\n"
     "    axes[1, k].imshow(truths[k], origin='lower', cmap='magma')\n"
     "axes[0, 0].set_ylabel('cutout')\n"
     "axes[1, 0].set_ylabel('truth')\n"
     'for ax in axes.ravel():\n'
     '    ax.set_xticks([])\n'
     '    ax.set_yticks([])'),
    ("markdown", '## Run EM\n'
     '\n'
     '`EMConfig`: 2 laps after the Gaussian start (2 laps of closed-form Gaussian EM), one posterior\n'
     'sample per cutout per lap with 64 sampler steps, and an M-step of 600 training steps per lap of a\n'
     "small U-Net (two levels of 16 and 32 channels), warm-started from the last lap. The M-step trains at noise\n"
     "levels around the images' own scale (`sigma_center`), and when the new network's samples do not\n"
     "reproduce the images it trained on (`mstep_flux_ratio` outside 1/1.5-1.5) it trains another round,\n"
     "up to `mstep_rounds` (3), and warns if still off. The run's folder holds every lap's\n"
     'prior, samples and diagnostics; rerunning the same call resumes it. The seed fixes every key.'),
    ("code", "out = Path(tempfile.mkdtemp()) / 'em'\n"
     'config = EMConfig(laps=2, chunk=64, n_samples=1, sampler_steps=64, gaussian_laps=2, n_prior_samples=16, seed=0,\n'
     '                  train=TrainConfig(image_size=SIZE, bands=1, channels=(16, 32), emb_dim=16, batch_size=16, steps=600,\n'
     '                                    steps_per_call=100, checkpoint_every=300, warmup_steps=20,\n'
     '                                    sigma_center=1.0, sigma_spread=1.5))\n'
     't = time.perf_counter()\n'
     'run = run_em(train, out, config, progress=False)\n'
     "print(f'EM: {time.perf_counter() - t:.0f} s')\n"
     'for rec in run.history:\n'
     '    print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()\n'
     "           if k in ('lap', 'estep_chi2_per_pixel', 'estep_seconds', 'mstep_seconds', 'mstep_rounds',\n"
     "                    'mstep_flux_ratio')})"),
    ("markdown", "The run's own diagnostics (`diagnostics.png`: per-lap E-step chi2, the prior's sample\n"
     "statistics, wall times) and the last lap's prior samples:"),
    ("code", "display(Image(filename=str(out / 'diagnostics.png'), width=700))\n"
     "display(Image(filename=str(out / f'lap_{config.laps:03d}' / 'prior_samples.png'), width=500))"),
    ("markdown", '## Did the prior improve?\n'
     '\n'
     'On the 64 held-out cutouts: posterior means (2 samples each, drawn with the E-step\'s compiled\n'
     'program: same chunk size and sampler as the run) under the Gaussian start and under\n'
     "the EM prior, against the truth. PSNR: the truth's peak over the rms error, in dB (higher is\n"
     'better).'),
    ("code", 'def posterior_means(prior, key):\n'
     '    draws = [estep(jax.random.fold_in(key, i), prior, heldout, sampler=DPMSolver2M(steps=config.sampler_steps),\n'
     '                   n_samples=config.n_samples, chunk=config.chunk, progress=False).samples for i in range(2)]\n'
     '    return np.concatenate([np.asarray(d)[:, :, 0, 0] for d in draws], axis=1).mean(1) * float(prior.flux_scale)\n'
     '\n'
     'def psnr(est, ref):\n'
     '    return 10 * np.log10(ref.max(axis=(1, 2)) ** 2 / np.mean((est - ref) ** 2, axis=(1, 2)))\n'
     '\n'
     'ref = truths[64:]\n'
     "start = load_gaussian_prior(out / 'lap_000' / 'gaussian.eqx')\n"
     'mean_start = posterior_means(start, jax.random.key(1))\n'
     'mean_em = posterior_means(run.prior, jax.random.key(1))\n'
     'p_start, p_em = psnr(mean_start, ref), psnr(mean_em, ref)\n'
     "print(f'PSNR: Gaussian start {p_start.mean():.2f} dB, EM prior {p_em.mean():.2f} dB '\n"
     "      f'(EM better on {np.mean(p_em > p_start):.0%} of the held-out cutouts)')\n"
     'fig, axes = plt.subplots(4, 6, figsize=(10, 7))\n'
     'for k in range(6):\n'
     "    for r, (img, name) in enumerate([(data[64 + k, 0], 'cutout'), (mean_start[k], 'Gaussian start'),\n"
     "                                     (mean_em[k], 'EM prior'), (ref[k], 'truth')]):\n"
     "        axes[r, k].imshow(img, origin='lower', cmap='magma', vmin=0, vmax=ref[k].max())\n"
     '        axes[r, k].set_xticks([])\n'
     '        axes[r, k].set_yticks([])\n'
     '        if k == 0:\n'
     '            axes[r, 0].set_ylabel(name)\n'
     'fig.tight_layout()'),
    ("markdown", 'What this small run shows is the workflow, not EM\'s gain: after two short laps the small\n'
     'U-Net is about level with the Gaussian it started from (the PSNRs above). The E-step needs its\n'
     'sampler steps: with 8 instead of 64 the samples missed their cutouts and the same run\'s EM prior\n'
     'fell 3.4 dB below the start; each lap warns when its samples fit the data worse than the\n'
     'noise (`estep_chi2_per_pixel` above 1.03). EM needs more laps and data: in the quick EM\n'
     'benchmark (200 cutouts of 32x32, a (16, 32) U-Net, 1200 steps a lap) the laps climb above\n'
     'their Gaussian start. `benchmarks/em.py` and `benchmarks/RESULTS.md` (EM benchmark) measure it;\n'
     '`deconvjax em` runs it from the command line, resumable lap by lap.'),
]


NOTEBOOKS = {
    "01_forward_model.ipynb": FORWARD_MODEL,
    "02_interactive_fit.ipynb": INTERACTIVE_FIT,
    "03_deblend_posterior.ipynb": DEBLEND,
    "04_multi_resolution.ipynb": MULTI_RESOLUTION,
    "05_survey_batch.ipynb": SURVEY_BATCH,
    "06_cosmos_posterior.ipynb": COSMOS_POSTERIOR,
    "07_em_survey.ipynb": EM_SURVEY,
}

TIMER = ("code", "import time\n\nT0 = time.perf_counter()  # the notebook's run time is printed at the end")
TIMER_END = ("code", "print(f'notebook run time: {time.perf_counter() - T0:.0f} s')")


def build(cells, name: str) -> float:
    """Execute ``cells`` as notebook ``name`` in a fresh kernel and write it with its
    outputs; return the wall time in seconds (kernel start included)."""
    nb = nbformat.v4.new_notebook()
    cells = [cells[0], TIMER, *cells[1:], TIMER_END]
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, HERE / name)
    seconds = time.perf_counter() - t0
    print(f"wrote {HERE / name} ({seconds:.0f} s)", flush=True)
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="notebooks to build (file-name prefixes, e.g. 02); default: all")
    args = ap.parse_args(argv)
    chosen = [n for n in NOTEBOOKS if not args.names or any(n.startswith(a) for a in args.names)]
    unknown = [a for a in args.names if not any(n.startswith(a) for n in NOTEBOOKS)]
    if unknown:
        ap.error(f"no notebook named {', '.join(unknown)}; known: {', '.join(NOTEBOOKS)}")
    times = {name: build(NOTEBOOKS[name], name) for name in chosen}
    for name, seconds in times.items():
        print(f"{name:32s} {seconds:6.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
