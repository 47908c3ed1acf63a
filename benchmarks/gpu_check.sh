#!/usr/bin/env bash
# The GPU measurements behind README's GPU figures (docs/engine.md, docs/classification.md).
# Usage (from the repository root): bash benchmarks/gpu_check.sh OUTDIR [STEP ...]
# Steps, all by default, in this order (the ones not measured yet first; about 12 minutes on one H100
# for all of them, so split them over calls where a call is limited to 10 minutes):
#   profile         the operators that take the most GPU time in a ShuffleNet 1x C4 training step
#   throughput      detector training/inference img/s and peak memory beside torchvision's MobileNet v3 FPN
#   recipe          ShuffleNet 1x with torchvision's pre-NMS proposal count in training (2000, ours 12000),
#                   then with the batched RPN NMS (SHUFFLENET_DET.RPN_NMS_IMPL batched)
#   compile         the same throughput with torch.compile on the per-RoI head
#   train2x         a real ShuffleNet 2x run at 600px, batch 16, on the synthetic data
#   quickstart      a real quickstart run on the synthetic data (data loader share, inference time)
#   classification  classifier throughput at batch 256, grouped and dense 1x1 convs
set -u
out=${1:?usage: benchmarks/gpu_check.sh OUTDIR [STEP ...]}
shift
steps=${*:-profile throughput recipe compile train2x quickstart classification}
mkdir -p "$out"
log="$out/gpu_check.log"
note() { echo "=== $* ($(date +%T))" | tee -a "$log"; }

note environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$log"

run_training() {  # name, config, then KEY VALUE overrides
  local name=$1 config=$2
  shift 2
  timeout 200 python tools/train_net.py --config "$config" OUTPUT_DIR "/tmp/$name" MODEL.DEVICE cuda \
      SOLVER.AMP.ENABLED True SHUFFLENET_DET.CHANNELS_LAST True SHUFFLENET_DET.TORCH_THREADS 0 \
      SHUFFLENET_DET.LOG_PERIOD 50 "$@" > "$out/$name.log" 2>&1
  echo "exit status $?" | tee -a "$log"
  grep -E "Ran [0-9]+ iterations|max_mem|Inference on|AP|Error|error" "$out/$name.log" | tail -12 | tee -a "$log"
}

for step in $steps; do
  note "$step"
  case $step in
    throughput)
      timeout 240 python -m benchmarks.training_throughput --models tv_mobilenet_v3_fpn shufflenet_1x shufflenet_2x \
          --variants dense+cl dense+cl+recompute --iters 10 --warmup 3 --json "$out/detector_throughput.json" 2>&1 \
          | tee -a "$log" ;;
    recipe)
      timeout 100 python -m benchmarks.training_throughput --models shufflenet_1x --variants dense+cl --iters 10 --warmup 3 \
          --skip-inference --json "$out/detector_recipe_prenms.json" MODEL.RPN.PRE_NMS_TOPK_TRAIN 2000 2>&1 \
          | grep -v "^W[0-9]" | tail -8 | tee -a "$log"
      timeout 100 python -m benchmarks.training_throughput --models shufflenet_1x --variants dense+cl --iters 10 --warmup 3 \
          --json "$out/detector_batched_nms.json" SHUFFLENET_DET.RPN_NMS_IMPL batched 2>&1 \
          | grep -v "^W[0-9]" | tail -8 | tee -a "$log" ;;
    profile)
      timeout 120 python -m benchmarks.training_throughput --models shufflenet_1x --variants dense+cl --profile \
          > "$out/profile.txt" 2>&1
      grep -v "^W[0-9]" "$out/profile.txt" | tail -32 | tee -a "$log" ;;
    compile)
      timeout 200 python -m benchmarks.training_throughput --models shufflenet_1x shufflenet_2x --variants dense+cl+compile \
          --iters 10 --warmup 3 --json "$out/detector_compile.json" 2>&1 | grep -v "^W[0-9]" | tail -8 | tee -a "$log" ;;
    classification)
      for config in shufflenet_1x_g3 shufflenet_2x_g3; do
        for impl in folded dense; do
          echo "--- $config SHUFFLENET_DET.CONV_IMPL $impl" | tee -a "$log"
          timeout 60 python tools/train_cls.py --config "$config" --benchmark --benchmark-iters 10 \
              SOLVER.IMS_PER_BATCH 256 SHUFFLENET_DET.CONV_IMPL "$impl" 2>&1 | grep -v "^\[W" | tail -4 | tee -a "$log"
        done
      done ;;
    quickstart)
      run_training quickstart quickstart DATALOADER.NUM_WORKERS 4 SOLVER.MAX_ITER 300 SOLVER.STEPS "(260,)" ;;
    train2x)
      run_training shufflenet_2x_synthetic shufflenet_2x_frcnn MODEL.WEIGHTS "" DATASETS.TRAIN "('synthetic_train',)" \
          DATASETS.TEST "('synthetic_val',)" MODEL.ROI_HEADS.NUM_CLASSES 5 SOLVER.IMS_PER_BATCH 16 \
          SOLVER.BASE_LR 0.002 SOLVER.MAX_ITER 150 SOLVER.STEPS "(120,)" SOLVER.WARMUP_ITERS 20 \
          SOLVER.CHECKPOINT_PERIOD 1000 DATALOADER.NUM_WORKERS 12 ;;
    *) echo "unknown step '$step'" | tee -a "$log" ;;
  esac
done
note done
