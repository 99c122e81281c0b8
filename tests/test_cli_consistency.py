"""Every `deconvjax` command spells the same things the same way (issue 18, item 5).

Introspects every click command: options carry help text, commands that read images take
the common options, a model PSF is given as a FWHM in arcsec; then runs the image options
end to end on small synthetic FITS files, with the bad-input errors naming the option."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import click  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from astropy.io import fits  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from deconvjax import cli  # noqa: E402

#: Commands that read observed images (with PSFs, noise and masks).
IMAGE_COMMANDS = ("fit", "sample", "em")
#: Their common options.
COMMON = ("--progress", "--no-progress", "--mask", "--hdu", "--weights", "--variance", "--rms")
#: Commands that read images but take them otherwise, and why.
OTHER_READERS = {
    "fit-survey": "each cutout's image, PSF, noise (variance / weight / rms), mask and HDU are columns of its "
                  "manifest, not options (test_survey_manifest_takes_noise_kinds_mask_and_hdu)",
    "sample-survey": "each cutout's files are columns of its manifest, as for fit-survey",
    "train-prior": "reads training stamps, which have no PSF, noise or mask",
}
#: Spellings replaced by one name across commands (old -> new); the old ones may only
#: remain as hidden, deprecated aliases.
RETIRED = {"--centers": "--catalog", "--model-psf-sigma": "--model-psf-fwhm", "--steps@sample": "--sampler-steps"}


def _commands():
    """(qualified name, command) for every command, subgroups walked."""
    out = []

    def walk(group, prefix, ctx):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            full = f"{prefix} {name}".strip()
            if isinstance(cmd, click.Group):
                walk(cmd, full, click.Context(cmd, parent=ctx))
            else:
                out.append((full, cmd))

    walk(cli.main, "", click.Context(cli.main))
    return out


COMMANDS = _commands()


def _options(cmd):
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]


def _names(cmd):
    return {n for p in _options(cmd) for n in (*p.opts, *p.secondary_opts)}


def test_every_command_is_found():
    names = {n for n, _ in COMMANDS}
    assert {"fit", "sample", "em", "simulate", "train-prior", "fit-survey", "demo", "data cosmos"} <= names


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_option_has_help(name, cmd):
    missing = [p.opts[0] for p in _options(cmd) if not (p.help or "").strip()]
    assert not missing, f"deconvjax {name}: options without help text: {missing}"
    assert (cmd.help or "").strip(), f"deconvjax {name} has no docstring"


@pytest.mark.parametrize("name", IMAGE_COMMANDS)
def test_image_commands_take_the_common_options(name):
    cmd = dict(COMMANDS)[name]
    missing = [o for o in COMMON if o not in _names(cmd)]
    assert not missing, f"deconvjax {name} reads images but lacks {missing}"
    assert "--psf" in _names(cmd)


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_long_running_commands_have_progress_switch(name, cmd):
    if name.startswith("data"):
        return  # GalSim's downloader reports on its own
    assert {"--progress", "--no-progress"} <= _names(cmd), name


def test_other_image_readers_are_listed_with_a_reason():
    for name in OTHER_READERS:
        assert name in dict(COMMANDS)
    assert set(IMAGE_COMMANDS).isdisjoint(OTHER_READERS)


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_model_psf_is_a_fwhm_in_arcsec(name, cmd):
    psf_options = [n for n in _names(cmd) if n.startswith("--model-psf")]
    assert psf_options in ([], ["--model-psf-fwhm"]), (name, psf_options)
    for p in _options(cmd):
        if "--model-psf-fwhm" in p.opts:
            assert "arcsec" in p.help and "FWHM" in p.help


@pytest.mark.parametrize("name, cmd", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_retired_spellings_are_hidden(name, cmd):
    visible = _names(cmd)
    for old in RETIRED:
        flag, _, only = old.partition("@")
        if not only or only == name:
            assert flag not in visible, f"deconvjax {name}: {flag} is spelled {RETIRED[old]} elsewhere"


def test_same_option_same_meaning_across_commands():
    """An option spelled the same in several commands has one type of value (a flag in one
    and a value in another would be two things under one name)."""
    seen = {}
    for name, cmd in COMMANDS:
        for p in _options(cmd):
            key = p.opts[0]
            kind = "flag" if p.is_flag else "value"
            seen.setdefault(key, {})[name] = kind
    mixed = {k: v for k, v in seen.items() if len(set(v.values())) > 1}
    assert not mixed, mixed


# ---------------------------------------------------------------------------------------
# End to end, on small synthetic FITS files
# ---------------------------------------------------------------------------------------

N = 24


@pytest.fixture(scope="module")
def fitsdir(tmp_path_factory):
    """A 24x24 galaxy in the SCI extension of a multi-extension file (an RMS extension
    beside it), a bad column of huge values, a mask flagging it, a PSF, and files of the
    wrong shape."""
    from helpers import integrated_gaussian

    d = tmp_path_factory.mktemp("clifits")
    rng = np.random.default_rng(1)
    sigma_noise = 0.02
    img = 5.0 * integrated_gaussian((N, N), (11.6, 12.3), 1.8) + sigma_noise * rng.normal(size=(N, N))
    img[:, 3] = 1e4  # a bad column
    mask = np.zeros((N, N), np.uint8)
    mask[:, 3] = 1
    hdr = fits.Header({"PIXSCALE": 0.2, "BUNIT": "counts"})
    fits.HDUList([fits.PrimaryHDU(),
                  fits.ImageHDU(img.astype(np.float32), header=hdr, name="SCI"),
                  fits.ImageHDU(np.full((N, N), sigma_noise, np.float32), name="RMS")]).writeto(d / "mef.fits")
    fits.writeto(d / "mask.fits", mask)
    fits.writeto(d / "mask_small.fits", mask[:-2])
    fits.writeto(d / "rms_small.fits", np.full((N - 2, N), sigma_noise, np.float32))
    psf = integrated_gaussian((15, 15), (7, 7), 1.2)
    fits.writeto(d / "psf.fits", (psf / psf.sum()).astype(np.float32), fits.Header({"PIXSCALE": 0.2}))
    return d


def _fit(d, *extra, out="out"):
    return CliRunner().invoke(cli.main, ["fit", str(d / "mef.fits"), "--psf", str(d / "psf.fits"),
                                         "--kind", "gaussian", "--no-structure", "--sky", "none",
                                         "--max-iter", "150", "--out", str(d / out), "--no-progress", *extra])


def test_read_cli_images_mask_hdu_rms(fitsdir):
    """The shared reader: --hdu picks the SCI extension, FILE[HDU] the RMS one, --mask
    flags the bad column (weight 0)."""
    from deconvjax._cli_common import read_cli_images

    d = read_cli_images([fitsdir / "mef.fits"], psf=[str(fitsdir / "psf.fits")],
                        rms=[(str(fitsdir / "mef.fits"), "RMS")], masks=[str(fitsdir / "mask.fits")], hdu="SCI")
    assert d.images.shape == (1, N, N) and d.noise_source == "given: rms map"
    assert np.all(d.weights[0, :, 3] == 0) and np.all(d.mask[0, :, 3])
    np.testing.assert_allclose(d.weights[0, :, 5], 1 / 0.02**2, rtol=1e-5)
    assert d.pixel_scale == pytest.approx(0.2)


def test_fit_with_mask_hdu_and_rms_end_to_end(fitsdir):
    """`deconvjax fit --hdu SCI --rms FILE[RMS] --mask FILE`: the bad column is masked,
    so the fit reaches the noise; the headers say the noise was given."""
    r = _fit(fitsdir, "--hdu", "SCI", "--rms", f"{fitsdir / 'mef.fits'}[RMS]", "--mask", str(fitsdir / "mask.fits"))
    assert r.exit_code == 0, r.output
    header = fits.getheader(fitsdir / "out" / "results.fits")
    assert header["CHI2PIX"] < 2.0, header["CHI2PIX"]
    assert "rms" in str(header.get("NOISESRC", "")).lower()


@pytest.mark.parametrize("args, option, words", [
    (["--hdu", "7"], "--hdu", "no HDU 7"),
    (["--hdu", "WHT"], "--hdu", "no HDU 'WHT'"),
    (["--hdu", "SCI", "--mask", "{d}/mask_small.fits"], "--mask", "shape"),
    (["--hdu", "SCI", "--rms", "{d}/rms_small.fits"], "--rms", "shape"),
    (["--hdu", "SCI", "--rms", "{d}/mef.fits[NOPE]"], "--rms", "no HDU 'NOPE'"),
    (["--hdu", "SCI", "--rms", "0.1", "--variance", "0.01"], "--variance", "at most one"),
    (["--hdu", "SCI", "--weights", "-3"], "--weights", "positive"),
])
def test_fit_bad_image_input_names_the_option(fitsdir, args, option, words):
    args = [a.format(d=fitsdir) for a in args]
    r = _fit(fitsdir, *args, out="bad")
    assert r.exit_code == 2, r.output
    assert option in r.output and words in r.output, r.output
    assert "Traceback" not in r.output


def test_sample_mask_hdu_rms(fitsdir, tmp_path):
    """`deconvjax sample` reads its images with the same options (its reader, `_read`:
    masked pixels come back NaN with infinite variance) and gives the same errors through
    the command (a full posterior run is left to tests/test_posterior_cli.py)."""
    from deconvjax.posterior._cli import _read

    data, psf, var, _, scale, _ = _read(str(fitsdir / "mef.fits"), str(fitsdir / "psf.fits"),
                                        {"rms": (str(fitsdir / "mef.fits"), "RMS")}, str(fitsdir / "mask.fits"), "SCI")
    assert np.all(np.isnan(data[0, :, 3])) and np.all(np.isinf(var[0, :, 3]))
    np.testing.assert_allclose(var[0, :, 5], 0.02**2, rtol=1e-5)
    assert scale == pytest.approx(0.2) and psf.shape == (1, 15, 15)
    base = ["sample", str(fitsdir / "mef.fits"), "--psf", str(fitsdir / "psf.fits"), "--n-samples", "1",
            "--out", str(tmp_path / "out"), "--no-progress"]
    r = CliRunner().invoke(cli.main, [*base, "--hdu", "SCI", "--rms", "0.02", "--mask", str(fitsdir / "mask_small.fits")])
    assert r.exit_code == 2 and "--mask" in r.output and "shape" in r.output, r.output
    r = CliRunner().invoke(cli.main, [*base, "--hdu", "9", "--rms", "0.02"])
    assert r.exit_code == 2 and "--hdu" in r.output and "no HDU 9" in r.output, r.output
    r = CliRunner().invoke(cli.main, [*base, "--hdu", "SCI", "--rms", str(fitsdir / "rms_small.fits")])
    assert r.exit_code == 2 and "--rms" in r.output and "shape" in r.output, r.output


def test_deprecated_spellings_still_work_and_warn(fitsdir, tmp_path):
    from deconvjax.posterior._cli import sample
    from deconvjax.survey._cli import fit_survey

    # Parsed only: the alias fills the new option, with a warning on stderr.
    ctx = fit_survey.make_context("fit-survey", [str(fitsdir), "--out", str(tmp_path), "--model-psf-sigma", "0.5"])
    assert ctx.meta["deconvjax_aliases"]["model_psf_fwhm"] == pytest.approx(0.5 * 2.3548, rel=1e-4)
    ctx = sample.make_context("sample", [str(fitsdir / "mef.fits"), "--psf", str(fitsdir / "psf.fits"),
                                         "--out", str(tmp_path), "--steps", "3"])
    assert ctx.meta["deconvjax_aliases"]["sampler_steps"] == 3
    r = CliRunner().invoke(sample, [str(fitsdir / "mef.fits"), "--psf", str(fitsdir / "psf.fits"),
                                    "--out", str(tmp_path), "--steps", "0"])
    assert r.exit_code == 2  # the alias keeps the option's checks
    from deconvjax.em._cli import em

    ctx = em.make_context("em", [str(fitsdir / "mef.fits"), "--out", str(tmp_path), "--centers",
                                 str(fitsdir / "mask.fits")])
    assert ctx.meta["deconvjax_aliases"]["catalog"] == str(fitsdir / "mask.fits")


def test_em_fits_cutouts_take_mask_and_hdu(fitsdir):
    from deconvjax.em._cli import _read_cutouts

    batch = _read_cutouts([fitsdir / "mef.fits"], str(fitsdir / "psf.fits"), {"rms": 0.02},
                          [str(fitsdir / "mask.fits")], "SCI", None, False, None)
    assert batch.mask.shape == (1, 1, N, N) and np.all(batch.mask[0, 0, :, 3]) and not batch.mask[0, 0, :, 5].any()
    with pytest.raises(click.BadParameter, match="no HDU"):
        _read_cutouts([fitsdir / "mef.fits"], str(fitsdir / "psf.fits"), {"rms": 0.02}, (), "WHT", None, False, None)


def test_survey_manifest_takes_noise_kinds_mask_and_hdu(fitsdir, tmp_path):
    """`fit-survey` reads its cutouts' files from the manifest: the same noise kinds, masks
    and HDUs as the image options, one column each."""
    from deconvjax.survey.manifest import SurveyInputError, load_cutout, read_manifest_rows, write_manifest

    cols = {"cutout_id": ["a"], "y": [[11.6]], "x": [[12.3]], "ny": [N], "nx": [N],
            "image": [[str(fitsdir / "mef.fits")]], "psf": [[str(fitsdir / "psf.fits")]],
            "rms": [[str(fitsdir / "mef.fits")]], "mask": [[str(fitsdir / "mask.fits")]], "hdu": ["SCI"]}
    path = write_manifest(tmp_path / "m.parquet", cols)
    (row,) = read_manifest_rows(path, 0, 1)
    with pytest.raises(SurveyInputError, match="weight has shape"):
        load_cutout({**row, "rms": None, "weight": [str(fitsdir / "mask_small.fits")]}, tmp_path)
    fits.writeto(tmp_path / "rms.fits", np.full((N, N), 0.02, np.float32))
    data, positions = load_cutout({**row, "rms": [str(tmp_path / "rms.fits")]}, tmp_path)
    assert data.noise_source == "given: rms map" and np.all(data.weights[0, :, 3] == 0)
    assert positions.shape == (1, 2)
    with pytest.raises(SurveyInputError, match="no HDU|missing HDU"):
        load_cutout({**row, "rms": [str(tmp_path / "rms.fits")], "hdu": "WHT"}, tmp_path)
    with pytest.raises(SurveyInputError, match="columns"):
        write_manifest(tmp_path / "bad.parquet", {**cols, "variance": cols["rms"]})
