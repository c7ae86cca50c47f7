#!/usr/bin/env bash
# The README's fine-tuning workflow, measured: from a generalist to experts (full and LoRA) to a T^3 evaluation.
# The generalist is the default zoo's (trained here on first use, ~3 min); yours would be e.g. a BiomedCLIP folder.
#   TCUBE_DATA_DIR=../shared/data/medmnist scripts/finetune_demo.sh [OUT_DIR] [DATA]
# Then: python scripts/finetune_report.py OUT_DIR  (the README's table). A rerun skips finished steps.
set -euo pipefail
out=${1:-runs/finetune}
data=${2:-retina}
python -m tcube.zoo --only generalist --no-progress
gen="local-dir:${TCUBE_HOME:-$HOME/.cache/tcube}/zoo/default/seed0/generalist"
# the zoo's own expert schedule (120 steps of 64; full at its lr 1e-3) for both modes; LoRA on attention and MLP,
# rank 8, at lr 3e-3, chosen on Retina's val split against 1e-3 (selected val top-1 57.5 vs 55.8 of 120 images)
common=(generalist="$gen" data="$data" steps=120 batch_size=64 eval_every=20 progress=false)
declare -A lr=([full]=1e-3 [lora]=3e-3)
for mode in full lora; do
  folder="$out/$data-$mode"
  if [ ! -f "$folder/manifest.json" ]; then
    /usr/bin/time -f "$mode fine-tune: %e s wall" python -m tcube.finetune "${common[@]}" mode="$mode" lr="${lr[$mode]}" \
      'lora.targets=[attn,mlp]' out="$folder"
  fi
  /usr/bin/time -f "$mode evaluation: %e s wall" python -m tcube.eval model=local model.generalist="$gen" \
    model.expert="local-dir:$(cd "$folder" && pwd)" data="$data" protocol=all 'protocol.severities=[3]' \
    progress=false plots=false hydra.run.dir="$out/eval-$data-$mode"
done
