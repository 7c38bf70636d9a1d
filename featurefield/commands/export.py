"""``featurefield export``: a trained run's 3D content in the scene's world frame."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from featurefield.commands.options import Device, opt
from featurefield.errors import FeatureFieldError
from featurefield.export import export_run
from featurefield.run import load_run


def export_command(run: Path, /, output: Annotated[Path | None, opt("FOLDER", "RUN/export")] = None,
                   teacher: Annotated[str | None, opt("NAME", "the run's first")] = None,
                   max_points: int = 1_000_000, device: Device = "auto") -> int:
    """Export a trained RUN (3DGS PLY + embeddings + decoders, or a NeRF point cloud) in world coordinates.

    Args:
        run: run folder written by `featurefield train`.
        output: folder to write.
        teacher: for a NeRF run, the teacher whose features the points carry.
        max_points: at most this many points of a NeRF run.
    """
    from featurefield.outputs import check_output_dir

    out = Path(output) if output is not None else Path(run) / "export"
    check_output_dir(out, default=output is None)
    loaded = load_run(run, device=device)
    if teacher is not None and teacher not in loaded.teacher_names:
        raise FeatureFieldError(f"{run}: no teacher {teacher!r} in this run (has {', '.join(loaded.teacher_names) or 'none'})")
    files = export_run(loaded, out, teacher, max_points)
    for f in files:
        print(f"wrote {f}")
    return 0
