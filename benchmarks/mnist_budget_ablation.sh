#!/bin/bash
# The equal-time checks behind the budget ladder for 28x28 images and their latents (issue 25;
# BENCHMARKS.md "Budget-aware defaults: the mnist5k ablation"). Each row trains on mnist5k on
# one thread (two rows at a time, side by side), samples 2,500 images with the run's sampler and
# scores them against a fixed half of mnist5k in the project's mnist features (the other half
# scores 1.04 against it). Pixel rows: 8 minutes. Latent rows: one fixed autoencoder (the one
# `train --latent` trained in the first latent row, 144 s), then 336 s of diffusion each.
#
#   bash benchmarks/mnist_budget_ablation.sh [OUT]      # about 50 minutes on a 2-core machine
#
# The pixel rows name their network in full with --preset small (so no ladder choice applies).
set -euo pipefail
OUT=${1:-runs/mnist_budget_ablation}
PY=${PYTHON:-.venv/bin/python}
U="$PY -m undiffuse"
mkdir -p "$OUT"
$PY - "$OUT" <<'PY'
import sys
import numpy as np
from undiffuse.metrics.mnist_features import mnist_data
x, _ = mnist_data()
perm = np.random.default_rng(0).permutation(len(x))
np.savez(f"{sys.argv[1]}/reference.npz", samples=x[perm[2500:]])
PY

one() {  # NAME BUDGET OPTIONS...: train on one thread, sample 2,500, score
  local name=$1 budget=$2; shift 2
  export OMP_NUM_THREADS=1
  $U train --data mnist5k --time-budget "$budget" --out "$OUT/$name" --no-progress "$@" > "$OUT/$name.log" 2>&1
  $U sample --checkpoint "$OUT/$name" --num 2500 --format npz --out "$OUT/$name.npz" --no-progress >> "$OUT/$name.log" 2>&1
  $U evaluate "$OUT/$name.npz" --reference "$OUT/reference.npz" --features mnist --json --out "$OUT/$name.json" > /dev/null
}
NET="--preset small --set model.dropout=0 --set optim.lr=0.004 --set optim.warmup_steps=200 --set ema.halflife_samples=50000 --set sample.steps=10 --set diffusion.sigma_data=0.6"
P2="--set model.channels=32 --set model.channel_mult=[1,2] --set model.num_res_blocks=2 --set model.attention_levels=[1] --set model.patch_size=2"
P2W="--set model.channels=48 --set model.channel_mult=[1,2,2] --set model.num_res_blocks=1 --set model.attention_levels=[1,2] --set model.head_channels=48 --set model.patch_size=2"
one pixels_unet-32-p2 8m $NET $P2 &  one pixels_unet-48-p2 8m $NET $P2W & wait
one latent_route 8m --latent   # the autoencoder the latent rows share: $OUT/latent_route/autoencoder
AE="--latent --autoencoder $OUT/latent_route/autoencoder"
one emoji-latent_net 336s $AE --preset emoji-latent &
one unet-32_b32 336s $AE --set optim.lr=0.004 --set optim.batch_size=32 --set diffusion.p_mean=-0.4 & wait
one unet-32_b32_p-1.2 336s $AE --set optim.lr=0.004 --set optim.batch_size=32 &
one 32x12_b32 336s $AE --set optim.lr=0.004 --set optim.batch_size=32 --set diffusion.p_mean=-0.4 --set model.kind=unet \
    --set model.channels=32 --set model.channel_mult=[1,2] --set model.num_res_blocks=2 --set model.attention_levels=[1] \
    --set model.head_channels=32 --set model.dropout=0 & wait
one unet-32_b32_p0 336s $AE --set optim.lr=0.004 --set optim.batch_size=32 --set diffusion.p_mean=0.0 &
one unet-32_b64 336s $AE --set optim.lr=0.004 --set optim.batch_size=64 --set diffusion.p_mean=-0.4 & wait

$PY - "$OUT" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(f"{sys.argv[1]}/*.json")):
    r = json.load(open(path))
    if "fd" in r:
        rows = [json.loads(l) for l in open(os.path.join(path[:-5], "log.jsonl")) if '"step"' in l]
        print(os.path.basename(path)[:-5], f"steps {rows[-1]['step']}", f"fd {r['fd']:.2f} precision {r['precision']:.3f} "
              f"recall {r['recall']:.3f} copy_rate {r['copy_rate']}")
PY
