"""Interactive viewer: ``featurefield view RUN`` serves a trained run to the browser with viser.

The browser's camera drives renders made here, by the field's own renderer, so the viewer shows every
output a run has: colour, depth, opacity, a PCA picture of each teacher's features (the run's basis,
as ``featurefield render`` uses) and, for a teacher with a text encoder, the LERF relevancy of a
phrase typed in the panel, over the colour. The training cameras are drawn as frustums; clicking one
moves the view there. While the camera moves, renders are small (``preview_side``); once it rests for
a moment, the view is rendered again at ``max_side``.

Everything is in the run's canonical frame (the one ``field.render`` takes). Usable from Python:
:func:`viewer_camera` / :func:`camera_pose` convert between viser's camera and ours, :class:`ViewRenderer`
renders any output for a camera, :func:`serve` starts the server and returns it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import torch

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.run import Run, load_run

#: outputs every run has; teacher outputs are "features: NAME" and "text: NAME"
BASE_OUTPUTS = ("colour", "depth", "opacity")
#: seconds the camera must rest before the full-size render
REST_SECONDS = 0.25


# ---------------------------------------------------------------------------------------------- cameras
def viewer_camera(wxyz, position, fov_y: float, width: int, height: int) -> Cameras:
    """Our camera for a viser camera: ``wxyz`` rotation (world from camera, OpenCV axes, as ours),
    ``position`` ``[3]``, vertical field of view ``fov_y`` in radians; square pixels, centred principal
    point. One camera (``[1]`` batch)."""
    import viser.transforms as vtf

    c2w = torch.eye(4)
    c2w[:3, :3] = torch.from_numpy(vtf.SO3(np.asarray(wxyz, dtype=np.float64)).as_matrix()).float()
    c2w[:3, 3] = torch.as_tensor(np.asarray(position, dtype=np.float64), dtype=torch.float32)
    focal = 0.5 * height / float(np.tan(0.5 * fov_y))
    return Cameras(c2w=c2w[None], fx=focal, fy=focal, cx=width / 2, cy=height / 2, width=width, height=height)


def camera_pose(cameras: Cameras, index: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """``(wxyz [4], position [3], vertical fov in radians)`` of one of our cameras, for viser."""
    import viser.transforms as vtf

    c2w = cameras.c2w[index].detach().double().cpu().numpy()
    fov_y = 2.0 * float(np.arctan(0.5 * float(cameras.height[index]) / float(cameras.fy[index])))
    return vtf.SO3.from_matrix(c2w[:3, :3]).wxyz, c2w[:3, 3].copy(), fov_y


def _sized(camera: Cameras, side: int) -> Cameras:
    """``camera`` rescaled so that its longer image side is ``side`` pixels."""
    factor = side / max(int(camera.width[0]), int(camera.height[0]))
    return camera.scaled(factor) if abs(factor - 1) > 1e-6 else camera


# ---------------------------------------------------------------------------------------------- renders
def relevancy_overlay(rgb, relevancy) -> np.ndarray:
    """The colour ``[H, W, 3]`` with LERF relevancy ``[H, W]`` drawn over it: untouched at 0.5 and below
    (no better than the negatives), the heatmap's colour for 0.5..1 blended in as the relevancy rises,
    opaque at 1. ``[H, W, 3]`` uint8."""
    from featurefield import viz

    relevancy = torch.as_tensor(relevancy).float().cpu()
    weight = ((relevancy - 0.5) * 2).clamp(0, 1)[..., None].numpy()
    heat = viz.heatmap(relevancy, 0.5, 1.0).astype(np.float32)
    return (viz.to_uint8(rgb)[..., :3] * (1 - weight) + heat * weight).round().astype(np.uint8)


class ViewRenderer:
    """Renders one output of a run for a camera; thread-safe (renders take turns)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.text_teachers = [t for t in run.teacher_names if run.teacher(t).has_text]
        self._bases: dict = {}
        self._lock = threading.Lock()

    @property
    def outputs(self) -> list[str]:
        """What can be shown: :data:`BASE_OUTPUTS`, then each teacher's PCA, then each text teacher's query."""
        return [*BASE_OUTPUTS, *(f"features: {t}" for t in self.run.teacher_names),
                *(f"text: {t}" for t in self.text_teachers)]

    @torch.no_grad()
    def render(self, camera: Cameras, output: str = "colour", text: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(picture [H, W, 3] uint8, depth [H, W] float32)`` of ``output`` at ``camera`` (canonical frame).

        ``text`` is the phrase of a ``"text: NAME"`` output; without one, that output shows the colour.
        The depth (canonical units, 0 where nothing was rendered) lets viser draw its frustums behind
        the rendered surface.
        """
        from featurefield import viz
        from featurefield.render import pca_basis, render_pca

        if output not in self.outputs:
            raise FeatureFieldError(f"unknown output {output!r}; this run has: {', '.join(self.outputs)}")
        camera = camera.to(self.run.device)
        kind, _, teacher = output.partition(": ")
        with self._lock:
            if kind == "features":
                if teacher not in self._bases:
                    self._bases[teacher] = pca_basis(self.run, teacher)
                picture = render_pca(self.run, camera, teacher, self._bases[teacher])
                r = self.run.field.render(camera, background=self.run.background, features=False)
            elif kind == "text" and text.strip():
                from featurefield.query.text import relevancy_map

                q = relevancy_map(self.run.field, camera, self.run.teacher(teacher), [text.strip()],
                                  background=self.run.background)
                r = q.render
                picture = relevancy_overlay(r.rgb, q.relevancy[0])
            else:
                r = self.run.field.render(camera, background=self.run.background, features=False)
                if kind == "depth":
                    picture = viz.depth_image(r.depth[..., 0], r.alpha[..., 0])
                elif kind == "opacity":
                    picture = viz.to_uint8(r.alpha[..., 0])
                else:
                    picture = viz.to_uint8(r.rgb)
        depth = torch.where(r.alpha[..., 0] > 0.5, r.depth[..., 0], torch.zeros_like(r.depth[..., 0]))
        return np.ascontiguousarray(picture[..., :3]), depth.float().cpu().numpy()


# ---------------------------------------------------------------------------------------------- clients
class ClientView:
    """The renders of one browser tab: a preview while its camera moves, the full size once it rests.

    ``client`` is a viser ``ClientHandle`` (anything with ``.camera`` — ``wxyz``, ``position``, ``fov``,
    ``image_width``, ``image_height`` — and ``.scene.set_background_image``). ``settings()`` returns
    ``(output, text, max_side)``; ``on_status`` receives a line after each render.
    """

    def __init__(self, client, renderer: ViewRenderer, settings, preview_side: int = 256, on_status=None) -> None:
        self.client, self.renderer, self.settings = client, renderer, settings
        self.preview_side, self.on_status = preview_side, on_status
        self._moved, self._stopped = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"featurefield-view-{id(client)}", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """The camera or a setting changed: render again (a preview first)."""
        self._moved.set()

    def stop(self) -> None:
        self._stopped.set()
        self._moved.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        full_pending = False
        while not self._stopped.is_set():
            if self._moved.wait(timeout=REST_SECONDS):
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
        camera = _sized(viewer_camera(cam.wxyz, cam.position, cam.fov, width, height), side)
        start = time.perf_counter()
        try:
            picture, depth = self.renderer.render(camera, output, text)
        except FeatureFieldError as err:
            if self.on_status:
                self.on_status(f"error: {err}")
            return
        if self._stopped.is_set():  # the tab closed while this was rendering
            return
        self.client.scene.set_background_image(picture, format="jpeg", depth=depth)
        if self.on_status:
            size = f"{int(camera.width[0])} x {int(camera.height[0])}"
            self.on_status(f"{output} · {size} · {(time.perf_counter() - start) * 1e3:.0f} ms")


# ---------------------------------------------------------------------------------------------- server
def serve(run: Run | str | Path, host: str = "127.0.0.1", port: int = 8080, max_side: int = 1024,
          preview_side: int = 256, device: str = "auto", verbose: bool = True):
    """Start a viser server for ``run`` and return it (``server.stop()`` ends it; it runs in threads).

    The panel: the output to show, the phrase of a text query, the full-size resolution, a button back
    to the first training view, and a status line.
    """
    import viser

    from featurefield.camera_paths import world_up

    if not isinstance(run, Run):
        run = load_run(run, device=device)
    renderer = ViewRenderer(run)
    train = run.cameras("train").to("cpu")
    server = viser.ViserServer(host=host, port=port, verbose=verbose)
    try:
        _build(server, renderer, train, max_side, preview_side, world_up(train))
    except BaseException:
        server.stop()
        raise
    return server


def _build(server, renderer: ViewRenderer, train: Cameras, max_side: int, preview_side: int, up) -> None:
    """The panel, the training frustums and the per-client render loops of :func:`serve`."""
    server.scene.set_up_direction(tuple(float(x) for x in up))

    output = server.gui.add_dropdown("output", renderer.outputs, initial_value="colour")
    phrase = server.gui.add_text("text query", initial_value="", visible=bool(renderer.text_teachers),
                                 hint="a phrase; shown with a 'text: ...' output")
    resolution = server.gui.add_slider("resolution", min=16, max=max(4096, int(max_side)), step=16,
                                       initial_value=int(max_side))
    home = server.gui.add_button("first training view")
    status = server.gui.add_markdown("")
    views: dict[int, ClientView] = {}

    def settings() -> tuple[str, str, int]:
        return output.value, phrase.value, int(resolution.value)

    def set_status(line: str) -> None:
        status.content = line

    def move_to(client, index: int) -> None:
        wxyz, position, fov_y = camera_pose(train, index)
        with client.atomic():
            client.camera.fov = fov_y
            client.camera.wxyz = wxyz
            client.camera.position = position

    for i in range(len(train)):
        wxyz, position, fov_y = camera_pose(train, i)
        frustum = server.scene.add_camera_frustum(f"/train/{i:04d}", fov=fov_y, aspect=float(train.width[i] / train.height[i]),
                                                  scale=0.05, wxyz=wxyz, position=position, color=(90, 90, 200))
        frustum.on_click(lambda event, i=i: move_to(event.client, i))

    @server.on_client_connect
    def _connect(client) -> None:
        move_to(client, 0)
        view = ClientView(client, renderer, settings, preview_side=preview_side, on_status=set_status)
        views[client.client_id] = view
        client.camera.on_update(lambda _camera: view.request())
        view.request()

    @server.on_client_disconnect
    def _disconnect(client) -> None:
        view = views.pop(client.client_id, None)
        if view is not None:
            view.stop()

    def rerender(_event=None) -> None:
        for view in list(views.values()):
            view.request()

    for handle in (output, phrase, resolution):
        handle.on_update(rerender)
    home.on_click(lambda event: move_to(event.client, 0) if event.client is not None else None)


def view_command(run: Path, /, host: str = "127.0.0.1", port: int = 8080, max_side: int = 1024,
                 preview_side: int = 256, device: str = "auto") -> int:
    """Open a trained RUN in the browser (viser): colour, depth, feature PCA and text queries from any view.

    Args:
        run: run folder written by `featurefield train`.
        host: address to listen on (0.0.0.0 to reach it from other machines, e.g. through an SSH tunnel).
        port: port of the web page.
        max_side: longer side in pixels of the render shown once the camera rests (also a slider).
        preview_side: longer side of the renders made while the camera moves.
    """
    if max_side < 16 or preview_side < 16:
        raise FeatureFieldError(f"--max-side and --preview-side must be at least 16 pixels, got {max_side} and {preview_side}")
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
