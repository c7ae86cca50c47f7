#!/usr/bin/env bash
# The README's mixed-stream results: one generalist and four experts (the `union` zoo profile) on the mixed
# protocol (clean stream + the five shared corruptions at severity 3) for seeds 0, 1 and 2, then the table
# and figure over seeds (scripts/mixed_report.py).
#   TCUBE_DATA_DIR=../shared/data/medmnist scripts/mixed.sh [OUT_DIR] [extra overrides...]
# Re-running resumes (finished cells are skipped; trained zoo models are reused).
set -euo pipefail
out=${1:-runs/mixed}
for seed in 0 1 2; do
  python -m tcube.eval protocol=mixed model.zoo_profile=union seed="$seed" hydra.run.dir="$out/seed$seed" \
    progress=false "${@:2}"
done
python scripts/mixed_report.py "$out"/seed0 "$out"/seed1 "$out"/seed2 --out "$out"
