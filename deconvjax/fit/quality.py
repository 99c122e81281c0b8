"""How well a fit reached the noise: chi2 per pixel, a reduced chi2 with an effective
number of degrees of freedom, the share of pixels beyond 3 sigma, and a verdict.

A fit that converged has stopped moving; it has not necessarily explained the data (a
missing source, a wrong PSF, an unmodelled sky or a wrong noise map all converge). These
figures say which, so that a summary never reports ``converged`` alone.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..model import Scene
from ..observation import Observation

#: A fit "reaches the noise" when chi2 per pixel is at most this ...
MAX_CHI2_PER_PIXEL = 1.5
#: ... and at most this share of pixels lies beyond 3 sigma (0.27% for Gaussian noise).
MAX_FRAC_BEYOND_3SIGMA = 0.01


@dataclasses.dataclass(frozen=True)
class FitQuality:
    """Goodness of fit of a scene to its observations.

    **Attributes:**

    - `chi2`: total chi2 over the unmasked pixels (backgrounds profiled out).
    - `n_valid`: unmasked pixels.
    - `chi2_per_pixel`: ``chi2 / n_valid`` (about 1 when the model reaches the noise;
      a little below 1 for flexible models).
    - `n_eff`: effective number of fitted parameters (see `effective_parameters`).
    - `chi2_per_dof`: reduced chi2, ``chi2 / (n_valid - n_eff)``.
    - `frac_beyond_3sigma`: share of unmasked pixels whose whitened residual exceeds 3.
    - `reached_noise`: ``chi2_per_pixel <= MAX_CHI2_PER_PIXEL`` and
      ``frac_beyond_3sigma <= MAX_FRAC_BEYOND_3SIGMA``.
    """

    chi2: float
    n_valid: int
    chi2_per_pixel: float
    n_eff: float
    chi2_per_dof: float
    frac_beyond_3sigma: float
    reached_noise: bool

    def message(self) -> str:
        """A one-line summary; says why when the fit did not reach the noise."""
        line = (
            f"chi2/pixel {self.chi2_per_pixel:.3f}, reduced chi2 {self.chi2_per_dof:.3f} "
            f"({self.n_eff:.0f} effective parameters), {100 * self.frac_beyond_3sigma:.2f}% of pixels beyond 3 sigma"
        )
        if not self.reached_noise:
            line += (
                " -- the model does not reach the noise (expected chi2/pixel ~1 and ~0.3% beyond 3 sigma): "
                "look at the residual for missed sources, a wrong PSF, sky or noise map"
            )
        return line


@eqx.filter_jit
def _residual_stats(scene: Scene, observations: tuple[Observation, ...]):
    model = scene.render()
    chi2, n_valid, n_far = 0.0, 0, 0
    for obs in observations:
        white = obs.likelihood.whiten(obs.data - obs.predict(model), obs.weights)
        valid = obs.weights > 0
        chi2 = chi2 + jnp.sum(white**2)
        n_valid = n_valid + jnp.sum(valid)
        n_far = n_far + jnp.sum(valid & (jnp.abs(white) > 3.0))
    return chi2, n_valid, n_far


def effective_parameters(scene: Scene, observations: Sequence[Observation], n_params: int,
                         symmetric: bool = True) -> float:
    """An effective number of fitted parameters, for the reduced chi2.

    A parametric source counts its free parameters. A free-form source has a parameter
    per stamp pixel, most of which fit nothing but noise-free zeros (monotonicity and
    positivity pin them): each stamp pixel counts ``s^2 / (1 + s^2)``, ``s`` its model
    flux over the noise of one model pixel (the degrees of freedom of a ridge-regressed
    coefficient of that signal-to-noise: ~1 where the data determine it, ~0 where they
    do not), halved under the symmetry constraint (which ties pixel pairs), plus its
    spectrum and centre, never more than its free parameters. This is an estimate: the
    exact count of a constrained model is not defined."""
    sigma = _model_pixel_noise(observations)
    free_form = 0.0
    n_free_form_params = 0
    for group in scene.groups:
        flux = np.asarray(group.spectrum).sum(axis=1)
        counted = group.morphology.effective_pixels(flux, sigma, symmetric)
        if counted is None:  # a profile: its parameters all count
            continue
        support, n_free = counted
        # Padding sources of batched fits have zero flux and no parameters in n_params.
        present = flux != 0
        extra = group.spectrum.shape[1] + 2
        free_form += float(np.sum(np.where(present, np.minimum(support, n_free) + extra, 0.0)))
        n_free_form_params += int(np.sum(np.where(present, n_free + extra, 0)))
    return float(min(n_params, n_params - n_free_form_params + free_form))


def _model_pixel_noise(observations: Sequence[Observation]) -> float:
    """The typical noise of the band-summed flux in one model pixel (from the median
    weight of each observation)."""
    out = []
    for obs in observations:
        w = np.asarray(obs.weights)
        good = w[w > 0]
        if good.size:
            out.append(np.sqrt(w.shape[0] / np.median(good)))
    return float(min(out)) if out else np.inf


def fit_quality(scene: Scene, observations, n_params: int, *, symmetric: bool = True,
                warn: bool = False) -> FitQuality:
    """The `FitQuality` of ``scene`` against ``observations`` (an `Observation` or a
    sequence); ``n_params`` free parameters were fitted. With ``warn``, a `UserWarning`
    when the fit did not reach the noise."""
    from ..observation import as_observations

    observations = as_observations(observations)
    chi2, n_valid, n_far = (float(v) for v in _residual_stats(scene, observations))
    n_valid = int(n_valid)
    n_eff = effective_parameters(scene, observations, n_params, symmetric)
    per_pixel = chi2 / max(n_valid, 1)
    frac = n_far / max(n_valid, 1)
    quality = FitQuality(
        chi2=chi2,
        n_valid=n_valid,
        chi2_per_pixel=per_pixel,
        n_eff=n_eff,
        chi2_per_dof=chi2 / max(n_valid - n_eff, 1.0),
        frac_beyond_3sigma=frac,
        reached_noise=bool(per_pixel <= MAX_CHI2_PER_PIXEL and frac <= MAX_FRAC_BEYOND_3SIGMA),
    )
    if warn and not quality.reached_noise:
        warnings.warn("fit: " + quality.message(), UserWarning, stacklevel=3)
    return quality
