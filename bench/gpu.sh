#!/usr/bin/env bash
# The GPU measurements in one call, each under its own time limit (results and log in OUT):
#   bash bench/gpu.sh OUT            the trainer's (about 6 minutes on an H200):
#     bench/graphs.py   which training steps the trainer captures as CUDA graphs (every lowering x
#                       dropout x precision) and whether they train as the eager steps do;
#     bench/trainer.py  the trainer against the isolated step (eager, one CUDA graph) and a hand-written
#                       loop: DenseNet-BC-100-12 at batch 64 on CIFAR's shapes, densenet121 at batch 256;
#     bench/decode.py   JPEG decoding and the ImageNet transforms on the GPU against a CPU core's.
#   bash bench/gpu.sh OUT speed      bench/speed.py's rows against torchvision (under 8 minutes).
#   bash bench/gpu.sh OUT fused      bench/fused.py: the fused lowering's equality on the GPU, then its step
#                                    time and memory against naive and shared, its Triton kernels against
#                                    its ATen path, torchvision eager, and torch.compile max-autotune
#                                    apart (its compile may take minutes); under 8 minutes.
# On the lent machine, after the wheels prefix of ../shared/gpu/README.md.
set -uo pipefail
out=${1:-bench/results}
what=${2:-trainer}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$out/gpu.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
start=$SECONDS
step() {  # a limit in seconds, then the command
    local limit=$1
    shift
    echo "== $* (limit ${limit} s)"
    timeout "$limit" "$@"
    echo "== exit $?, $((SECONDS - start)) s so far"
}
if [ "$what" = fused ]; then
    step 300 python3 bench/fused.py --device cuda --rounds 10 --out "$out"
    step 170 python3 bench/fused.py --device cuda --rounds 5 --cases densenet121 --only "torchvision max-autotune" --out "$out"
    exit 0
fi
if [ "$what" = speed ]; then
    step 440 python3 bench/speed.py --device cuda --budget 250 --steps 15 --out "$out"
    exit 0
fi
step 120 python3 bench/graphs.py --device cuda --steps 30 --out "$out"
step 240 python3 bench/trainer.py --device cuda --rounds 3 --budget 200 --out "$out"
step 60 python3 bench/decode.py --device cuda --images 512 --out "$out"
