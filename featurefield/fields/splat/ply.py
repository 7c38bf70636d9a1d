"""Export a Gaussian field as a standard 3DGS PLY (plus embeddings and decoders), and read it back.

The PLY holds one vertex per Gaussian with the properties common splat viewers read:
``x, y, z, nx, ny, nz, f_dc_0..2, f_rest_0..(3(K-1)-1), opacity, scale_0..2, rot_0..3`` (``f_rest``
channel-major as the original 3DGS code writes it; opacity as a logit, scales as logs, rotations as
``w, x, y, z``) plus ``emb_0..emb_(E-1)``. Everything is in the scene's **original world frame**:
means are un-normalized and scales get ``-log(normalization.scale)``; rotations are unchanged (the
normalization has no rotation). The per-teacher decoders go to ``<name>.decoders.pt`` beside it, or, for several
parts of one field exported into one folder (``query --everything``), to one ``decoders.pt`` (:data:`SHARED_DECODERS`)
that each part's PLY is read with.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from featurefield.data.scene import Normalization
from featurefield.errors import FeatureFieldError
from featurefield.io import atomic_path, atomic_torch_save

#: the decoders file that the PLYs of a folder without ``<name>.decoders.pt`` of their own share
SHARED_DECODERS = "decoders.pt"


def decoders_path(ply: Path) -> Path | None:
    """The decoders side file of ``ply``: ``<name>.decoders.pt`` beside it, else the folder's shared
    :data:`SHARED_DECODERS`; None where neither exists."""
    if not ply.name.endswith(".ply"):
        return None
    for side in (ply.with_name(ply.name[: -len(".ply")] + ".decoders.pt"), ply.with_name(SHARED_DECODERS)):
        if side.is_file():
            return side
    return None


@torch.no_grad()
def export_splat(field, normalization: Normalization, out_dir: str | Path, name: str = "splat",
                 decoders: bool | str = True) -> list[Path]:
    """Write ``out_dir/<name>.ply`` and the decoders: ``out_dir/<name>.decoders.pt`` (``decoders=True``), the
    folder's :data:`SHARED_DECODERS` that several parts of one field share (``"shared"``), or none (False).
    Returns the written paths."""
    from plyfile import PlyData, PlyElement

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = {k: v.detach().float().cpu() for k, v in field.params.items()}
    n = len(p["means"])
    means = normalization.to_world(p["means"]).numpy()
    scales = (p["scales"] - math.log(normalization.scale)).numpy()
    rest = p["shN"].transpose(1, 2).reshape(n, -1).numpy()  # [P, 3*(K-1)], channel-major
    emb = p["embedding"].numpy()
    columns = ([("x", means[:, 0]), ("y", means[:, 1]), ("z", means[:, 2])]
               + [(f"n{a}", np.zeros(n, np.float32)) for a in "xyz"]
               + [(f"f_dc_{i}", p["sh0"][:, 0, i].numpy()) for i in range(3)]
               + [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
               + [("opacity", p["opacities"].numpy())]
               + [(f"scale_{i}", scales[:, i]) for i in range(3)]
               + [(f"rot_{i}", p["quats"][:, i].numpy()) for i in range(4)]
               + [(f"emb_{i}", emb[:, i]) for i in range(emb.shape[1])])
    vertex = np.empty(n, dtype=[(k, "f4") for k, _ in columns])
    for k, v in columns:
        vertex[k] = v
    ply_path = out_dir / f"{name}.ply"
    with atomic_path(ply_path) as tmp:
        PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp))
    side = {
        "format": "featurefield-splat-decoders/1",
        "embed_dim": int(emb.shape[1]),
        "sh_degree": int(field.config.sh_degree),
        "normalization": normalization.to_dict(),
        "field_config": field.config_dict(),
        "decoders": {k: {n_: t.detach().cpu() for n_, t in d.state_dict().items()} for k, d in field.decoders.items()},
        # the field's 2D model of each teacher (learnt spill, background map), to rebuild it whole
        "teacher_model": {k: t.detach().cpu() for k, t in field.state_dict().items()
                          if k.startswith(("spills.", "backgrounds."))},
    }
    if decoders is False:
        return [ply_path]
    if decoders not in (True, "shared"):
        raise ValueError(f"decoders must be True, 'shared' or False, got {decoders!r}")
    dec_path = out_dir / (f"{name}.decoders.pt" if decoders is True else SHARED_DECODERS)
    atomic_torch_save(dec_path, side)
    return [ply_path, dec_path]


def read_splat_ply(path: str | Path, frame: str = "world") -> dict:
    """Read a PLY written by :func:`export_splat` (or any standard 3DGS PLY).

    Args:
        path: the ``.ply``; its decoders side file (:func:`decoders_path`) is read when present.
        frame: ``"world"`` (as stored) or ``"canonical"`` (needs the side file's normalization).
    Returns:
        ``{"means" [P, 3], "scales" [P, 3] (log), "quats" [P, 4], "opacities" [P] (logit),
        "sh0" [P, 1, 3], "shN" [P, K-1, 3], "embedding" [P, E] (E may be 0), "decoders"
        {teacher: state_dict}, "teacher_model" (the spill and background maps' state), "normalization"
        (Normalization or None), "field_config" (dict or None)}``.
    """
    from plyfile import PlyData

    path = Path(path)
    try:
        v = PlyData.read(str(path))["vertex"]
    except Exception as e:
        raise FeatureFieldError(f"{path}: not a readable Gaussian-splat PLY ({e}); re-export it with featurefield export") from e
    names = [p.name for p in v.properties]
    for req in ("x", "y", "z", "f_dc_0", "opacity", "scale_0", "rot_0"):
        if req not in names:
            raise FeatureFieldError(f"{path}: missing vertex property {req!r}; not a 3DGS PLY")

    def cols(prefix: str) -> np.ndarray:
        keys = sorted((k for k in names if k.startswith(prefix) and k[len(prefix):].isdigit()),
                      key=lambda k: int(k[len(prefix):]))
        return np.stack([np.asarray(v[k], np.float32) for k in keys], -1) if keys else np.zeros((len(v.data), 0), np.float32)

    n = len(v.data)
    rest = torch.from_numpy(cols("f_rest_"))
    out = {
        "means": torch.from_numpy(np.stack([np.asarray(v[a], np.float32) for a in "xyz"], -1)),
        "scales": torch.from_numpy(cols("scale_")),
        "quats": torch.from_numpy(cols("rot_")),
        "opacities": torch.from_numpy(np.asarray(v["opacity"], np.float32)),
        "sh0": torch.from_numpy(cols("f_dc_"))[:, None, :],
        "shN": rest.reshape(n, 3, -1).transpose(1, 2).contiguous(),
        "embedding": torch.from_numpy(cols("emb_")),
        "decoders": {}, "teacher_model": {}, "normalization": None, "field_config": None,
    }
    side = decoders_path(path)
    if side is not None:
        meta = torch.load(side, map_location="cpu", weights_only=False)
        out["decoders"] = meta.get("decoders", {})
        out["teacher_model"] = meta.get("teacher_model", {})
        out["normalization"] = Normalization.from_dict(meta["normalization"]) if "normalization" in meta else None
        out["field_config"] = meta.get("field_config")
    if frame == "canonical":
        norm: Normalization | None = out["normalization"]
        if norm is None:
            raise FeatureFieldError(f"{path}: no decoders side file ({path.stem}.decoders.pt or {SHARED_DECODERS}) with "
                                    "the normalization beside it; cannot return the canonical frame")
        out["means"] = norm.to_canonical(out["means"])
        out["scales"] = out["scales"] + math.log(norm.scale)
    elif frame != "world":
        raise ValueError(f"frame must be 'world' or 'canonical', got {frame!r}")
    return out


def field_from_ply(path: str | Path):
    """Rebuild a :class:`GaussianField` (canonical frame) from an export with its side file."""
    from featurefield.fields.splat.model import GaussianField

    data = read_splat_ply(path, frame="canonical")
    if data["field_config"] is None:
        raise FeatureFieldError(f"{path}: no decoders side file; cannot rebuild the field")
    state = {f"params.{k}": data[k] for k in ("means", "scales", "quats", "opacities", "sh0", "shN", "embedding")}
    for t, sd in data["decoders"].items():
        for k, val in sd.items():
            state[f"decoders.{t}.{k}"] = val
    state.update(data["teacher_model"])
    cfg = data["field_config"]
    state["_extra_state"] = {"strategy_state": {}, "perm": None, "cursor": 0}
    return GaussianField.from_config(cfg, state)
