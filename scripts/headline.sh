#!/usr/bin/env bash
# The README's headline table: the default run (zoo + every protocol × modality × method) for seeds
# 0, 1 and 2 (seed = zoo training seed and corruption RNG), then mean ± std over the seeds.
#   TCUBE_DATA_DIR=../shared/data/medmnist scripts/headline.sh [SWEEP_DIR] [extra overrides...]
# Re-running resumes (finished cells are skipped; trained zoo models are reused).
set -euo pipefail
out=${1:-runs/headline}
python -m tcube.eval -m seed=0,1,2 hydra.sweep.dir="$out" progress=false "${@:2}"
python -m tcube.report "$out"
