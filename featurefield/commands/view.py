"""``featurefield view``: serve a trained run to the browser until Ctrl-C."""

from __future__ import annotations

import time
from pathlib import Path

from featurefield.errors import FeatureFieldError
from featurefield.viewer.server import serve


def view_command(run: Path, /, host: str = "127.0.0.1", port: int = 8080, max_side: int | None = None,
                 preview_side: int | None = None, device: str = "auto") -> int:
    """Open a trained RUN in the browser (viser): colour, depth, feature PCA, text queries, SAM clicks, cut-outs.

    Args:
        run: run folder written by `featurefield train`.
        host: address to listen on (0.0.0.0 to reach it from other machines, e.g. through an SSH tunnel).
        port: port of the web page.
        max_side: longer side in pixels of the render shown once the camera rests (also a slider; default
            1024 on a GPU, 320 on the CPU, at most twice the training images').
        preview_side: longer side of the renders made while the camera moves (default 256 / 128).
    """
    for name, side in (("--max-side", max_side), ("--preview-side", preview_side)):
        if side is not None and side < 16:
            raise FeatureFieldError(f"{name} must be at least 16 pixels, got {side}")
    server = serve(run, host, port, max_side, preview_side, device, verbose=False)
    print(f"featurefield view: {run} on port {server.get_port()}; Ctrl-C stops it", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
