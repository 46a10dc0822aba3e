#!/usr/bin/env bash
# The benchmarks that were run on a lent GPU machine (1 GPU, 16 CPU cores) in one go:
#  - 2D mixtures (bench/mixtures.py), 10 seeds x {gan, preset} x {grid25, ring8}, on the CPU cores
#    (one thread per run, 14 runs at a time);
#  - CIFAR-10, seed-cifar vs cifar10-sngan, equal wall-clock budget each, on the GPU;
#  - Stacked MNIST, plain DCGAN vs the stacked-mnist preset, equal budget each, on the GPU
#    (the CIFAR-10 and Stacked MNIST pairs run at the same time on the one GPU).
# Usage: GANFORGE_DATA=DIR OUT=DIR bash bench/gpu_suite.sh [SECONDS_PER_GPU_RUN]
set -u
SECS=${1:-120}
WORK=$(mktemp -d)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/log.txt"
python3 bench/mixtures.py --jobs 14 --threads 1 --out "$OUT/mixtures.json" > "$OUT/mixtures.log" 2>&1 &
MIX=$!
python3 bench/equal_budget.py --device cuda --seconds "$SECS" --n 10000 --out-dir "$WORK/cifar" \
  --runs seed-cifar cifar10-sngan > "$WORK/cifar.log" 2>&1 &
CIF=$!
python3 bench/equal_budget.py --device cuda --seconds "$SECS" --n 26000 --out-dir "$WORK/stacked" \
  --runs "dcgan=stacked-mnist:model.pack=1,model.mbstd=false,train.ema_beta=null" stacked-mnist \
  > "$WORK/stacked.log" 2>&1 &
STK=$!
wait $CIF $STK
cp "$WORK"/cifar/equal_budget_cifar10.json "$WORK"/cifar/equal_budget_cifar10.png "$OUT"/ 2>/dev/null
cp "$WORK"/stacked/equal_budget_stacked-mnist.json "$WORK"/stacked/equal_budget_stacked-mnist.png "$OUT"/ 2>/dev/null
wait $MIX
for f in cifar stacked; do echo "== $f"; grep -v "^ganforge" "$WORK/$f.log" | tail -25; done | tee -a "$OUT/log.txt"; grep -v "^ganforge" "$OUT/mixtures.log" | tail -12
