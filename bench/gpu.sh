#!/usr/bin/env bash
# Every GPU measurement of dnetc in one call (under 9 minutes on an H100), results in OUT:
#   bash bench/gpu.sh OUT
# 1. bench/gpu.py: DenseNet-BC-100-12 training steps in each speed configuration, and densenet121
#    against torchvision's; 2. the README's main job trained on the GPU with the CUDA defaults;
# 3. bench/memory.py --device cuda: peak memory and step time of each lowering.
# Each stage has its own time limit, so that a slow stage cannot take the others' results with it;
# everything printed goes to OUT/gpu.log.
set -uo pipefail
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/gpu.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
stage() {
  local limit=$1
  shift
  local start=$SECONDS
  echo "== $* (limit ${limit} s)"
  timeout "$limit" "$@"
  echo "== exit $?, $((SECONDS - start)) s"
}
stage 240 python3 bench/gpu.py --out "$out" --steps 30
stage 90 python3 -m runtime archs/densenet_bc_100_12.dnet --train digits --out /tmp/dnetc-digits
stage 200 python3 bench/memory.py --device cuda --steps 5 --out "$out"
