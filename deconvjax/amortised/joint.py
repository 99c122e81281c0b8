"""Joint multi-survey deconvolution (after Akhaury et al.): several ground-based bands at a
coarse pixel scale and one space-based broad band at twice their resolution, whose truth is a
known linear combination of the ground bands (the SED weights), deconvolved together.

The model ``x`` is one image per ground band on the space image's (fine) grid,
``(band, 2 ny, 2 nx)``. The forward operators are

- ground band ``b``: ``y_b = B(h_b * x_b) + n_b``, with ``h_b`` the band's PSF sampled on the
  fine grid and ``B`` the clean 2x2 binning operator (sum of each 2x2 block of fine pixels, so
  flux is conserved and the coarse pixel response is the 2x2 box);
- space: ``s = h_s * (sum_b w_b x_b) + n_s``, with ``w`` the SED weights.

Convolutions are periodic (`convolution.convolve`); the noise is white Gaussian with one
standard deviation per band. The objective is

``F(x) = sum_b |B(h_b * x_b) - y_b|^2 / (2 sigma_b^2)
        + space_weight * |h_s * (w . x) - s|^2 / (2 sigma_s^2) + sum_r R_r(x)``

with the regularisers ``R_r`` as strategy objects (`LaplacianRegulariser`,
`DiffusionPriorRegulariser`). Its gradient is Lipschitz with constant ``L`` = the largest
eigenvalue of the (constant) Hessian of the quadratic terms, found by power iteration on
Hessian-vector products (`lipschitz_constant`); the diffusion prior's term contributes no
curvature there (its gradient is a stop-gradient score), so the step ignores it. The solvers
(`GradientDescent` at ``step_scale / L``, `FISTA`) are objects with ``init`` / ``step`` /
``terminate``, driven inside one `lax.while_loop`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .convolution import convolve

__all__ = [
    "JointObservations",
    "JointSolution",
    "AbstractRegulariser",
    "LaplacianRegulariser",
    "ColourRegulariser",
    "DiffusionPriorRegulariser",
    "AbstractJointSolver",
    "GradientDescent",
    "FISTA",
    "bin2x2",
    "joint_forward",
    "joint_objective",
    "lipschitz_constant",
    "minimise",
    "joint_deconvolve",
    "ground_only_deconvolve",
    "space_only_deconvolve",
    "simulate_joint",
]


# ----------------------------------------------------------------------------- operators


def bin2x2(x: Float[ArrayLike, "*batch y2 x2"]) -> Float[Array, "*batch y x"]:
    """Sum of each 2x2 block of fine pixels: the fine -> coarse (0.1" -> 0.2") pixel relation.
    Its adjoint repeats each coarse pixel over its 2x2 block (``B B^T = 4 I``)."""
    x = jnp.asarray(x, dtype=float)
    *batch, ny2, nx2 = x.shape
    if ny2 % 2 or nx2 % 2:
        raise ValueError(f"x: expected even (y, x) sizes to bin 2x2, got {(ny2, nx2)}")
    return x.reshape(*batch, ny2 // 2, 2, nx2 // 2, 2).sum(axis=(-3, -1))


def _check_psf(psf, name, fine_shape, n_lead):
    if psf.ndim != n_lead + 2:
        raise ValueError(f"{name}: expected {n_lead + 2} axes, got shape {psf.shape}")
    h, w = psf.shape[-2:]
    if h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"{name}: expected odd (h, w) sizes (centred on a pixel), got {(h, w)}")
    if h > fine_shape[0] or w > fine_shape[1]:
        raise ValueError(f"{name}: expected a PSF no larger than the fine grid {fine_shape}, got {(h, w)}")
    if not np.all(np.isfinite(psf)):
        raise ValueError(f"{name}: expected finite values")


class JointObservations(eqx.Module):
    """Ground bands, the space image and how they relate.

    - `ground`: ``(band, ny, nx)`` coarse-pixel images (e.g. LSST r, i, z at 0.2"/px).
    - `ground_psf`: ``(band, h, w)`` PSFs sampled on the FINE grid (the space pixel scale),
      odd sizes, centred on ``(h // 2, w // 2)``, unit sum.
    - `ground_sigma`: ``(band,)`` white-noise standard deviations (or a scalar for all).
    - `space`: ``(2 ny, 2 nx)`` fine-pixel image (e.g. Euclid VIS at 0.1"/px).
    - `space_psf`: ``(h, w)`` its PSF, same conventions.
    - `space_sigma`: its noise standard deviation.
    - `sed_weights`: ``(band,)`` with ``space truth = sum_b sed_weights[b] * truth_b``.
    """

    ground: Float[Array, "band ny nx"]
    ground_psf: Float[Array, "band h w"]
    ground_sigma: Float[Array, " band"]
    space: Float[Array, "ny2 nx2"]
    space_psf: Float[Array, "hs ws"]
    space_sigma: Float[Array, ""]
    sed_weights: Float[Array, " band"]

    def __init__(self, ground, ground_psf, ground_sigma, space, space_psf, space_sigma, sed_weights=None):
        if sed_weights is None:
            raise ValueError("sed_weights: expected one weight per ground band (space truth = "
                             "sum_b w_b * band_b), got None")
        ground = np.asarray(ground, dtype=float)
        space = np.asarray(space, dtype=float)
        if ground.ndim != 3:
            raise ValueError(f"ground: expected (band, ny, nx), got shape {ground.shape}")
        nb, ny, nx = ground.shape
        if space.shape != (2 * ny, 2 * nx):
            raise ValueError(f"space: expected twice the ground resolution, shape {(2 * ny, 2 * nx)}, "
                             f"got {space.shape}")
        w = np.asarray(sed_weights, dtype=float)
        if w.shape != (nb,):
            raise ValueError(f"sed_weights: expected one weight per ground band, shape ({nb},), got {w.shape}")
        if not np.all(np.isfinite(w)) or not np.any(w != 0):
            raise ValueError("sed_weights: expected finite weights, not all zero")
        gpsf = np.asarray(ground_psf, dtype=float)
        spsf = np.asarray(space_psf, dtype=float)
        _check_psf(gpsf, "ground_psf", space.shape, 1)
        if gpsf.shape[0] != nb:
            raise ValueError(f"ground_psf: expected one PSF per band, {nb}, got {gpsf.shape[0]}")
        _check_psf(spsf, "space_psf", space.shape, 0)
        gs = np.broadcast_to(np.asarray(ground_sigma, dtype=float), (nb,)) if np.ndim(ground_sigma) == 0 \
            else np.asarray(ground_sigma, dtype=float)
        if gs.shape != (nb,) or not np.all(gs > 0):
            raise ValueError(f"ground_sigma: expected a positive scalar or ({nb},) positive values, got {gs}")
        ss = np.asarray(space_sigma, dtype=float)
        if ss.shape != () or not ss > 0:
            raise ValueError(f"space_sigma: expected a positive scalar, got {space_sigma}")
        if not (np.all(np.isfinite(ground)) and np.all(np.isfinite(space))):
            raise ValueError("ground, space: expected finite pixel values")
        self.ground = jnp.asarray(ground)
        self.ground_psf = jnp.asarray(gpsf)
        self.ground_sigma = jnp.asarray(np.array(gs))
        self.space = jnp.asarray(space)
        self.space_psf = jnp.asarray(spsf)
        self.space_sigma = jnp.asarray(ss)
        self.sed_weights = jnp.asarray(w)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """``(band, 2 ny, 2 nx)``: one image per ground band on the space grid."""
        return (self.ground.shape[0], *self.space.shape)


def joint_forward(obs: JointObservations, x: Float[Array, "band y2 x2"]
                  ) -> tuple[Float[Array, "band ny nx"], Float[Array, "y2 x2"]]:
    """The noiseless ground bands and space image of the model ``x`` (fine grid per band)."""
    ground = bin2x2(convolve(x, obs.ground_psf))
    space = convolve(jnp.tensordot(obs.sed_weights, x, axes=1), obs.space_psf)
    return ground, space


# ----------------------------------------------------------------------------- regularisers


class AbstractRegulariser(eqx.Module):
    """A term ``R(x)`` added to the objective, ``x`` of shape ``(band, y, x)``."""

    @abc.abstractmethod
    def penalty(self, x: Float[Array, "band y x"]) -> Float[Array, ""]:
        """The term's value; its gradient is what the solvers step along."""


class LaplacianRegulariser(AbstractRegulariser):
    """``weight / 2 * |lap x|^2`` summed over bands, with the periodic 5-point Laplacian
    (a smoothness prior; its gradient's Lipschitz constant is ``64 * weight``)."""

    weight: float = 1e-2

    def __check_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"weight: expected >= 0, got {self.weight}")

    def penalty(self, x):
        return 0.5 * self.weight * jnp.sum(_laplacian(x) ** 2)


def _laplacian(x):
    return jnp.roll(x, 1, -1) + jnp.roll(x, -1, -1) + jnp.roll(x, 1, -2) + jnp.roll(x, -1, -2) - 4.0 * x


class ColourRegulariser(AbstractRegulariser):
    """``weight / 2 * sum_b |lap(x_b - mean_b x)|^2``: smoothness of the colour (each band's
    departure from the band average). The space image fixes the SED-weighted sum at high
    resolution but not how it splits over bands; this term sends that split's unconstrained
    fine structure to the grey one, while the ground bands set the colours on their scale."""

    weight: float = 1.0

    def __check_init__(self):
        if not self.weight >= 0:
            raise ValueError(f"weight: expected >= 0, got {self.weight}")

    def penalty(self, x):
        return 0.5 * self.weight * jnp.sum(_laplacian(x - jnp.mean(x, axis=0)) ** 2)


class DiffusionPriorRegulariser(AbstractRegulariser):
    """The diffusion prior's score as the regulariser (`diffusion.regulariser.prior_score_penalty`):
    value zero, gradient ``-weight * score_sigma(x_b)`` for each band's image, each band taken
    as one single-band morphology of the prior (so the prior must model ``(1, y, x)``). It adds
    no curvature: the Lipschitz step comes from the data terms alone, and the objective values
    that the solvers record do not include it."""

    prior: eqx.Module
    weight: float = 1.0
    sigma: float = 0.05
    scale: float | None = None

    def penalty(self, x):
        from ..diffusion.regulariser import prior_score_penalty

        return prior_score_penalty(self.prior, x[:, None], self.weight, self.sigma, scale=self.scale)


# ----------------------------------------------------------------------------- objective


def joint_objective(x: Float[Array, "band y2 x2"], obs: JointObservations, space_weight: float = 1.0,
                    regularisers: Sequence[AbstractRegulariser] = ()) -> Float[Array, ""]:
    """``F(x)``: the band data terms, ``space_weight`` times the space term, and the
    regularisers (see the module docstring)."""
    ground, space = joint_forward(obs, x)
    data = jnp.sum(jnp.sum((ground - obs.ground) ** 2, axis=(-2, -1)) / (2.0 * obs.ground_sigma**2))
    data = data + space_weight * jnp.sum((space - obs.space) ** 2) / (2.0 * obs.space_sigma**2)
    for r in regularisers:
        data = data + r.penalty(x)
    return data


def lipschitz_constant(fn: Callable[[Array, object], Array], x0: Float[Array, "..."], args=None, *,
                       n_iter: int = 200, key: PRNGKeyArray | None = None) -> Float[Array, ""]:
    """The largest eigenvalue of the Hessian of ``fn(., args)`` at ``x0``, by power iteration on
    Hessian-vector products (forward-over-reverse). For a quadratic ``fn`` (as the joint
    objective's data and Laplacian terms) this is the Lipschitz constant of ``grad fn``.
    Power iteration approaches it from below; the estimate is the Rayleigh quotient of the
    last iterate."""
    if n_iter < 1:
        raise ValueError(f"n_iter: expected >= 1, got {n_iter}")
    key = jax.random.key(0) if key is None else key
    grad = jax.grad(lambda x: fn(x, args))

    def hvp(v):
        return jax.jvp(grad, (x0,), (v,))[1]

    v = jax.random.normal(key, x0.shape, x0.dtype)
    v = v / jnp.linalg.norm(v)

    def body(_, v):
        hv = hvp(v)
        return hv / jnp.maximum(jnp.linalg.norm(hv), jnp.finfo(v.dtype).tiny)

    v = jax.lax.fori_loop(0, n_iter, body, v)
    return jnp.vdot(v, hvp(v)).real


# ----------------------------------------------------------------------------- solvers


class AbstractJointSolver(eqx.Module):
    """A first-order solver for a smooth objective with an ``L``-Lipschitz gradient:
    ``init`` builds the state, ``step`` advances one iteration, ``terminate`` says when to
    stop (relative change of ``x`` below `rtol`, or `max_steps`)."""

    max_steps: eqx.AbstractVar[int]
    rtol: eqx.AbstractVar[float]

    @abc.abstractmethod
    def init(self, x0: Array, lipschitz: Array):
        """The solver's state at the start."""

    @abc.abstractmethod
    def step(self, grad: Callable[[Array], Array], x: Array, state) -> tuple[Array, object]:
        """One iteration from ``x``: the new iterate and state."""

    def terminate(self, x: Array, x_prev: Array, n: Int[Array, ""]) -> Array:
        change = jnp.linalg.norm(x - x_prev) / jnp.maximum(jnp.linalg.norm(x), jnp.finfo(x.dtype).tiny)
        return (n >= self.max_steps) | ((n > 0) & (change < self.rtol))


def _check_solver(solver, upper, closed):
    ok = 0 < solver.step_scale <= upper if closed else 0 < solver.step_scale < upper
    if not ok:
        bound = f"(0, {upper}]" if closed else f"(0, {upper})"
        raise ValueError(f"step_scale: expected in {bound} (step = step_scale / L), got {solver.step_scale}")
    if solver.max_steps < 1:
        raise ValueError(f"max_steps: expected >= 1, got {solver.max_steps}")


class GradientDescent(AbstractJointSolver):
    """``x <- x - (step_scale / L) grad F(x)``; the objective decreases monotonically for
    ``step_scale`` in (0, 2) (descent lemma), so larger steps are rejected."""

    step_scale: float = 1.0
    max_steps: int = 500
    rtol: float = 1e-6

    def __check_init__(self):
        _check_solver(self, 2.0, closed=False)

    def init(self, x0, lipschitz):
        return self.step_scale / lipschitz

    def step(self, grad, x, state):
        return x - state * grad(x), state


class FISTA(AbstractJointSolver):
    """Nesterov-accelerated gradient (FISTA without a proximal term) at step
    ``step_scale / L`` with ``step_scale`` in (0, 1]; ``O(1/k^2)`` in the objective, but not
    monotone."""

    step_scale: float = 1.0
    max_steps: int = 300
    rtol: float = 1e-6

    def __check_init__(self):
        _check_solver(self, 1.0, closed=True)

    def init(self, x0, lipschitz):
        return (self.step_scale / lipschitz, x0, jnp.ones((), x0.dtype))

    def step(self, grad, x, state):
        alpha, y, t = state
        x_new = y - alpha * grad(y)
        t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t**2))
        y_new = x_new + ((t - 1.0) / t_new) * (x_new - x)
        return x_new, (alpha, y_new, t_new)


class JointSolution(eqx.Module):
    """What a solve returns.

    - `model`: ``(band, 2 ny, 2 nx)`` the deconvolved images on the fine grid.
    - `objective`: ``(max_steps + 1,)`` the objective at each iterate (NaN after the last).
    - `n_steps`: iterations taken.
    - `lipschitz`: the ``L`` the step was set from.
    """

    model: Float[Array, "band y2 x2"]
    objective: Float[Array, " steps"]
    n_steps: Int[Array, ""]
    lipschitz: Float[Array, ""]


@eqx.filter_jit
def minimise(fn: Callable[[Array, object], Array], x0: Float[Array, "..."], solver: AbstractJointSolver,
             args=None, lipschitz: Float[ArrayLike, ""] | None = None, *, key: PRNGKeyArray | None = None
             ) -> JointSolution:
    """Minimise the smooth ``fn(x, args)`` over ``x`` from ``x0`` with ``solver`` at the step
    set by ``lipschitz`` (estimated with `lipschitz_constant` when None). The loop is a
    `lax.while_loop`; `fn` should be a module-level function (it is a static argument of the
    jit, and the arrays it needs travel in `args`) so that repeated solves reuse one program."""
    L = lipschitz_constant(fn, x0, args, key=key) if lipschitz is None else jnp.asarray(lipschitz, x0.dtype)
    grad = jax.grad(lambda x: fn(x, args))
    hist = jnp.full((solver.max_steps + 1,), jnp.nan, x0.dtype).at[0].set(fn(x0, args))

    def cond(c):
        return ~c[4]

    def body(c):
        x, state, n, hist, _ = c
        x_new, state = solver.step(grad, x, state)
        n = n + 1
        hist = hist.at[n].set(fn(x_new, args))
        return x_new, state, n, hist, solver.terminate(x_new, x, n)

    init = (x0, solver.init(x0, L), jnp.zeros((), jnp.int32), hist, jnp.zeros((), bool))
    x, _, n, hist, _ = jax.lax.while_loop(cond, body, init)
    return JointSolution(x, hist, n, L)


# ----------------------------------------------------------------------------- entry points


def _joint_fn(x, args):
    obs, space_weight, regularisers = args
    return joint_objective(x, obs, space_weight, regularisers)


def _space_fn(z, args):
    obs, regularisers = args
    r = jnp.sum((convolve(z[0], obs.space_psf) - obs.space) ** 2) / (2.0 * obs.space_sigma**2)
    for reg in regularisers:
        r = r + reg.penalty(z)
    return r


def _start(obs, x0):
    if x0 is None:
        # The ground bands upsampled (each coarse pixel's flux spread over its 2x2 block): a
        # start with the right fluxes and colours.
        return jnp.repeat(jnp.repeat(obs.ground, 2, axis=-2), 2, axis=-1) / 4.0
    x0 = jnp.asarray(x0, dtype=float)
    if x0.shape != obs.model_shape:
        raise ValueError(f"x0: expected the model shape {obs.model_shape}, got {x0.shape}")
    return x0


def _check_regs(regularisers):
    regularisers = tuple(regularisers)
    for r in regularisers:
        if not isinstance(r, AbstractRegulariser):
            raise ValueError(f"regularisers: expected AbstractRegulariser objects, got {type(r).__name__}")
    return regularisers


def joint_deconvolve(obs: JointObservations, *, space_weight: float = 1.0,
                     regularisers: Sequence[AbstractRegulariser] = (LaplacianRegulariser(1e-2),),
                     solver: AbstractJointSolver | None = None, x0: Float[ArrayLike, "band y2 x2"] | None = None,
                     key: PRNGKeyArray | None = None) -> JointSolution:
    """Deconvolve the ground bands and the space image together (see the module docstring).

    **Arguments:**

    - `obs`: the `JointObservations`.
    - `space_weight`: weight of the space constraint (0 gives the ground bands alone).
    - `regularisers`: the `AbstractRegulariser` terms. Their weights are in the objective's
      units (the data terms are chi-squared), so they scale with the images' flux units;
      `ColourRegulariser` is what lets the joint solve split the space image's fine
      structure over the bands.
    - `solver`: `FISTA()` by default, or `GradientDescent(...)`.
    - `x0`: the start, ``(band, 2 ny, 2 nx)``; by default the ground bands upsampled.
    - `key`: for the power iteration's start vector.

    **Returns:** a `JointSolution` whose `model` is ``(band, 2 ny, 2 nx)`` at the space
    resolution, one image per ground band.
    """
    if not isinstance(obs, JointObservations):
        raise ValueError(f"obs: expected JointObservations, got {type(obs).__name__}")
    if not space_weight >= 0:
        raise ValueError(f"space_weight: expected >= 0, got {space_weight}")
    regularisers = _check_regs(regularisers)
    solver = FISTA() if solver is None else solver

    return minimise(_joint_fn, _start(obs, x0), solver, (obs, space_weight, regularisers), key=key)


def ground_only_deconvolve(obs: JointObservations, **kwargs) -> JointSolution:
    """Baseline: each ground band deconvolved alone (the joint objective without the space
    term, which separates over bands), returned on the fine grid."""
    return joint_deconvolve(obs, space_weight=0.0, **kwargs)


def space_only_deconvolve(obs: JointObservations, *,
                          regularisers: Sequence[AbstractRegulariser] = (LaplacianRegulariser(1e-2),),
                          solver: AbstractJointSolver | None = None, key: PRNGKeyArray | None = None
                          ) -> JointSolution:
    """Baseline: the space image alone, deconvolved (``|h_s * z - s|^2 / (2 sigma_s^2) + R(z)``)
    and split over the bands by the SED weights as a grey source: ``x_b = z / sum_b w_b``,
    the split with equal flux per band that reproduces ``z = sum_b w_b x_b`` exactly (the
    space image carries no colour)."""
    if not isinstance(obs, JointObservations):
        raise ValueError(f"obs: expected JointObservations, got {type(obs).__name__}")
    regularisers = _check_regs(regularisers)
    solver = FISTA() if solver is None else solver

    sol = minimise(_space_fn, obs.space[None], solver, (obs, regularisers), key=key)
    wsum = jnp.sum(obs.sed_weights)
    model = jnp.broadcast_to(sol.model / wsum, obs.model_shape)
    return JointSolution(model, sol.objective, sol.n_steps, sol.lipschitz)


# ----------------------------------------------------------------------------- simulation


def simulate_joint(seed: int, n: int, size: int = 32, *, bands: Sequence[str] = ("r", "i", "z"),
                   sed_weights: Sequence[float] | None = None, ground_snr: float = 60.0,
                   space_snr: float = 120.0, psf_size: int = 25, colour_contrast: float = 0.6
                   ) -> tuple[list[JointObservations], Float[np.ndarray, "n band y2 x2"]]:
    """``n`` scenes of one GalSim bulge + disk + knots galaxy whose three components have
    different, random colours (so the bands differ in morphology), observed by LSST-like ground
    bands (`sims.surveys` LSST seeing, Moffat) at 0.2"/px on ``(size, size)`` and a Euclid
    VIS-like image (the preset's Airy + jitter PSF) at 0.1"/px on ``(2 size, 2 size)``.

    Truths are drawn at 0.1"/px (smoothed by a 0.1" Gaussian); observations apply this module's forward operators
    (periodic convolution, 2x2 binning) and white noise whose sigma puts each image's
    matched-filter-free SNR (``sqrt(sum truth^2) / sigma``) at `ground_snr` / `space_snr`.
    ``sed_weights`` default to equal weights summing to one. Each component's flux in each
    band is drawn uniformly in ``1 +- colour_contrast`` times its mean over the bands.

    **Returns:** the observations (one `JointObservations` per scene) and the truths
    ``(n, band, 2 size, 2 size)``.
    """
    import galsim

    from ..sims.surveys import get_survey

    if n < 1 or size < 8:
        raise ValueError(f"n, size: expected n >= 1 and size >= 8, got {n}, {size}")
    nb = len(bands)
    w = np.full(nb, 1.0 / nb) if sed_weights is None else np.asarray(sed_weights, dtype=float)
    if w.shape != (nb,):
        raise ValueError(f"sed_weights: expected {nb} weights, got shape {w.shape}")
    lsst, euclid = get_survey("lsst"), get_survey("euclid")
    scale = 0.1

    def draw_psf(obj):
        a = obj.drawImage(nx=psf_size, ny=psf_size, scale=scale).array.astype(np.float64)
        return a / a.sum()

    gpsf = np.stack([draw_psf(lsst.psf(b)) for b in bands])
    spsf = draw_psf(euclid.psf("VIS"))
    rng = np.random.default_rng(seed)
    # Colours: bulge brightening to the red, disk (with star-forming knots) to the blue.
    if not 0 <= colour_contrast < 1:
        raise ValueError(f"colour_contrast: expected in [0, 1), got {colour_contrast}")
    truths, out = [], []
    for _ in range(n):
        hlr_b, hlr_d = rng.uniform(0.15, 0.35), rng.uniform(0.4, 0.9)
        q, beta = rng.uniform(0.4, 0.9), rng.uniform(0, np.pi)
        bt = rng.uniform(0.2, 0.6)
        off = rng.uniform(-0.15, 0.15, 2)
        bulge = galsim.DeVaucouleurs(half_light_radius=hlr_b).shear(q=rng.uniform(0.7, 1.0), beta=beta * galsim.radians)
        disk = galsim.Exponential(half_light_radius=hlr_d).shear(q=q, beta=beta * galsim.radians)
        knots = galsim.RandomKnots(npoints=8, half_light_radius=hlr_d, rng=galsim.BaseDeviate(int(rng.integers(1 << 30))))
        knots = knots.shear(q=q, beta=beta * galsim.radians)
        # One colour per component (bulge, disk, knots): flux per band relative to the
        # component's mean over bands.
        col = rng.uniform(1 - colour_contrast, 1 + colour_contrast, (3, nb))
        col = col / col.mean(axis=1, keepdims=True)
        ims = []
        for b in range(nb):
            gal = (bt * col[0, b] * bulge + (1 - bt) * (0.6 * col[1, b] * disk + 0.4 * col[2, b] * knots))
            gal = gal.shift(*off)
            # The truth is band-limited at the fine pixel scale (the knots are points, which
            # GalSim cannot draw without a smoothing kernel).
            gal = galsim.Convolve(gal, galsim.Gaussian(fwhm=scale))
            ims.append(gal.drawImage(nx=2 * size, ny=2 * size, scale=scale).array.astype(np.float64))
        x = np.stack(ims) * 1000.0
        truths.append(x)
        g = np.asarray(bin2x2(convolve(x, gpsf)))
        s = np.asarray(convolve(np.tensordot(w, x, axes=1), spsf))
        gs = np.sqrt(np.sum(g**2, axis=(-2, -1))) / ground_snr
        ss = float(np.sqrt(np.sum(s**2)) / space_snr)
        g = g + gs[:, None, None] * rng.standard_normal(g.shape)
        s = s + ss * rng.standard_normal(s.shape)
        out.append(JointObservations(g, gpsf, gs, s, spsf, ss, w))
    return out, np.stack(truths)
