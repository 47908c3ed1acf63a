#!/usr/bin/env bash
# One pass of the GPU measurements behind README's GPU figures (docs/engine.md, docs/classification.md):
# detector training/inference throughput and peak memory beside torchvision's MobileNet v3 FPN
# detector, classification throughput at batch 256, and two real training runs on the synthetic
# dataset (the quickstart and ShuffleNet 2x at 600px) whose logs give the data loader's share.
# Usage: bash benchmarks/gpu_check.sh OUTDIR   (from the repository root; about 8 minutes on one H100)
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
log="$out/gpu_check.log"
step() { echo "=== $* ($(date +%T))" | tee -a "$log"; }

step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$log"

step detector throughput
timeout 240 python tools/benchmark_training.py --models tv_mobilenet_v3_fpn shufflenet_1x shufflenet_2x \
    --variants modules folded+cl dense+cl --iters 10 --warmup 3 --json "$out/detector_throughput.json" 2>&1 | tee -a "$log"

step classification throughput, batch 256
for config in shufflenet_1x_g3 shufflenet_2x_g3; do
  for impl in folded dense; do
    echo "--- $config SHUFFLENET_DET.CONV_IMPL $impl" | tee -a "$log"
    timeout 60 python tools/train_cls.py --config "$config" --benchmark --benchmark-iters 10 \
        SOLVER.IMS_PER_BATCH 256 SHUFFLENET_DET.CONV_IMPL "$impl" 2>&1 | grep -v "^\[W" | tail -4 | tee -a "$log"
  done
done

run_training() {  # name, config, then KEY VALUE overrides
  local name=$1 config=$2
  shift 2
  step "training run: $name"
  timeout 150 python tools/train_net.py --config "$config" OUTPUT_DIR "/tmp/$name" MODEL.DEVICE cuda \
      SOLVER.AMP.ENABLED True SHUFFLENET_DET.CHANNELS_LAST True SHUFFLENET_DET.CONV_IMPL dense \
      SHUFFLENET_DET.TORCH_THREADS 0 SHUFFLENET_DET.LOG_PERIOD 50 "$@" > "/tmp/$name.log" 2>&1
  echo "exit status $?" | tee -a "$log"
  grep -E "Ran [0-9]+ iterations|max_mem|Inference on|AP|Error|error" "/tmp/$name.log" | tail -12 | tee -a "$log"
}
run_training quickstart quickstart DATALOADER.NUM_WORKERS 4 SOLVER.MAX_ITER 300 SOLVER.STEPS "(260,)"
run_training shufflenet_2x_synthetic shufflenet_2x_frcnn MODEL.WEIGHTS "" DATASETS.TRAIN "('synthetic_train',)" \
    DATASETS.TEST "('synthetic_val',)" MODEL.ROI_HEADS.NUM_CLASSES 5 SOLVER.IMS_PER_BATCH 16 SOLVER.BASE_LR 0.002 \
    SOLVER.MAX_ITER 200 SOLVER.STEPS "(150,)" SOLVER.WARMUP_ITERS 20 SOLVER.CHECKPOINT_PERIOD 1000 \
    DATALOADER.NUM_WORKERS 12
cp /tmp/quickstart.log /tmp/shufflenet_2x_synthetic.log "$out/" 2>/dev/null

step "torch.compile of the per-RoI head"
timeout 200 python tools/benchmark_training.py --models shufflenet_1x shufflenet_2x --variants dense+cl+compile \
    --iters 10 --warmup 3 --json "$out/detector_compile.json" 2>&1 | grep -v "^W[0-9]" | tail -8 | tee -a "$log"
step done
