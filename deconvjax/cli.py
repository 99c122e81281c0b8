"""The ``deconvjax`` command line."""

import click

from .diffusion._cli import train_prior
from .fit._cli import fit_command
from .posterior._cli import sample
from .sims._cli import simulate


@click.group()
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


main.add_command(simulate)
main.add_command(fit_command)
main.add_command(train_prior)
main.add_command(sample)

if __name__ == "__main__":
    main()
