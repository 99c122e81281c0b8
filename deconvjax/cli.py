"""The ``deconvjax`` command line."""

import importlib

import click

from ._cli_common import progress_option

# Subcommands load on first use: `deconvjax fit` does not import the diffusion and
# posterior packages, nor `--help` any subcommand (click would import every one of them
# for its one-line summary: the summaries are kept here; a test checks they match).
_COMMANDS = {
    "simulate": ("deconvjax.sims._cli:simulate",
                 "Simulate blended fields with truth and write them as FITS + truth tables."),
    "fit": ("deconvjax.fit._cli:fit_command",
            "Fit a scene to IMAGES (one FITS image per band, or a cube) and deblend it."),
    "train-prior": ("deconvjax.diffusion._cli:train_prior",
                    "Train a diffusion (score) prior on galaxy stamps and write a checkpoint."),
    "train-noise": ("deconvjax.likelihood._cli:train_noise",
                    "Learn a noise likelihood (SLIC) from blank-sky cutouts and write a noise model."),
    "em": ("deconvjax.em._cli:em",
           "Learn a galaxy prior from CUTOUTS alone by expectation-maximisation."),
    "fit-survey": ("deconvjax.survey._cli:fit_survey",
                   "Fit every cutout of CUTOUTS (a manifest, or a `deconvjax simulate` folder) on Dask."),
    "sample-survey": ("deconvjax.survey._cli_sample:sample_survey",
                      "Posterior samples of every cutout of CUTOUTS (a manifest, or a `deconvjax simulate` folder) with..."),
    "sample": ("deconvjax.posterior._cli:sample",
               "Posterior samples of a galaxy from one or several IMAGES (FITS) of any size, pixel scale and flux..."),
    "data": ("deconvjax.data._cli:data",
             "Data at hand: where the shipped COSMOS galaxies are, and GalSim's full COSMOS sample."),
}


def load_command(name: str) -> click.Command:
    """The click command of a lazily loaded subcommand."""
    module, attribute = _COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), attribute)


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx, name):
        if name in _COMMANDS and name not in self.commands:
            self.add_command(load_command(name), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            if name in _COMMANDS and name not in self.commands:
                rows.append((name, _COMMANDS[name][1]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="deconvjax")
def main():
    """deconvjax: forward modelling, deblending and deconvolution of astronomical images.

    Compiled programs are cached in ~/.cache/deconvjax/jax (or $XDG_CACHE_HOME), so a
    second run on images of the same size compiles nothing; set DECONVJAX_CACHE_DIR to
    another folder, or to "off".
    """
    from ._cache import enable_compilation_cache

    enable_compilation_cache()


@main.command()
@click.option("--out", "out_dir", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the picture, catalog and FITS files.")
@click.option("--seed", default=0, show_default=True, help="Seed of the simulated field.")
@progress_option
def demo(out_dir, seed, progress):
    """Simulate the embedded LSST-like blended field, fit it, and write a picture and a catalog."""
    from .fit.demo import run_demo

    written = run_demo(out_dir, seed=seed, progress=progress)
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
