#!/usr/bin/env bash
# One prepared pass on a lent GPU machine (1 GPU, 16 CPU cores), in this order:
#  1. throughput (bench/throughput.py --device cuda): dcgan32 and resnet32, fp32 (TF32) / bf16 / fp16,
#     against plain eager fp32 in the same process, alone on the machine; then torch.compile at one size;
#  2. time to good digits with the quick-start preset on the GPU (bench/time_to_quality.py), alone;
#  3. at the same time (timings not reported from this phase):
#     - the CUDA training path end to end in each precision: train, resume (GradScaler state for fp16),
#       conditional sampling, evaluation;
#     - Stacked MNIST arms at the step count that 30 minutes of the 2-core CPU reaches (~21,000 steps),
#       several at once on the one GPU, each capped by the wall-clock time left of BUDGET seconds (default 545).
# Everything lands in $OUT: log.txt, and all.tgz with the logs and JSON. Usage on the machine, from the repository root:
#   GANFORGE_DATA=DIR OUT=DIR bash bench/gpu_check.sh
# Where torch-fidelity is missing there, carry its wheel in .whl/ (see the device tool's README).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
END=$(( $(date +%s) + ${BUDGET:-545} ))  # the whole pass ends by then (the sweep's cap is what is left)
W=$(mktemp -d)
O="$W/o"  # everything comes back as $OUT/all.tgz (refreshed after each phase) and $OUT/log.txt
mkdir -p "$O"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; tar czf "$OUT/all.tgz" -C "$O" . 2>/dev/null; }
log start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import torch, torch_fidelity; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/log.txt"

log "1. throughput"
timeout 170 python3 bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 64 256 1024 \
  --precisions fp32 bf16 --reps 3 --out "$O/throughput_cuda.json" > "$O/throughput.log" 2>&1
timeout 60 python3 bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 256 \
  --precisions fp16 --reps 3 --out "$O/throughput_cuda_fp16.json" >> "$O/throughput.log" 2>&1
timeout 120 python3 bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 256 \
  --precisions bf16 --compile --reps 3 --out "$O/throughput_cuda_compile.json" >> "$O/throughput.log" 2>&1
grep -v "^{" "$O/throughput.log" | tail -40

log "2. time to good digits"
timeout 90 python3 bench/time_to_quality.py --preset mnist-fast --seconds 60 --every 250 \
  --set train.device=cuda --out-dir "$W/ttq" > "$O/ttq.log" 2>&1
cp "$W"/ttq/*.json "$O"/ 2>/dev/null
tail -20 "$O/ttq.log"

SWEEP_SECONDS=$(( END - $(date +%s) - 75 ))
log "3. stacked MNIST arms (cap ${SWEEP_SECONDS} s each) + CUDA smoke"
declare -A ARMS=(
  [preset-s0]="train.seed=0"
  [preset-s1]="train.seed=1"
  [r1every4-s0]="reg.r1_interval=4"
  [g48-s0]="model.g_channels=48"
  [ema-s0]="train.ema_beta=0.999"
  [lr5e-4-s0]="optim.g_lr=5.0e-4,optim.d_lr=5.0e-4"
)
for name in "${!ARMS[@]}"; do
  timeout $((SWEEP_SECONDS + 60)) python3 bench/equal_budget.py --device cuda --seconds "$SWEEP_SECONDS" --n 26000 \
    --out-dir "$W/stacked/$name" --runs "$name=stacked-mnist:${ARMS[$name]},train.steps=21000" \
    > "$W/stacked_$name.log" 2>&1 &
done
(
  for P in fp32 bf16 fp16; do
    R="$W/runs/smoke-$P"
    python3 -m ganforge train --preset mnist-fast --data mnist --device cuda --precision "$P" --steps 300 \
      --runs-dir "$W/runs" --name "smoke-$P" --no-progress > "$W/smoke_$P.log" 2>&1 \
    && python3 -m ganforge train --resume "$R" --steps 400 --no-progress >> "$W/smoke_$P.log" 2>&1 \
    && python3 -m ganforge sample "$R" --class 7 --n 16 --device cuda --out "$W/seven_$P.png" >> "$W/smoke_$P.log" 2>&1 \
    && python3 -m ganforge eval "$R" --n 2000 --device cuda --metrics fid,kid,modes,cas >> "$W/smoke_$P.log" 2>&1
    echo "smoke $P: exit $?"; grep -iE "error|traceback|fid|step 400|modes|cas" "$W/smoke_$P.log" | tail -12
  done
) > "$O/smoke.log" 2>&1
wait
log "done"
cat "$O/smoke.log"
for name in "${!ARMS[@]}"; do
  echo "== $name (${ARMS[$name]})"; grep -v "^ganforge" "$W/stacked_$name.log" | grep -E "^\|" | tail -3
  cp "$W/stacked/$name/equal_budget_stacked-mnist.json" "$W/stacked_$name.json" 2>/dev/null
done | tee "$O/stacked.txt"
cp "$W"/stacked_*.json "$W"/stacked_*.log "$W"/smoke_*.log "$W"/seven_*.png "$O"/ 2>/dev/null
log end
