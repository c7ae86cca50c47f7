#!/usr/bin/env bash
# The gap sweep (not the default run): zoos at several generalist shares x 3 seeds, a reduced protocol,
# then each adaptive method against WiSE-FT(0.5) by the zoo's in-domain generalist-expert gap.
#   TCUBE_DATA_DIR=../shared/data/medmnist [SEEDS=0,1,2] scripts/gap_sweep.sh [SWEEP_DIR] [extra overrides...]
# Reduced, to fit 2 cores: the methods below; corruption at severity 3 only (48 seeded images per cell).
# The profiles differ only in generalist_fraction (tcube/zoo/recipe.py; `full` = every label, round one's generalist).
# Re-running resumes: trained zoos and finished cells are kept, so the sweep can span sessions. Each job's folder
# is named by its profile and seed (not Hydra's job number), so SEEDS=0 now and SEEDS=1,2 later fill one sweep.
set -euo pipefail
out=${1:-runs/gap}
python -m tcube.eval -m model.zoo_profile=share05,default,share25,full seed="${SEEDS:-0,1,2}" \
  'method.methods=[generalist,expert,wise_ft,t3,t3_batch,dawin,t3_cal]' 'protocol.severities=[3]' \
  hydra.sweep.dir="$out" 'hydra.sweep.subdir=${model.zoo_profile}-seed${seed}' progress=false "${@:2}"
python scripts/gap_report.py "$out"
