#!/usr/bin/env bash
# Reproduce the shipped galaxy prior deconvjax/data/prior/galaxy32.eqx (see its README.md).
# 80 COSMOS stamps (every 5th catalog row is held out for evaluation) repeated 4x + 1200 GalSim
# bulge+disk galaxies, 32x32 single band, U-Net widths 16,32,32, batch 16.
# Rerun the same command to resume after an interruption.
set -euo pipefail
# The 100-galaxy COSMOS sample (real_galaxy_catalog_26_extension_example.fits, 100 rows):
# $COSMOS, else $DECONVJAX_COSMOS. The subset shipped in deconvjax/data/cosmos holds only
# the 21 galaxies the prior is evaluated on, not its training set.
COSMOS=${COSMOS:-${DECONVJAX_COSMOS:-}}
if [ -z "$COSMOS" ]; then
  echo "set COSMOS (or DECONVJAX_COSMOS) to the 100-galaxy COSMOS sample's folder" >&2
  exit 2
fi
OUT=${OUT:-deconvjax/data/prior/galaxy32.eqx}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec python -c 'from deconvjax.diffusion._cli import train_prior; train_prior()' \
  --data "$COSMOS" --cosmos-holdout-every 5 --cosmos-repeat 4 --simulate 1200 \
  --size 32 --channels 16,32,32 --batch-size 16 --lr 2e-3 --steps 4000 \
  --checkpoint-every 250 --max-minutes "${MAX_MINUTES:-24}" --seed 0 --out "$OUT" "$@"
