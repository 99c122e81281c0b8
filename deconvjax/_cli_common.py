"""Options every ``deconvjax`` command spells the same way, and the one way they read images.

Commands that read images take ``--psf``, ``--weights`` / ``--variance`` / ``--rms``,
``--mask``, ``--hdu`` and ``--progress/--no-progress`` from here; commands that choose a
model PSF take ``--model-psf-fwhm`` (arcsec). Any FITS file option accepts ``FILE[HDU]``
(an index, 0 the primary, or an EXTNAME) to pick an extension; the noise options also take
a number (the same at every pixel). Images go through `deconvjax.io.read_images`, and bad
input (a mask or noise map of another shape, an HDU that does not exist) is a click error
naming the option.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np

__all__ = ["FitsSpec", "HDU", "progress_option", "hdu_option", "mask_option", "noise_options",
           "model_psf_fwhm_option", "deprecated_alias", "read_cli_images", "check_hdu", "NOISE_OPTIONS",
           "FWHM_PER_SIGMA"]

#: FWHM of a Gaussian in units of its sigma.
FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))

#: The noise options, by the `read_images` argument they fill.
NOISE_OPTIONS = {"weight": "--weights", "variance": "--variance", "rms": "--rms"}

_WITH_HDU = re.compile(r"^(?P<path>.+)\[(?P<hdu>[^\[\]]+)\]$")


def _hdu_key(text: str) -> int | str:
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else text


def describe_hdus(path) -> str:
    """``0 PRIMARY (no data), 1 SCI (64x64), ...`` for a FITS file."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        parts = []
        for i, h in enumerate(hdul):
            shape = "no data" if h.data is None else "x".join(map(str, h.data.shape))
            parts.append(f"{i} {h.name or '?'} ({shape})")
    return ", ".join(parts)


def check_hdu(path, hdu) -> None:
    """Raise ValueError naming the file and the HDUs it has where ``hdu`` is not an HDU of
    ``path`` holding an image."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            try:
                h = hdul[hdu]
            except (KeyError, IndexError):
                raise ValueError(f"{path}: no HDU {hdu!r} (the file has: {describe_hdus(path)})") from None
            if h.data is None or not h.is_image:
                raise ValueError(f"{path}: HDU {hdu!r} holds no image (the file has: {describe_hdus(path)})")
    except OSError as err:
        raise ValueError(f"{path}: not a readable FITS file ({err})") from None


class FitsSpec(click.ParamType):
    """A FITS file, or ``FILE[HDU]`` to pick an extension (index or EXTNAME); with
    ``numbers`` also a positive number. Converts to a path string, a ``(path, hdu)`` pair or
    a float."""

    name = "fits"

    def __init__(self, numbers: bool = False):
        self.numbers = numbers

    def get_metavar(self, param, ctx=None):  # noqa: D401 - click API
        return "NUMBER|FILE[HDU]" if self.numbers else "FILE[HDU]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple | float):
            return value
        text = str(value)
        if self.numbers:
            try:
                v = float(text)
            except ValueError:
                pass
            else:
                if not (np.isfinite(v) and v > 0):
                    self.fail(f"{text!r}: a noise level must be a positive, finite number", param, ctx)
                return v
        if Path(text).is_file():
            return text
        m = _WITH_HDU.match(text)
        if m and Path(m["path"]).is_file():
            hdu = _hdu_key(m["hdu"])
            try:
                check_hdu(m["path"], hdu)
            except ValueError as err:
                self.fail(str(err), param, ctx)
            return (m["path"], hdu)
        what = "neither a number nor an existing FITS file" if self.numbers else "no such file"
        self.fail(f"{text!r}: {what}", param, ctx)


class _HDUType(click.ParamType):
    name = "hdu"

    def get_metavar(self, param, ctx=None):
        return "INDEX|EXTNAME"

    def convert(self, value, param, ctx):
        return value if isinstance(value, int) else _hdu_key(str(value))


HDU = _HDUType()


def progress_option(f):
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show progress bars (--no-progress hides them, e.g. in logs).")(f)


def hdu_option(f):
    return click.option(
        "--hdu", type=HDU, default=None,
        help="HDU of the images in every image file: an index (0 is the primary) or an EXTNAME such as SCI "
             "(default: the first HDU holding an image). The other file options pick theirs as FILE[HDU].")(f)


def mask_option(per: str = "one per band, a cube, or one for all bands"):
    def decorate(f):
        return click.option(
            "--mask", "masks", multiple=True, type=FitsSpec(),
            help=f"Bad-pixel mask (FITS; nonzero marks a pixel to ignore), {per}; the same shape as the images. "
                 "Repeat the option; FILE[HDU] picks an extension.")(f)
    return decorate


def noise_options(per: str = "one per band or a cube", default: str = ""):
    """``--weights``, ``--variance``, ``--rms``: each a number (the same at every pixel) or
    a FITS map (FILE[HDU]), repeatable; at most one of the three."""
    def decorate(f):
        for name, what in reversed((("weights", "Inverse-variance (weight) map; 0 masks a pixel"),
                                    ("variance", "Noise variance map"),
                                    ("rms", "Noise rms (sigma) map"))):
            f = click.option(f"--{name}", name, multiple=True, type=FitsSpec(numbers=True),
                             help=f"{what}, or a number for every pixel: {per}. At most one of --weights, "
                                  f"--variance, --rms{default}.")(f)
        return f
    return decorate


def model_psf_fwhm_option(default_help: str):
    def decorate(f):
        return click.option("--model-psf-fwhm", type=click.FloatRange(min=0.0, min_open=True), default=None,
                            help=f"FWHM of the Gaussian model PSF in arcsec (default: {default_help}).")(f)
    return decorate


def deprecated_alias(old: str, new: str, dest: str, type=None, multiple: bool = False, convert=None):
    """A hidden, deprecated spelling ``old`` of the option ``new`` (``dest`` its parameter
    name): it warns on stderr and fills ``dest`` where ``new`` was not given (``convert``
    maps the old value to the new one)."""
    def callback(ctx, param, value):
        if value is None or value == () or value is False:
            return None
        click.echo(f"warning: {old} is deprecated; use {new}", err=True)
        ctx.meta.setdefault("deconvjax_aliases", {})[dest] = convert(value) if convert else value
        return None

    def decorate(f):
        return click.option(old, f"_deprecated_{dest}", type=type, multiple=multiple, hidden=True,
                            expose_value=False, callback=callback, help=f"Deprecated spelling of {new}.")(f)
    return decorate


def alias_value(value, dest: str):
    """``value`` of an option, or what its deprecated alias gave (`deprecated_alias`)."""
    ctx = click.get_current_context()
    given = ctx.meta.get("deconvjax_aliases", {})
    if dest in given and (value is None or value == ()):
        return given[dest]
    return value


def _one(values):
    """A repeated option's values as `read_images` takes them: one, or a list."""
    values = list(values)
    return values[0] if len(values) == 1 else values


def _paths(spec) -> list[str]:
    entries = spec if isinstance(spec, list) else [spec]
    return [str(e[0] if isinstance(e, tuple) else e) for e in entries if not isinstance(e, float)]


def read_cli_images(images, *, psf=(), weights=(), variance=(), rms=(), masks=(), hdu=None, bands=None,
                    **kwargs):
    """`deconvjax.io.read_images` for a command's options: ``images`` paths (``--hdu``
    picks their extension), repeated ``--psf``, noise and ``--mask`` values. Errors are
    click errors naming the option: two noise options, an HDU not in a file, a mask or
    noise map of another shape, an unreadable PSF."""
    from .io import NoiseMapError, read_images

    given = [(n, v) for n, v in (("weight", weights), ("variance", variance), ("rms", rms)) if v]
    if len(given) > 1:
        raise click.UsageError("give at most one of --weights, --variance, --rms")
    paths = [str(p) for p in images]
    if hdu is not None:
        for p in paths:
            try:
                check_hdu(p, hdu)
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="--hdu") from None
    spec = _one([(p, hdu) for p in paths] if hdu is not None else paths)
    noise = {name: _one(values) for name, values in given}
    mask = _one(masks) if masks else None
    psf_spec = _one(psf) if psf else None
    try:
        return read_images(spec, psf=psf_spec, mask=mask, bands=bands, **noise, **kwargs)
    except NoiseMapError as err:
        raise click.BadParameter(str(err), param_hint=NOISE_OPTIONS[err.option]) from None
    except ValueError as err:
        message = str(err)
        if mask is not None and (message.startswith(tuple(_paths(mask))) and "mask" in message
                                 or message.startswith("mask")):
            raise click.BadParameter(message, param_hint="--mask") from None
        if psf_spec is not None and (message.startswith(tuple(_paths(psf_spec))) or message.startswith("psf")):
            raise click.BadParameter(message, param_hint="--psf") from None
        if message.startswith("bands"):
            raise click.BadParameter(message, param_hint="--bands") from None
        raise click.BadParameter(message, param_hint="IMAGES") from None
