"""One browser tab: a render loop that previews while the camera moves and renders full size at rest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.viewer.renderer import CutOut, ViewRenderer
from featurefield.viewer.viser_cameras import sized, viewer_camera

#: seconds the camera must rest (since its last move) before the full-size render
REST_SECONDS = 0.25
#: what a tab shows of its cut-out
SHOW = ("everything", "the cut-out alone", "without the cut-out")


class ClientView:
    """The renders of one browser tab: a preview while its camera moves, the full size once it rests.

    ``client`` is a viser ``ClientHandle`` (anything with ``.camera`` — ``wxyz``, ``position``, ``fov``,
    ``image_width``, ``image_height`` — and ``.scene.set_background_image``). ``settings()`` returns
    ``(output, text, max_side)``; ``on_status`` receives a line after each render.
    """

    def __init__(self, client, renderer: ViewRenderer, settings, preview_side: int = 256, on_status=None) -> None:
        self.client, self.renderer, self.settings = client, renderer, settings
        self.preview_side, self.on_status = preview_side, on_status
        self.prompt: torch.Tensor | None = None  # [P, 3] canonical points clicked on
        self.cut: CutOut | None = None  # the latest cut-out
        self.show = SHOW[0]  # everything, or the cut-out alone, or the scene without it
        self._subsets: dict[str, object] = {}  # show -> the field rendered for it (for self.cut)
        self._cut_lock = threading.Lock()  # the render thread and the panel's callbacks both read the cut
        self._last: tuple[Cameras, np.ndarray] | None = None  # the latest render's camera and depth
        self.seconds_per_pixel: float | None = None  # the latest render's time over its pixels
        self._moved, self._stopped = threading.Event(), threading.Event()
        self._requested = time.perf_counter()  # when the camera last moved (or a setting changed)
        self._thread = threading.Thread(target=self._loop, name=f"featurefield-view-{id(client)}", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """The camera or a setting changed: render again (a preview first)."""
        self._requested = time.perf_counter()
        self._moved.set()

    def click(self, x: float, y: float) -> bool:
        """A click at ``(x, y)`` of the canvas (0..1 from the top left) becomes the SAM prompt: the surface
        point there in the latest render, in 3D. False (and no prompt) where nothing was rendered."""
        from featurefield.query.correspondence import unproject

        if self._last is None:
            return False
        camera, depth = self._last
        H, W = depth.shape
        u, v = min(int(x * W), W - 1), min(int(y * H), H - 1)
        if depth[v, u] <= 0:
            self._status("nothing there to prompt: click on the scene")
            return False
        uv = torch.tensor([[u + 0.5, v + 0.5]])
        self.prompt = unproject(camera.to("cpu"), uv, torch.tensor([float(depth[v, u])]))
        self._status("prompting SAM at the clicked point ...")
        self.request()
        return True

    def clear(self) -> None:
        self.prompt = None
        self.request()

    def extract(self, folder: Path) -> CutOut | None:
        """Cut out what the tab selects, as ``folder/selection_NN.ply``: with a text output, the points that
        match its phrase (:meth:`ViewRenderer.extract_text`); otherwise SAM's mask for the clicked point at
        the latest view (:meth:`ViewRenderer.extract`). It becomes :attr:`cut`; None when nothing is selected."""
        output, text, _ = self.settings()
        what, _, teacher = output.partition(": ")
        if what == "text" and not text.strip():
            self._status("type a phrase first")
            return None
        if what != "text" and (self.prompt is None or self._last is None):
            self._status("click an object first (with a prompt output), or type a phrase (with a text output)")
            return None
        folder = Path(folder)
        path = folder / f"selection_{len(list(folder.glob('selection_*.ply'))) if folder.is_dir() else 0:02d}.ply"
        try:
            if what == "text":
                cut = self.renderer.extract_text(teacher, text.strip(), path)
                empty = f"no point's relevancy for {text.strip()!r} is above 0.5"
            else:
                cut = self.renderer.extract(self._last[0], self.prompt, path)
                empty = "SAM's mask holds none of the field's points"
        except FeatureFieldError as err:  # e.g. SAM's decoder weights missing: said in the panel
            self._status(f"error: {err}")
            return None
        if cut is None:
            self._status(empty)
            return None
        with self._cut_lock:
            self.cut, self._subsets = cut, {}
        self._status(f"{len(cut.xyz)} points written to {cut.path}")
        self.request()
        return cut

    def show_cut(self, show: str) -> None:
        """Render everything, the cut-out alone, or the scene without it (one of :data:`SHOW`)."""
        if show not in SHOW:
            raise FeatureFieldError(f"show one of {', '.join(SHOW)}, not {show!r}")
        self.show = show
        self.request()

    def _field(self):
        """The field this tab renders: the run's, or a cut of it (made once per cut-out and choice)."""
        show = self.show  # read once: the panel may change it while the subset is being made
        with self._cut_lock:
            if show == SHOW[0] or self.cut is None or not self.renderer.can_show_alone():
                return None
            if show not in self._subsets:
                self._subsets[show] = self.renderer.subset(self.cut, without=show == SHOW[2])
            return self._subsets[show]

    def _status(self, line: str) -> None:
        if self.on_status:
            self.on_status(line)

    def stop(self) -> None:
        self._stopped.set()
        self._moved.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        full_pending = False
        while not self._stopped.is_set():
            # the rest counts from the last move, not from the end of the latest preview: a preview still
            # rendering when the camera stops does not delay the full size by its own duration
            rest = max(REST_SECONDS - (time.perf_counter() - self._requested), 0.0)
            if self._moved.wait(timeout=rest if full_pending else None):
                self._moved.clear()
                if self._stopped.is_set():
                    break
                _, _, max_side = self.settings()
                self._show(min(self.preview_side, max_side))
                full_pending = self.preview_side < max_side
            elif full_pending:
                full_pending = False
                self._show(self.settings()[2])

    def _show(self, side: int) -> None:
        output, text, _ = self.settings()
        cam = self.client.camera
        width, height = int(cam.image_width), int(cam.image_height)
        if width <= 0 or height <= 0:
            return
        camera = sized(viewer_camera(cam.wxyz, cam.position, cam.fov, width, height), side)
        start = time.perf_counter()
        try:
            picture, depth = self.renderer.render(camera, output, text, self.prompt, self._field())
        except FeatureFieldError as err:
            self._status(f"error: {err}")
            return
        except Exception as err:  # noqa: BLE001 - the tab stays usable (e.g. out of memory at a large size)
            self._status(f"error: {type(err).__name__}: {err}")
            return
        if self._stopped.is_set():  # the tab closed while this was rendering
            return
        seconds = time.perf_counter() - start
        self._last = (camera, depth)
        self.seconds_per_pixel = seconds / (int(camera.width[0]) * int(camera.height[0]))
        self.client.scene.set_background_image(picture, format="jpeg", depth=depth)
        size = f"{int(camera.width[0])} x {int(camera.height[0])}"
        line = f"{output} · {size} · {seconds * 1e3:.0f} ms"
        if output.startswith("prompt: ") and self.prompt is not None:
            line += f" · {len(self.prompt)} point{'s' if len(self.prompt) > 1 else ''} clicked"
        self._status(line)
