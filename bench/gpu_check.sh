#!/usr/bin/env bash
# One prepared pass on a lent GPU machine (1 GPU, 16 CPU cores), in this order:
#  1. throughput (bench/throughput.py --device cuda): dcgan32 and resnet32, fp32 (TF32) / bf16 / fp16,
#     against plain eager fp32 in the same process, alone on the machine; then torch.compile at one size;
#  2. time to good digits with the quick-start preset on the GPU (bench/time_to_quality.py), alone;
#  3. the CUDA training path end to end in bf16 and fp16: train, resume (GradScaler state for fp16),
#     conditional sampling, evaluation;
#  4. only with SWEEP=1: Stacked MNIST arms at the step count that 30 minutes of the 2-core CPU reaches
#     (~21,000 steps), several at once on the one GPU, capped by what is left of BUDGET seconds (default 545).
#  5. with CIFAR=1 *instead of* phases 1-4 (the device budget holds one or the other): the CPU's CIFAR-10
#     recipe (--preset cifar10-fast, issue #27) trained for CIFAR_MINUTES (default 10) on the GPU by
#     bench/cifar_budget.py, scored by the same yardstick as on the CPU (10k generated vs the 50k training
#     images, cifar10 domain extractor); with INCEPTION_WEIGHTS=FILE (pt_inception-2015-12-05) also
#     Inception FID/KID of the final checkpoint against the 50k (`ganforge eval --extractor inception`).
#     About CIFAR_MINUTES + 3 minutes.
# Phases 1-3 take about 9 minutes on an H200 (2026-11-28: phases 1-2 took 6.5 min; the smoke about 50 s a
# precision); the sweep of 2026-11-28 got 61 s and finished nothing, so it is off by default.
# Everything lands in $OUT: log.txt, and all.tgz with the logs and JSON. Usage on the machine, from the repository root:
#   GANFORGE_DATA=DIR OUT=DIR bash bench/gpu_check.sh
# Where torch-fidelity is missing there, carry its wheel in .whl/ (see the device tool's README).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:${PYTHONPATH:-}"
END=$(( $(date +%s) + ${BUDGET:-545} ))  # the optional sweep is capped by what is left of this (phases 1-3 are not)
W=$(mktemp -d)
O="$W/o"  # everything comes back as $OUT/all.tgz (refreshed after each phase) and $OUT/log.txt
mkdir -p "$O"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/log.txt"; tar czf "$OUT/all.tgz" -C "$O" . 2>/dev/null; }
log start
if [ "${CIFAR:-0}" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/log.txt"
  log "5. CIFAR-10 recipe for ${CIFAR_MINUTES:-10} minutes"
  timeout $(( ${CIFAR_MINUTES:-10} * 60 + 240 )) python3 bench/cifar_budget.py --device cuda \
    --minutes "${CIFAR_MINUTES:-10}" --arms "cifar10-fast-gpu=cifar10-fast" --keep "$W/cifar" --out "$O/cifar_budget" \
    > "$O/cifar.log" 2>&1
  tail -8 "$O/cifar.log" | tee -a "$OUT/log.txt"
  if [ -n "${INCEPTION_WEIGHTS:-}" ]; then
    timeout 180 python3 -m ganforge eval "$W/cifar/cifar10-fast-gpu" --device cuda --extractor inception \
      --inception-weights "$INCEPTION_WEIGHTS" --ref cifar10:train --n-ref all --n 10000 --metrics fid,kid \
      --out "$O/cifar_inception_eval.json" > "$O/cifar_inception.log" 2>&1
    tail -8 "$O/cifar_inception.log" | tee -a "$OUT/log.txt"
  fi
  log end
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/log.txt"
python3 -c "import torch, torch_fidelity; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/log.txt"

log "1. throughput"
timeout 200 python3 bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 64 256 1024 \
  --precisions fp32 bf16 --reps 3 --out "$O/throughput_cuda.json" > "$O/throughput.log" 2>&1
timeout 60 python3 bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 256 \
  --precisions fp16 --reps 3 --out "$O/throughput_cuda_fp16.json" >> "$O/throughput.log" 2>&1
timeout 120 python3 bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 256 \
  --precisions bf16 --compile --reps 3 --out "$O/throughput_cuda_compile.json" >> "$O/throughput.log" 2>&1
grep -v "^{" "$O/throughput.log" | tail -40

log "2. time to good digits"
timeout 75 python3 bench/time_to_quality.py --preset mnist-fast --seconds 45 --every 250 \
  --set train.device=cuda --out-dir "$W/ttq" > "$O/ttq.log" 2>&1
cp "$W"/ttq/*.json "$O"/ 2>/dev/null
tail -20 "$O/ttq.log"

log "3. CUDA smoke (train, resume, sample, eval in bf16 and fp16)"
for P in bf16 fp16; do  # fp32, the GPU default, trained in phase 2 (resume, sample and eval not checked in fp32)
  R="$W/runs/smoke-$P"
  (timeout 100 python3 -m ganforge train --preset mnist-fast --data mnist --device cuda --precision "$P" --steps 300 \
     --runs-dir "$W/runs" --name "smoke-$P" --no-progress \
   && timeout 60 python3 -m ganforge train --resume "$R" --steps 400 --no-progress \
   && timeout 30 python3 -m ganforge sample "$R" --class 7 --n 16 --device cuda --out "$O/seven_$P.png" \
   && timeout 60 python3 -m ganforge eval "$R" --n 2000 --device cuda --metrics fid,kid,modes) > "$O/smoke_$P.log" 2>&1
  echo "smoke $P: exit $?" | tee -a "$OUT/log.txt"; grep -E "^  (fid|classes_covered) " "$O/smoke_$P.log"
  tar czf "$OUT/all.tgz" -C "$O" . 2>/dev/null
done

if [ "${SWEEP:-0}" = 1 ]; then  # optional: Stacked MNIST arms at the CPU's 30-minute step count, several at once
  SWEEP_SECONDS=$(( END - $(date +%s) - 75 ))
  [ "$SWEEP_SECONDS" -ge 60 ] || { log "4. no time left for the sweep"; SWEEP_SECONDS=0; }
  log "4. stacked MNIST arms (cap ${SWEEP_SECONDS} s each)"
  declare -A ARMS=([preset-s0]="train.seed=0" [preset-s1]="train.seed=1" [r1every4-s0]="reg.r1_interval=4")
  for name in "${!ARMS[@]}"; do
    [ "$SWEEP_SECONDS" -gt 0 ] || break
    timeout $((SWEEP_SECONDS + 60)) python3 bench/equal_budget.py --device cuda --seconds "$SWEEP_SECONDS" --n 26000 \
      --out-dir "$O/stacked_$name" --runs "$name=stacked-mnist:${ARMS[$name]},train.steps=21000" \
      > "$O/stacked_$name.log" 2>&1 &
  done
  wait
fi
log end
