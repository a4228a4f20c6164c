#!/bin/bash
# The emoji latent-route ablation behind the emoji-latent preset (BENCHMARKS.md "Emoji
# text-to-image: the latent recipe ablation", issue 18). One fixed autoencoder (3 minutes, two
# threads), then diffusion runs of 6 minutes each on one thread, two at a time side by side
# (one thread each, so they do not fight over OpenMP threads), each sampled (Heun 12, guidance
# 3) for 512 training prompts and scored by `undiffuse evaluate --reference emoji`.
#
#   bash benchmarks/emoji_ablation.sh [OUT]      # about 50 minutes on a 2-core machine
#
# The rows were run with the preset as it was before the ablation (p_mean -1.2, batch 64,
# lr 2e-3); each row names its overrides. The preset now holds the winner, so "base" here
# spells the old values out.
set -euo pipefail
OUT=${1:-runs/emoji_ablation}
PY=${PYTHON:-.venv/bin/python}
U="$PY -m undiffuse"
mkdir -p "$OUT"

$PY - "$OUT" <<'PY'
import sys
import numpy as np
from undiffuse import data
train = data.load("emoji")
pick = np.random.default_rng(123).choice(len(train), 512, replace=False)
open(f"{sys.argv[1]}/train_prompts.txt", "w").write("\n".join(train.captions[i][0] for i in pick) + "\n")
PY
[ -e "$OUT/ae/autoencoder.json" ] || OMP_NUM_THREADS=2 $U train-autoencoder --data emoji --time-budget 3m --out "$OUT/ae"

OLD="--set diffusion.p_mean=-1.2 --set optim.batch_size=64 --set optim.lr=0.002"
one() {  # NAME OVERRIDES...: train 6 minutes on one thread, sample, score
  local name=$1; shift
  export OMP_NUM_THREADS=1
  $U train --latent --autoencoder "$OUT/ae" --data emoji --conditioning text --time-budget 6m --out "$OUT/$name" \
      --no-progress $OLD "$@" > "$OUT/$name.log" 2>&1
  $U sample --checkpoint "$OUT/$name" --prompts "$OUT/train_prompts.txt" --guidance 3 --format npz \
      --out "$OUT/$name.npz" --no-progress > /dev/null
  $U evaluate "$OUT/$name.npz" --reference emoji --json --out "$OUT/$name.json" > /dev/null
}
one base &                                                                    one p_mean=-0.4 --set diffusion.p_mean=-0.4 & wait
one p_mean=0 --set diffusion.p_mean=0.0 &                                     one p-0.4,b32 --set diffusion.p_mean=-0.4 --set optim.batch_size=32 & wait
one p-0.4,b32,ch96 --set diffusion.p_mean=-0.4 --set optim.batch_size=32 --set model.channels=96 &
one p-0.4,b32,lr4e-3 --set diffusion.p_mean=-0.4 --set optim.batch_size=32 --set optim.lr=0.004 & wait
one p-0.4,b32,lr6e-3 --set diffusion.p_mean=-0.4 --set optim.batch_size=32 --set optim.lr=0.006 &
one p-0.4,b16,lr4e-3 --set diffusion.p_mean=-0.4 --set optim.batch_size=16 --set optim.lr=0.004 & wait

$PY - "$OUT" <<'PY'
import glob, json, os, sys
keys = ("fd", "clip_score", "prompt_accuracy", "precision", "recall", "copy_rate")
for path in sorted(glob.glob(f"{sys.argv[1]}/*.json")):
    r = json.load(open(path))
    if "fd" in r:
        last = json.loads(open(os.path.join(path[:-5], "log.jsonl")).read().splitlines()[-1])
        print(os.path.basename(path)[:-5], f"steps {last['step']}", " ".join(f"{k} {r[k]:.3f}" for k in keys))
PY
