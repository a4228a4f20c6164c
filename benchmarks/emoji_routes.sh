#!/bin/bash
# The first checks of the emoji text-to-image route (BENCHMARKS.md "Emoji text-to-image: first
# checks of the route", issue 18): the same 10 minutes of one CPU thread each, run side by side
# (one thread per run, so the two do not fight over OpenMP threads), then sampled and scored the
# same way. Not the ablation and not the peer benchmark (that is benchmarks/emoji_t2i.py).
#
#   bash benchmarks/emoji_routes.sh [OUT]      # about 25 minutes on a 2-core machine
#
#   pixels: the U-Net of the emoji preset on 4x4 pixel patches, 10 minutes;
#   latent: a 3-minute autoencoder (4 x 8 x 8 latents), then the same U-Net on latents, 7 minutes.
# Scoring: Heun 12 steps, guidance 3; 512 training prompts (first wording of 512 training emoji,
# numpy default_rng(123)) and the 352 held-out prompts; `undiffuse evaluate --reference emoji`.
# Run A of the table (2x2 patches) came from an earlier, unequal run and is not repeated here.
set -euo pipefail
OUT=${1:-runs/emoji_routes}
U="${PYTHON:-.venv/bin/python} -m undiffuse"
mkdir -p "$OUT"
export OMP_NUM_THREADS=1

${PYTHON:-.venv/bin/python} - "$OUT" <<'PY'
import sys
import numpy as np
from undiffuse import data
out = sys.argv[1]
train, held = data.load("emoji"), data.load("emoji:heldout")
pick = np.random.default_rng(123).choice(len(train), 512, replace=False)
open(f"{out}/train_prompts.txt", "w").write("\n".join(train.captions[i][0] for i in pick) + "\n")
open(f"{out}/heldout_prompts.txt", "w").write("\n".join(r[0] for r in held.captions) + "\n")
PY

OLD="--set diffusion.p_mean=-1.2 --set optim.batch_size=64 --set optim.lr=0.002"  # emoji-latent before the ablation
NET="--set model.channels=64 --set model.channel_mult=[1,2] --set model.attention_levels=[0,1]"
$U train --data emoji --conditioning text --no-latent --time-budget 10m --out "$OUT/pixels" --no-progress \
    $NET --set model.patch_size=4 > "$OUT/pixels.log" 2>&1 &
( $U train-autoencoder --data emoji --time-budget 3m --out "$OUT/ae" > "$OUT/ae.log" 2>&1 &&
  $U train --latent --autoencoder "$OUT/ae" --data emoji --conditioning text --time-budget 7m --out "$OUT/latent" \
      --no-progress $NET --set model.patch_size=1 $OLD > "$OUT/latent.log" 2>&1 ) &
wait

for run in pixels latent; do
  for split in train heldout; do
    $U sample --checkpoint "$OUT/$run" --prompts "$OUT/${split}_prompts.txt" --guidance 3 --format npz \
        --out "$OUT/$run.$split.npz" --no-progress
    $U evaluate "$OUT/$run.$split.npz" --reference emoji --json --out "$OUT/$run.$split.json" > /dev/null
  done
done
${PYTHON:-.venv/bin/python} - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
keys = ("fd", "clip_score", "prompt_accuracy", "precision", "recall", "copy_rate")
for run in ("pixels", "latent"):
    for split in ("train", "heldout"):
        r = json.load(open(f"{out}/{run}.{split}.json"))
        print(run, split, " ".join(f"{k} {r[k]:.3f}" for k in keys))
PY
