#!/usr/bin/env bash
# The speed issue's GPU numbers in one call, under 8 minutes on an H100 (results and log in OUT):
#   bash bench/gpu.sh OUT
# bench/speed.py: densenet121/169 at batch 256 against torchvision's (fp32; bf16 + channels_last;
# compiled), the shared and checkpoint lowerings, fused SGD, DenseNet-BC-100-12 at batch 64 eager,
# as a CUDA graph and compiled with CUDA graphs. No row starts being built after 250 s, so that the
# timed steps of every row built still fit; rows left out are named in the results.
# The other GPU measurements have their own commands: bench/gpu.py (BC-100 configurations next to
# the authors' TitanX), bench/memory.py --device cuda and bench/lowerings.py --device cuda.
set -uo pipefail
out=${1:-bench/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/gpu.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
start=$SECONDS
timeout 440 python3 bench/speed.py --device cuda --budget 250 --steps 15 --out "$out"
echo "== exit $?, $((SECONDS - start)) s"
