"""``featurefield view``: serve a trained run to the browser until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from featurefield.commands.options import Device, RunWeights, opt
from featurefield.errors import FeatureFieldError
from featurefield.viewer.server import serve


def view_command(run: Path, /, host: Annotated[str, opt("ADDRESS")] = "127.0.0.1", port: int = 8080,
                 max_side: Annotated[int | None, opt("PIXELS", "1024 on a GPU, 320 on the CPU")] = None,
                 preview_side: Annotated[int | None, opt("PIXELS", "256 on a GPU, 128 on the CPU")] = None,
                 device: Device = "auto", weights: RunWeights = None) -> int:
    """Open a trained RUN in the browser (viser): colour, depth, feature PCA and cut-outs; text queries where a
    teacher encodes text (clip), clicks that prompt SAM where the run has sam.

    Args:
        run: run folder written by `featurefield train`.
        host: address to listen on (0.0.0.0 to reach it from other machines, e.g. through an SSH tunnel).
        port: port of the web page.
        max_side: longer side in pixels of the render shown once the camera rests (also a slider; at most twice
            the training images').
        preview_side: longer side in pixels of the renders made while the camera moves.
    """
    for name, side in (("--max-side", max_side), ("--preview-side", preview_side)):
        if side is not None and side < 16:
            raise FeatureFieldError(f"{name} must be at least 16 pixels, got {side}")
    server = serve(run, host, port, max_side, preview_side, device, verbose=False, weights=weights)
    print(f"featurefield view: {run} at http://{host}:{server.get_port()}; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
