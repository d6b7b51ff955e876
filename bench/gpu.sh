#!/usr/bin/env bash
# One prepared GPU run (issue 16): random HealthGPT-M3 weights at full depth in bfloat16, then the decode
# steps recorded as CUDA graphs checked against the ordinary step, the H-LoRA benchmark at the released
# ranks, the serving benchmark at C=1/8/32 (official path, sequential, continuous batching, roofline with
# and without graphs), image generation (1,024 VQ tokens + VQGAN decode) and where a decode step's time
# goes. Results: {decode-graphs,serving,hlora,image-gen,step-profile}-gpu.json and the log gpu.log under
# $OUT where the device tool sets it, else bench/results. Sized for a 15-minute lease on one H100/H200
# from what two runs on an H200 took (build 33 s, H-LoRA 16 s, serving at C=8/32 156 s): each step has
# its own time limit (at most about 10 minutes in all) and one that fails or runs out does not stop the
# next; reports are rewritten as each step goes, so a cut step keeps what it finished.
#
# The device machine has python3 with torch, transformers and CUDA, and no network. Once, here:
#   bench/gpu-wheels.sh            # the few wheels its image lacks, into .whl/ (git-ignored)
# then on the device: bench/gpu.sh, carrying .whl.
#
# A dry run of the same steps on a CPU (minutes, M3 width, one layer):
#   DEVICE=cpu DTYPE=float32 LAYERS=1 CONCURRENCY=1 PYTHON=.venv/bin/python OUT=/tmp/gpu-dry bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
LAYERS=${LAYERS:-}              # empty: the released depth
CONCURRENCY=${CONCURRENCY:-1,8,32}
STEPS=${STEPS:-graphs,hlora,serving,image,profile}   # which steps, in this order
OFFICIAL_REQUESTS=${OFFICIAL_REQUESTS:-1}
SEQUENTIAL_REQUESTS=${SEQUENTIAL_REQUESTS:-4}
SERVING_LIMIT=${SERVING_LIMIT:-240}               # seconds
RESULTS=${OUT:-bench/results}
SUFFIX=${SUFFIX:-gpu}
MODEL=${MODEL_DIR:-/tmp/healthgpt-m3-random-$DTYPE${LAYERS:+-$LAYERS}}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/$SUFFIX.log") 2>&1

if [ "$DEVICE" = cuda ] && compgen -G ".whl/*.whl" >/dev/null; then  # the device image's python3 lacks them
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
if [ "$DEVICE" = cuda ]; then
    "$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.__version__, torch.cuda.get_device_name())' \
        || exit 1
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv || true
fi
failed=0
step() {  # step KEY SECONDS NAME COMMAND...: if KEY is in STEPS, run with a time limit, report, go on
    local key=$1 limit=$2 name=$3 started=$SECONDS
    shift 3
    [[ $key == model || ",$STEPS," == *",$key,"* ]] || return 0
    echo "== $(date +%T) $name (limit ${limit}s)"
    timeout "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - started))s"
    [ $rc -eq 0 ] || failed=1
}

if [ ! -f "$MODEL/healthgpt.yaml" ]; then
    step model 90 "random M3 weights${LAYERS:+, $LAYERS layers}, $DTYPE -> $MODEL" "$PY" -c "
from pathlib import Path
from models.random_weights import build_random
layers = int('$LAYERS') if '$LAYERS' else None
print(build_random('m3', Path('$MODEL'), layers=layers, dtype='$DTYPE', draw_on='$DEVICE', progress=print))"
fi
[ -f "$MODEL/healthgpt.yaml" ] || { echo "no model: nothing else can run"; exit 1; }

run_step() {
    case $1 in
    # Fixed-shape decode steps recorded as CUDA graphs (the engine's default on CUDA) against the
    # ordinary step: the same tokens, and the step time both ways. First: every later figure rests on it.
    graphs) step graphs 75 "decode steps: CUDA graphs vs the ordinary step (same answers?)" \
        "$PY" -m bench.decode_graphs --spec "$MODEL/healthgpt.yaml" --device "$DEVICE" --tokens 32 \
        --out "$RESULTS/decode-graphs-$SUFFIX.json" ;;
    image) step image 120 "image generation: 1,024 VQ tokens + VQGAN decode" \
        "$PY" -m bench.image_gen --spec "$MODEL/healthgpt.yaml" --device "$DEVICE" --runs 1 \
        --out "$RESULTS/image-gen-$SUFFIX.json" ;;
    hlora) step hlora 50 "H-LoRA layers at the released ranks" \
        "$PY" -m bench.hlora --device "$DEVICE" --dtype "$DTYPE" --rounds 3 --out "$RESULTS/hlora-$SUFFIX.json" ;;
    # (b) serves one request at a time: its throughput does not depend on C, so a few requests per level do.
    serving) step serving "$SERVING_LIMIT" "serving: official (rebuild + generate) vs sequential vs engine, C=$CONCURRENCY" \
        "$PY" -m bench.serving --spec "$MODEL/healthgpt.yaml" --device "$DEVICE" --concurrency "$CONCURRENCY" \
        --official-requests "$OFFICIAL_REQUESTS" --sequential-requests "$SEQUENTIAL_REQUESTS" \
        --requests-per-client 1 --out "$RESULTS/serving-$SUFFIX.json" ;;
    profile) step profile 60 "decode step: wall time, operators, launches, syncs, device time" \
        "$PY" -m bench.step_profile --spec "$MODEL/healthgpt.yaml" --device "$DEVICE" --batch 1,8 --tokens 12 \
        --out "$RESULTS/step-profile-$SUFFIX.json" ;;
    *) echo "unknown step $1 (choose from graphs, image, hlora, serving, profile)"; failed=1 ;;
    esac
}
IFS=, read -ra chosen <<<"$STEPS"
for name in "${chosen[@]}"; do run_step "$name"; done

echo "== $(date +%T) done; results in $RESULTS"
ls -la "$RESULTS"
exit $failed
