"""Bad input is refused with an error that names the argument (issue 13, defect 3); sky
positions as Source centres; the adjoint's default band count."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

import deconvjax as dj

SHAPE = (16, 16)


def _frame(wcs=None, bands=("g", "r", "i")):
    return dj.Frame(bands, SHAPE, wcs=wcs)


def _obs(data=None, frame=None, **kw):
    frame = _frame() if frame is None else frame
    data = np.zeros((frame.n_bands, *SHAPE)) if data is None else data
    if not {"weights", "variance", "rms"} & set(kw):
        kw["weights"] = 1.0
    return dj.Observation(data, frame=frame, psf=dj.GaussianPSF(2.0), **kw)


# --- Source ------------------------------------------------------------------------------


@pytest.mark.parametrize("center", [(np.nan, 3.0), (3.0, np.inf), (-np.inf, 1.0)])
def test_non_finite_source_center(center):
    with pytest.raises(ValueError, match="center must be finite"):
        dj.Source(np.ones(3), dj.GaussianMorphology(1.5), center=center)


@pytest.mark.parametrize("spectrum", [[1.0, np.nan, 2.0], [np.inf, 1.0, 1.0]])
def test_non_finite_source_spectrum(spectrum):
    with pytest.raises(ValueError, match="spectrum must be finite"):
        dj.Source(spectrum, dj.GaussianMorphology(1.5), center=(3.0, 3.0))


def test_source_checks_skip_traced_values():
    # Built inside jit / vmap, the values are tracers: not checked, not refused.
    make = lambda c, s: dj.Source(s, dj.PointMorphology(), center=c).center  # noqa: E731
    np.testing.assert_allclose(jax.jit(make)(jnp.array([1.0, 2.0]), jnp.ones(3)), [1.0, 2.0])
    out = jax.vmap(lambda c: dj.Source(jnp.ones(3), dj.PointMorphology(), center=(c[0], c[1])).center)(jnp.ones((4, 2)))
    assert out.shape == (4, 2)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(spectrum=["a", "b", "c"]), "spectrum"),
        (dict(spectrum=np.array(["1", "2", "3"])), "spectrum"),
        (dict(center=("a", "b")), "center"),
        (dict(center=[1 + 1j, 2.0]), "center"),
        (dict(spectrum=np.ones(3) * (1 + 0j)), "spectrum"),
    ],
)
def test_non_numeric_source_inputs(kw, name):
    args = dict(spectrum=np.ones(3), morphology=dj.GaussianMorphology(1.5), center=(3.0, 3.0)) | kw
    with pytest.raises(TypeError, match=f"^{name}: expected"):
        dj.Source(**args)


def test_source_shape_errors():
    with pytest.raises(ValueError, match="center must be"):
        dj.Source(np.ones(3), dj.PointMorphology(), center=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="spectrum must be"):
        dj.Source(np.ones((3, 2)), dj.PointMorphology(), center=(1.0, 2.0))
    with pytest.raises(ValueError, match="spectrum must be"):
        dj.Source([], dj.PointMorphology(), center=(1.0, 2.0))
    with pytest.raises(ValueError, match="^center: expected"):
        dj.Source(np.ones(3), dj.PointMorphology(), center=[[1.0], [2.0, 3.0]])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dj.GaussianMorphology(np.nan), "sigma must be finite"),
        (lambda: dj.GaussianMorphology(1.0, g1=np.inf), "g1 must be finite"),
        (lambda: dj.GaussianMorphology(1.0, g1=0.8, g2=0.8), "g1, g2: a reduced shear"),
        (lambda: dj.SersicMorphology(1.0, -2.0), "r_e must be positive"),
        (lambda: dj.SersicMorphology(np.nan, 2.0), "n must be finite"),
        (lambda: dj.SersicMorphology("1", 2.0), "^n: expected"),
        (lambda: dj.PixelMorphology(np.full((5, 5), np.nan)), "pixels must be finite"),
    ],
)
def test_bad_morphology_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --- Observation data and noise ----------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 0, 0), (0, 16, 16), (16, 0)])
def test_zero_size_data(shape):
    # Used to give an observation of log-likelihood 0 and chi2/dof 0.
    with pytest.raises(ValueError, match="data is empty"):
        _obs(np.zeros(shape))


@pytest.mark.parametrize("name", ["data", "weights", "variance", "rms"])
def test_complex_data_and_noise(name):
    good, bad = np.ones((3, *SHAPE)), np.ones((3, *SHAPE)) * (1.0 + 0.5j)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning is not the answer: an error is
        with pytest.raises(TypeError, match=f"^{name}: expected .*complex"):
            _obs(bad) if name == "data" else _obs(good, **{name: bad})


@pytest.mark.parametrize("name", ["data", "weights", "variance", "rms"])
@pytest.mark.parametrize("value", [np.array([["a"]]), ["a", "b"], "a"])
def test_string_data_and_noise(name, value):
    kw = {"weights": 1.0} if name == "data" else {name: value}
    data = value if name == "data" else np.ones((3, *SHAPE))
    with pytest.raises(TypeError, match=f"^{name}: expected .*strings"):
        _obs(data, **kw)


def test_ragged_data():
    with pytest.raises(ValueError, match="^data: expected"):
        _obs([[1.0, 2.0], [3.0]])


def test_string_psf_image_and_bad_pixel_scale():
    with pytest.raises(TypeError, match="^psf image: expected"):
        dj.Observation(np.zeros((3, *SHAPE)), frame=_frame(), psf=np.array([["a", "b"]]), weights=1.0)
    with pytest.raises(ValueError, match="psf image must have a positive"):
        dj.Observation(np.zeros((3, *SHAPE)), frame=_frame(), psf=np.zeros((5, 5)), weights=1.0)
    with pytest.raises(ValueError, match="pixel_scale must be positive and finite"):
        _obs(pixel_scale=np.inf)
    with pytest.raises(ValueError, match="pixel_scale must be positive and finite"):
        dj.Frame(("g",), SHAPE, pixel_scale=np.inf)


# --- WCS ---------------------------------------------------------------------------------


def _broken_wcs(what):
    w = dj.make_wcs(SHAPE, 0.2)
    if what == "crval":
        w.wcs.crval = [np.nan, 2.2]
    elif what == "crpix":
        w.wcs.crpix = [np.inf, 8.5]
    elif what == "cd":
        w.wcs.cd = [[np.nan, 0.0], [0.0, 0.2 / 3600]]
    elif what == "singular":
        w.wcs.cd = [[1e-5, 2e-5], [2e-5, 4e-5]]
    return w


@pytest.mark.parametrize("what, msg", [("crval", "CRVAL"), ("crpix", "CRPIX"), ("cd", "CD"), ("singular", "singular")])
def test_observation_wcs_must_be_finite_and_regular(what, msg):
    frame = _frame(wcs=dj.make_wcs(SHAPE, 0.2))
    with pytest.raises(ValueError, match=rf"^wcs \(the observation's WCS\).*{msg}"):
        _obs(frame=frame, wcs=_broken_wcs(what))


@pytest.mark.parametrize("what, msg", [("crval", "CRVAL"), ("cd", "CD"), ("singular", "singular")])
def test_frame_wcs_must_be_finite_and_regular(what, msg):
    # A NaN CD used to come back as a wcslib "undefined" pixel scale of 1e111 arcsec and
    # an error about the PSF; the frame's wcs is to blame.
    with pytest.raises(ValueError, match=rf"^wcs \(the frame's WCS\).*{msg}"):
        dj.Frame(("g",), SHAPE, wcs=_broken_wcs(what), psf=dj.GaussianPSF(0.2))


def test_wcs_of_wrong_type():
    with pytest.raises(TypeError, match=r"^wcs \(the frame's WCS\) must be"):
        dj.Frame(("g",), SHAPE, wcs="not a wcs")


# --- Source centres given as sky positions -----------------------------------------------


def test_skycoord_center_renders_like_its_pixel_position():
    wcs = dj.make_wcs((24, 28), 0.2, rotation_deg=25.0)
    frame = dj.Frame(("g", "r"), (24, 28), wcs=wcs)
    coord = SkyCoord(150.1003, 2.19985, unit="deg")
    x, y = wcs.world_to_pixel(coord)  # astropy's own answer, (x, y) 0-based
    assert 2 < y < 22 and 2 < x < 26
    morph = dj.GaussianMorphology(1.2, g1=0.1, shape=(15, 15))
    other = dj.Source([0.5, 0.2], dj.GaussianMorphology(1.0), center=(4.0, 5.0))
    sky = dj.Scene(frame, [other, dj.Source([1.0, 2.0], morph, center=coord)])
    pix = dj.Scene(frame, [other, dj.Source([1.0, 2.0], morph, center=(float(y), float(x)))])
    render = jax.jit(lambda scene: scene.render())  # same structure: compiled once
    a, b = np.asarray(render(sky)), np.asarray(render(pix))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).sum() > 1.0


def test_skycoord_center_needs_a_frame_wcs_and_a_scene():
    src = dj.Source([1.0], dj.PointMorphology(), center=SkyCoord(150.1, 2.2, unit="deg"))
    assert isinstance(src.center.coord, SkyCoord)
    with pytest.raises(ValueError, match=r"sources\[0\]\.center is a SkyCoord but the frame has no WCS"):
        dj.Scene(dj.Frame(("g",), SHAPE), [src])
    # Not usable as an array before a Scene converted it.
    with pytest.raises(TypeError, match="sky position"):
        np.asarray(src.center)
    with pytest.raises(TypeError, match="sky position"):
        src.center - 1.0
    with pytest.raises(TypeError, match="SkyCenter"):
        jnp.round(src.center)
    with pytest.raises(TypeError, match="SkyCenter"):
        jax.jit(lambda s: s.center)(src)
    with pytest.raises(ValueError, match="single sky position"):
        dj.Source([1.0], dj.PointMorphology(), center=SkyCoord([150.1, 150.2], [2.2, 2.2], unit="deg"))


# --- Adjoint band count ------------------------------------------------------------------


def test_adjoint_returns_the_frame_band_count():
    frame = _frame()
    obs = _obs(np.zeros((1, *SHAPE)), frame=frame, bands=["g"])
    rng = np.random.default_rng(0)  # (jax.random compiles for seconds on CPU)
    x = jnp.asarray(rng.standard_normal((3, *SHAPE)), jnp.float32)
    y = jnp.asarray(rng.standard_normal(obs.shape), jnp.float32)
    aty = jax.jit(lambda o, y: o.adjoint(y))(obs, y)
    assert aty.shape == (3, *SHAPE)
    ax = np.asarray(jax.jit(lambda o, x: o(x))(obs, x), np.float64)
    lhs, rhs = np.vdot(ax, y), np.vdot(np.asarray(x, np.float64), aty)
    assert abs(lhs - rhs) <= 1e-5 * np.linalg.norm(ax) * np.linalg.norm(y)
    # Only the band it saw gets anything back.
    assert float(jnp.abs(aty[1:]).max()) == 0.0 and float(jnp.abs(aty[0]).max()) > 0.0
    assert jax.eval_shape(lambda y: obs.adjoint(y, 1), y).shape == (1, *SHAPE)
    with pytest.raises(ValueError, match="n_bands"):
        _obs(np.zeros((1, *SHAPE)), frame=frame, bands=["i"]).adjoint(y, 2)
