"""Render a trained run: test views or a smooth camera path, to PNGs and an MP4.

Outputs per frame: RGB, depth and a PCA picture of each teacher's features. The PCA basis is fitted
once per run (saved as ``RUN/pca_<teacher>.json``) so colours are stable across frames, and it is
folded into the field's decoder through ``render(..., projection=...)``, so a linear-decoder field
renders the PCA as 3 channels instead of the full feature map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from featurefield.cameras import Cameras
from featurefield.io import atomic_write_json
from featurefield.run import Run


def pca_basis(run: Run, teacher: str, views: int = 4, samples: int = 20_000):
    """The run's PCA basis for ``teacher`` (fitted on decoded features of a few train views, cached)."""
    from featurefield.viz import PCABasis, fit_pca

    path = run.path / f"pca_{teacher}.json"
    if path.is_file():
        return PCABasis.from_dict(json.loads(path.read_text()))
    cams = run.cameras("train")
    idx = np.linspace(0, len(cams) - 1, min(views, len(cams))).round().astype(int)
    feats = []
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for i in idx:
            r = run.field.render(cams[int(i)], background=run.background)
            f = run.field.decode(r, teacher).flatten(1).T  # [H*W, D]
            keep = r.alpha.flatten() > 0.5
            f = f[keep] if keep.sum() > 100 else f
            pick = torch.randperm(f.shape[0], generator=gen)[: samples // len(idx)]
            feats.append(f[pick.to(f.device)].float().cpu())
    basis = fit_pca(torch.cat(feats), k=3)
    atomic_write_json(path, basis.to_dict())
    return basis


def pca_render(run: Run, camera: Cameras, teacher: str, basis, field=None):
    """``(PCA picture [H, W, 3] uint8, the Render it came from)``: the basis folded into the render, so the
    features come out as 3 channels beside colour, depth and alpha in one pass. ``field``: render this
    one instead of the run's (e.g. a cut-out of it)."""
    comps = basis.components.to(run.device, torch.float32)  # [D, 3]
    bias = -(basis.mean.to(run.device, torch.float32) @ comps)
    r = (field or run.field).render(camera, background=run.background, projection=(teacher, comps, bias))
    lo, hi = basis.lo.to(run.device), basis.hi.to(run.device)
    img = ((r.projected - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).cpu().numpy(), r


def render_path(run: Run, cameras: Cameras, output: Path, outputs: tuple[str, ...], fps: int = 30,
                names: list[str] | None = None, video: bool = True) -> dict[str, list[Path]]:
    """Render every camera; write ``output/<kind>/NNNN.png`` and ``output/<kind>.mp4``."""
    from featurefield.viz import depth_image, save_png, write_video

    bases = {t: pca_basis(run, t) for t in run.teacher_names} if "pca" in outputs else {}
    frames: dict[str, list[np.ndarray]] = {}
    written: dict[str, list[Path]] = {}
    names = names or [f"{i:04d}" for i in range(len(cameras))]
    with torch.no_grad():
        for k in track(range(len(cameras)), description="render", transient=True):
            cam = cameras[k]
            r = run.field.render(cam, background=run.background, features=False)
            pictures = {}
            if "rgb" in outputs:
                pictures["rgb"] = (r.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            if "depth" in outputs:
                pictures["depth"] = depth_image(r.depth[..., 0].cpu(), r.alpha[..., 0].cpu())
            for t, basis in bases.items():
                pictures[f"pca_{t}"] = pca_render(run, cam, t, basis)[0]
            for kind, pic in pictures.items():
                path = output / kind / f"{names[k]}.png"
                save_png(path, pic)
                written.setdefault(kind, []).append(path)
                frames.setdefault(kind, []).append(pic)
    if video and len(cameras) > 1:
        for kind, pics in frames.items():
            written[kind].append(write_video(output / f"{kind}.mp4", pics, fps=fps))
    return written
