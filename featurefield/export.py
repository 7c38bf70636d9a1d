"""Export a trained run in the scene's original world frame, in the field's own format
(:meth:`FeatureField.export <featurefield.fields.base.FeatureField.export>`):

* Gaussian runs: a standard 3DGS PLY (opens in common splat viewers) with the embeddings as extra
  per-vertex properties, and the decoders in a side file (see :mod:`featurefield.fields.splat.ply`).
* NeRF runs (the protocol's default): a coloured point cloud sampled where density is high, with features
  per point (:func:`write_point_cloud`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from featurefield.io import atomic_path
from featurefield.run import Run


def write_point_cloud(path: Path, xyz: Tensor, rgb: Tensor | None = None, features: Tensor | None = None,
                      extra: dict[str, Tensor] | None = None) -> Path:
    """Write a binary PLY point cloud atomically.

    Args:
        xyz: ``[P, 3]`` positions. rgb: ``[P, 3]`` in [0, 1]. features: ``[P, D]`` stored as ``f_0..``
            float32 properties. extra: more per-point scalar properties ``{name: [P]}``.
    """
    from plyfile import PlyData, PlyElement

    path = Path(path)
    n = xyz.shape[0]
    cols: list[tuple[str, np.ndarray]] = [(c, xyz[:, k].detach().cpu().numpy().astype(np.float32)) for k, c in enumerate("xyz")]
    if rgb is not None:
        rgb8 = (rgb.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        cols += [(c, rgb8[:, k]) for k, c in enumerate(("red", "green", "blue"))]
    if features is not None:
        f = features.detach().float().cpu().numpy()
        cols += [(f"f_{k}", f[:, k]) for k in range(f.shape[1])]
    for name, values in (extra or {}).items():
        cols.append((name, values.detach().cpu().numpy().reshape(n)))
    vertex = np.empty(n, dtype=[(name, arr.dtype) for name, arr in cols])
    for name, arr in cols:
        vertex[name] = arr
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp))
    return path


def export_run(run: Run, output: Path, teacher: str | None = None, max_points: int = 1_000_000) -> list[Path]:
    """Write the run's 3D content to ``output`` in world coordinates; returns the files written."""
    teacher = teacher or (run.teacher_names[0] if run.teacher_names else None)
    return run.field.export(run.normalization, Path(output), teacher=teacher, max_points=max_points)
