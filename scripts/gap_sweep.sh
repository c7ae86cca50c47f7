#!/usr/bin/env bash
# The gap sweep (not the default run): zoos at several generalist shares x 3 seeds, a reduced protocol,
# then each adaptive method against WiSE-FT(0.5) by the zoo's in-domain generalist-expert gap.
#   TCUBE_DATA_DIR=../shared/data/medmnist scripts/gap_sweep.sh [SWEEP_DIR] [extra overrides...]
# Reduced, to fit 2 cores: the methods below; corruption at severity 3 only (48 seeded images per cell).
# The profiles differ only in generalist_fraction (tcube/zoo/recipe.py; `full` = every label, round one's zoo).
# Re-running resumes: trained zoos and finished cells are kept, so the sweep can span sessions.
set -euo pipefail
out=${1:-runs/gap}
python -m tcube.eval -m model.zoo_profile=share05,default,share25,full seed=0,1,2 \
  'method.methods=[generalist,expert,wise_ft,t3,t3_batch,dawin,t3_cal]' 'protocol.severities=[3]' \
  hydra.sweep.dir="$out" progress=false "${@:2}"
python scripts/gap_report.py "$out"
