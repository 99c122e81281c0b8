"""``deconvjax data``: the data at hand (the shipped COSMOS subset) and GalSim's full COSMOS sample."""

from __future__ import annotations

from pathlib import Path

import click

from . import COSMOS_SAMPLES


@click.group("data")
def data():
    """Data at hand: where the shipped COSMOS galaxies are, and GalSim's full COSMOS sample."""


@data.command("cosmos")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder to download GalSim's COSMOS training sample into (it unpacks to "
                   "OUT/COSMOS_<sample>_training_sample); without it, print the folder of the 21 galaxies "
                   "shipped with deconvjax and download nothing.")
@click.option("--sample", type=click.Choice(COSMOS_SAMPLES), default="25.2", show_default=True,
              help="Magnitude limit of GalSim's sample: 23.5 (smaller) or 25.2 (4 GB download, 6 GB unpacked).")
@click.option("--force", is_flag=True, help="Download again even if OUT already holds the sample.")
def cosmos(out_dir, sample, force):
    """Fetch GalSim's full COSMOS sample into --out (as galsim_download_cosmos does).

    Needs the internet; with no network it fails with a message, and the 21 galaxies shipped
    with deconvjax (`deconvjax.data.cosmos_path()`) stay at hand. Point DECONVJAX_COSMOS at
    the unpacked folder to use it wherever deconvjax reads COSMOS.
    """
    from . import CosmosDownloadError, cosmos_path, download_cosmos

    if out_dir is None:
        click.echo(f"shipped COSMOS subset (21 galaxies): {cosmos_path()}")
        return
    try:
        folder = download_cosmos(out_dir, sample, force=force)
    except CosmosDownloadError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"COSMOS {sample} sample in {folder}\nuse it: export DECONVJAX_COSMOS={folder}")
