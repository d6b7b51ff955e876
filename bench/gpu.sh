#!/usr/bin/env bash
# One prepared GPU run (issue 16): random HealthGPT-M3 weights at full depth in bfloat16, then the
# serving benchmark at C=1/8/32 (official path, sequential, continuous batching, roofline), the H-LoRA
# benchmark at the released ranks and image generation (1,024 VQ tokens + VQGAN decode). Results:
# bench/results/{serving,hlora,image-gen}-gpu.json (or under $OUT where the device tool sets it).
# Planned to end within 10 minutes on one H100/H200; each step has its own time limit.
#
# The device machine has python3 with torch, transformers and CUDA, and no network. Once, here:
#   bench/gpu-wheels.sh            # the few wheels its image lacks, into .whl/ (git-ignored)
# then on the device: bench/gpu.sh, carrying .whl.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-bench/results}
MODEL=${MODEL_DIR:-/tmp/healthgpt-m3-random}
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
mkdir -p "$RESULTS"
step() { echo "== $(date +%T) $*"; }

step "random M3 weights, 32 layers, bfloat16 -> $MODEL"
if [ ! -f "$MODEL/healthgpt.yaml" ]; then
    timeout 240 "$PY" -c "
from pathlib import Path
from models.random_weights import build_random
print(build_random('m3', Path('$MODEL'), dtype='bfloat16', draw_on='cuda', progress=print))"
fi

step "serving: official (rebuild + generate) vs sequential vs engine, C=1,8,32"
timeout 330 "$PY" -m bench.serving --spec "$MODEL/healthgpt.yaml" --device cuda --concurrency 1,8,32 \
    --official-requests 2 --out "$RESULTS/serving-gpu.json"

step "H-LoRA layers at the released ranks"
timeout 90 "$PY" -m bench.hlora --device cuda --dtype bfloat16 --out "$RESULTS/hlora-gpu.json"

step "image generation: 1,024 VQ tokens + VQGAN decode"
timeout 120 "$PY" -m bench.image_gen --spec "$MODEL/healthgpt.yaml" --device cuda --runs 3 \
    --out "$RESULTS/image-gen-gpu.json"
step "done"
