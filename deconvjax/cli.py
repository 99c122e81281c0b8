"""The ``deconvjax`` command line."""

import importlib

import click

# Subcommands load on first use: `deconvjax fit` does not import the diffusion and
# posterior packages, nor `--help` anything heavy beyond what listing them needs.
_COMMANDS = {
    "simulate": "deconvjax.sims._cli:simulate",
    "fit": "deconvjax.fit._cli:fit_command",
    "train-prior": "deconvjax.diffusion._cli:train_prior",
    "sample": "deconvjax.posterior._cli:sample",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx, name):
        if name in _COMMANDS and name not in self.commands:
            module, attribute = _COMMANDS[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


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
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def demo(out_dir, seed, no_progress):
    """Simulate the embedded LSST-like blended field, fit it, and write a picture and a catalog."""
    from .fit.demo import run_demo

    written = run_demo(out_dir, seed=seed, progress=not no_progress)
    for path in written:
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
