#!/usr/bin/env bash
# Reproduce the shipped galaxy prior deconvjax/data/prior/galaxy32.eqx (see its README.md).
# 80 COSMOS stamps (every 5th catalog row is held out for evaluation) repeated 4x + 1200 GalSim
# bulge+disk galaxies, 32x32 single band, U-Net widths 16,32,32, batch 16.
# Rerun the same command to resume after an interruption.
set -euo pipefail
# The shared data folder beside the checkout, unless $COSMOS says otherwise.
COSMOS=${COSMOS:-"$(cd "$(dirname "$0")/../.." && pwd)/shared/data/cosmos"}
OUT=${OUT:-deconvjax/data/prior/galaxy32.eqx}
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
exec python -c 'from deconvjax.diffusion._cli import train_prior; train_prior()' \
  --data "$COSMOS" --cosmos-holdout-every 5 --cosmos-repeat 4 --simulate 1200 \
  --size 32 --channels 16,32,32 --batch-size 16 --lr 2e-3 --steps 4000 \
  --checkpoint-every 250 --max-minutes "${MAX_MINUTES:-24}" --seed 0 --out "$OUT" "$@"
