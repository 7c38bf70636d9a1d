"""Interactive viewer: ``featurefield view RUN`` serves a trained run to the browser with viser.

The browser's camera drives renders made here, by the field's own renderer, so the viewer shows every
output a run has: colour, depth, opacity, a PCA picture of each teacher's features (the run's basis,
as ``featurefield render`` uses) and, for a teacher with a text encoder, the LERF relevancy of a
phrase typed in the panel, over the colour; for a run with the ``sam`` teacher, a click on an object
prompts SAM with the field's features (the point is kept in 3D, so the mask follows the object as the
view moves). The training cameras are drawn as frustums; clicking one moves the view there. While the camera moves, renders are small (``preview_side``); once it rests for
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

    def __init__(self, run: Run, decoder=None, prompt_teacher: str = "sam") -> None:
        """``decoder``: SAM's prompt decoder (default: loaded from the run's sam weights when first needed);
        ``prompt_teacher``: the teacher whose features it reads."""
        self.run = run
        self.text_teachers = [t for t in run.teacher_names if run.teacher(t).has_text]
        self.prompt_teacher = prompt_teacher if prompt_teacher in run.teacher_names else None
        self._decoder = decoder
        self._bases: dict = {}
        self._lock = threading.Lock()

    @property
    def outputs(self) -> list[str]:
        """What can be shown: :data:`BASE_OUTPUTS`, each teacher's PCA, each text teacher's query, SAM prompts."""
        return [*BASE_OUTPUTS, *(f"features: {t}" for t in self.run.teacher_names),
                *(f"text: {t}" for t in self.text_teachers),
                *([f"prompt: {self.prompt_teacher}"] if self.prompt_teacher else [])]

    def decoder(self):
        if self._decoder is None:
            from featurefield.query.commands import _sam_decoder

            self._decoder = _sam_decoder(self.run, "SAM prompts need")
        return self._decoder

    @torch.no_grad()
    def render(self, camera: Cameras, output: str = "colour", text: str = "",
               prompt: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(picture [H, W, 3] uint8, depth [H, W] float32)`` of ``output`` at ``camera`` (canonical frame).

        ``text`` is the phrase of a ``"text: NAME"`` output; ``prompt`` ``[P, 3]`` the 3D points (canonical)
        of a ``"prompt: NAME"`` output, of which those the camera sees prompt SAM. Without them, those
        outputs show the colour. The depth (canonical units, 0 where nothing was rendered) lets viser
        draw its frustums behind the rendered surface.
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
            elif kind == "prompt" and prompt is not None and len(prompt):
                picture, r = self._prompted(camera, teacher, prompt)
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
        from featurefield.query.selection import surface_depth

        depth = surface_depth(r)  # where the render is opaque enough to click on (the 3D queries' rule)
        depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
        return np.ascontiguousarray(picture[..., :3]), depth.float().cpu().numpy()

    def _prompted(self, camera: Cameras, teacher: str, prompt: torch.Tensor):
        """The colour with SAM's mask for the prompt points this camera sees (unoccluded), and the render."""
        from featurefield import viz

        mask, r = self._prompt_mask(camera, teacher, prompt)
        picture = viz.to_uint8(r.rgb)
        return (picture if mask is None else viz.overlay_mask(picture, mask.cpu())), r

    def _prompt_mask(self, camera: Cameras, teacher: str, prompt: torch.Tensor):
        """``(mask [H, W] bool or None where the camera sees none of the points, render)``."""
        from featurefield.query.prompts import prompt_mask, render_sam_features
        from featurefield.query.selection import surface_depth, visibility

        feats, r = render_sam_features(self.run.field, camera, teacher, self.run.background)
        uv, seen = visibility(prompt.to(camera.device), camera, surface_depth(r))
        if not seen.any():
            return None, r
        H, W = int(camera.height[0]), int(camera.width[0])
        return prompt_mask(self.decoder(), feats, (H, W), points=uv[seen].cpu())[0], r

    @torch.no_grad()
    def extract(self, camera: Cameras, prompt: torch.Tensor, path: Path) -> tuple[Path | None, torch.Tensor]:
        """Cut out in 3D what SAM selects for ``prompt`` at ``camera``: the field's points inside the mask and
        visible there, written to ``path`` as a PLY in the scene's world frame. ``(path or None when
        nothing is selected, the selected points' canonical xyz [K, 3])``."""
        from featurefield.query.selection import lift_masks
        from featurefield.query.text import export_selection_ply

        if self.prompt_teacher is None:
            raise FeatureFieldError(f"{self.run.path}: SAM prompts need a run trained with the sam teacher")
        camera = camera.to(self.run.device)
        with self._lock:
            mask, _ = self._prompt_mask(camera, self.prompt_teacher, prompt)
            if mask is None or not mask.any():
                return None, torch.zeros(0, 3)
            selection, points = lift_masks(self.run.field, camera, [mask.to(self.run.device)])
        keep = selection.keep
        if not keep.any():
            return None, torch.zeros(0, 3)
        written = export_selection_ply(path, points, keep, self.run.normalization)
        return written, points["xyz"][keep.to(points["xyz"].device)].float().cpu()


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
        self.prompt: torch.Tensor | None = None  # [P, 3] canonical points clicked on
        self._last: tuple[Cameras, np.ndarray] | None = None  # the latest render's camera and depth
        self._moved, self._stopped = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"featurefield-view-{id(client)}", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """The camera or a setting changed: render again (a preview first)."""
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
        self.request()
        return True

    def clear(self) -> None:
        self.prompt = None
        self.request()

    def extract(self, folder: Path) -> tuple[Path | None, torch.Tensor]:
        """:meth:`ViewRenderer.extract` of the current prompt at the latest view, as ``folder/selection_NN.ply``."""
        if self.prompt is None or self._last is None:
            self._status("click an object first (with a prompt output)")
            return None, torch.zeros(0, 3)
        folder = Path(folder)
        number = len(list(folder.glob("selection_*.ply"))) if folder.is_dir() else 0
        path, xyz = self.renderer.extract(self._last[0], self.prompt, folder / f"selection_{number:02d}.ply")
        self._status(f"{len(xyz)} points written to {path}" if path else "SAM's mask holds none of the field's points")
        return path, xyz

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
            picture, depth = self.renderer.render(camera, output, text, self.prompt)
        except FeatureFieldError as err:
            self._status(f"error: {err}")
            return
        except Exception as err:  # noqa: BLE001 - the tab stays usable (e.g. out of memory at a large size)
            self._status(f"error: {type(err).__name__}: {err}")
            return
        if self._stopped.is_set():  # the tab closed while this was rendering
            return
        self._last = (camera, depth)
        self.client.scene.set_background_image(picture, format="jpeg", depth=depth)
        size = f"{int(camera.width[0])} x {int(camera.height[0])}"
        self._status(f"{output} · {size} · {(time.perf_counter() - start) * 1e3:.0f} ms")


# ---------------------------------------------------------------------------------------------- server
def serve(run: Run | str | Path, host: str = "127.0.0.1", port: int = 8080, max_side: int = 1024,
          preview_side: int = 256, device: str = "auto", verbose: bool = True):
    """Start a viser server for ``run`` and return it (``server.stop()`` ends it; it runs in threads).

    The panel: the output to show, the phrase of a text query, the full-size resolution, a button back
    to the first training view, for SAM prompts buttons to clear the prompt and to cut its selection
    out as ``RUN/view/selection_NN.ply``, and a status line.
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
    clear = server.gui.add_button("clear SAM prompt", visible=renderer.prompt_teacher is not None)
    extract = server.gui.add_button("cut out the SAM selection (PLY)", visible=renderer.prompt_teacher is not None)
    server.gui.add_markdown("With a *prompt* output, click an object to prompt SAM.",
                            visible=renderer.prompt_teacher is not None)
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
    clear.on_click(lambda event: views[event.client.client_id].clear() if event.client.client_id in views else None)

    @extract.on_click
    def _extract(event) -> None:
        view = views.get(event.client.client_id) if event.client is not None else None
        if view is None:
            return
        path, xyz = view.extract(renderer.run.path / "view")
        if path is not None:  # the cut-out drawn in the scene, over the render
            event.client.scene.add_point_cloud("/selection", points=xyz.numpy(), colors=(255, 40, 40),
                                               point_size=0.01)

    @server.scene.on_click()
    def _clicked(event) -> None:
        view = views.get(event.client_id)
        if view is not None and output.value.startswith("prompt: "):
            view.click(*event.screen_pos)


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
