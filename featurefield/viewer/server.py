"""The viser server of ``featurefield view``: the panel, the training frustums, one render loop per tab."""

from __future__ import annotations

from pathlib import Path

from featurefield.cameras import Cameras
from featurefield.run import Run, load_run
from featurefield.viewer.client import SHOW, ClientView
from featurefield.viewer.renderer import ViewRenderer
from featurefield.viewer.viser_cameras import camera_pose


def default_sides(run: Run) -> tuple[int, int]:
    """``(max_side, preview_side)`` for a run: 1024 / 256 pixels on a GPU, 320 / 128 on the CPU (a frame
    of the demo's Gaussians takes about 0.06 s at 256 pixels on 2 cores), never above twice the training
    images' longer side (finer than that shows nothing new)."""
    on_gpu = run.device.type == "cuda"
    cams = run.cameras("train")
    native = 2 * int(max(int(cams.width.max()), int(cams.height.max())))
    top = min(1024 if on_gpu else 320, native)
    return top, min(256 if on_gpu else 128, top)


def frustum_scale(cameras: Cameras) -> float:
    """Size of the drawn training frustums: half the median distance from a camera to its nearest
    neighbour (so that neighbours do not overlap), at most 0.1 (canonical units: the cameras lie within the
    unit sphere)."""
    import torch

    centers = cameras.centers.float()
    if len(centers) < 2:
        return 0.1
    gaps = torch.cdist(centers, centers) + torch.eye(len(centers)) * 1e9
    return min(max(float(0.5 * gaps.min(dim=1).values.median()), 1e-3), 0.1)


def orbit_pivots(cameras: Cameras, centre=None):
    """Where the browser's orbit turns around for each training camera: ``[N, 3]``, on the camera's optical
    axis at the depth of the scene's centre (``centre`` ``[3]``, default the point closest to every optical
    axis, :func:`~featurefield.camera_paths.focus_point`). viser orbits around its ``look_at`` point; left
    alone it stays where the browser started (about 5 units away), so a small drag swings the scene out of
    view."""
    import torch

    from featurefield.camera_paths import focus_point

    centre = focus_point(cameras) if centre is None else torch.as_tensor(centre, dtype=torch.float32)
    forward = cameras.c2w[:, :3, 2] / cameras.c2w[:, :3, 2].norm(dim=-1, keepdim=True)
    rel = centre[None] - cameras.centers
    depth = (rel * forward).sum(-1).clamp_min(0.1 * float(rel.norm(dim=-1).median().clamp_min(1e-3)))
    return cameras.centers + forward * depth[:, None]


def slider_limit(default_side: int, max_side: int) -> int:
    """The resolution slider's top: twice the device's default size (a CPU frame at 2048 px takes ~1.5 s),
    or ``max_side`` where that was asked for on the command line; a multiple of 16."""
    return max(16 * -(-2 * int(default_side) // 16), 16 * -(-int(max_side) // 16))


def resolution_warning(side: int, default_side: int, seconds_per_pixel: list[float]) -> str | None:
    """The panel's warning when the resolution goes above the device's default, with the time a frame
    will take where renders were already timed (``seconds_per_pixel`` of the tabs' latest renders, 4:3
    assumed); None at or below the default."""
    if side <= default_side:
        return None
    line = f"warning: {side} px is above this device's default ({default_side} px)"
    if seconds_per_pixel:
        seconds = max(seconds_per_pixel) * side * side * 3 / 4
        line += f"; each full frame will take about {seconds:.1f} s"
    return line


def hidden_frustums(centres, position, scale: float):
    """``[N]`` bool: the training frustums (camera centres ``[N, 3]``, drawn ``scale`` long) a camera at
    ``position`` ``[3]`` stands in or right next to (within twice their length): drawn, they would cover
    its view."""
    import numpy as np

    return np.linalg.norm(np.asarray(centres) - np.asarray(position, dtype=np.float64)[None], axis=-1) < 2 * scale


def serve(run: Run | str | Path, host: str = "127.0.0.1", port: int = 8080, max_side: int | None = None,
          preview_side: int | None = None, device: str = "auto", verbose: bool = True, weights: str | Path | None = None):
    """Start a viser server for ``run`` and return it (``server.stop()`` ends it; it runs in threads).
    ``max_side`` / ``preview_side``: see :func:`default_sides` for the defaults; ``weights``: the teachers'
    weights in place of the run's record (:func:`~featurefield.run.load_run`).

    No teacher model is loaded to show colour, depth or a feature PCA; the prompt decoder loads when a prompt
    output is first chosen (the first click then seldom waits for it).

    The panel: the output to show, the phrase of a text query, the full-size resolution, a button back
    to the first training view, a button to clear the SAM prompt, one to cut the selection (SAM's mask, or
    the phrase's matches) out as ``RUN/view/selection_NN.ply``, and a status line.
    """
    import viser

    from featurefield.camera_paths import world_up

    if not isinstance(run, Run):
        run = load_run(run, device=device, weights=weights)
    renderer = ViewRenderer(run)
    top, preview = default_sides(run)
    max_side, preview_side = max_side or top, preview_side or preview
    train = run.cameras("train").to("cpu")
    server = viser.ViserServer(host=host, port=port, verbose=verbose)
    try:
        _build(server, renderer, train, max_side, preview_side, world_up(train), top)
    except BaseException:
        server.stop()
        raise
    return server


def _build(server, renderer: ViewRenderer, train: Cameras, max_side: int, preview_side: int, up,
           default_side: int) -> None:
    """The panel, the training frustums and the per-client render loops of :func:`serve`."""
    server.scene.set_up_direction(tuple(float(x) for x in up))

    output = server.gui.add_dropdown("output", renderer.outputs, initial_value="colour")
    phrase = server.gui.add_text("text query", initial_value="", visible=bool(renderer.text_teachers),
                                 hint="a phrase; shown with a 'text: ...' output")
    resolution = server.gui.add_slider("resolution", min=16, max=slider_limit(default_side, max_side), step=16,
                                       initial_value=int(max_side),
                                       hint=f"longer side of the picture at rest; above {default_side} px "
                                            "(this device's default) frames get slow")
    home = server.gui.add_button("first training view")
    cameras = server.gui.add_checkbox("training cameras", initial_value=True,
                                      hint="draw the training views' frustums (click one to go there)")
    clear = server.gui.add_button("clear SAM prompt", visible=renderer.prompt_teacher is not None)
    show = server.gui.add_dropdown("show", SHOW, initial_value=SHOW[0], visible=False,
                                   hint="the latest cut-out alone, or the scene without it")
    extract = server.gui.add_button("cut out the selection (PLY)",
                                    visible=renderer.prompt_teacher is not None or bool(renderer.text_teachers),
                                    hint="SAM's mask for the clicked point, or what matches the phrase: RUN/view/")
    server.gui.add_markdown("With a *prompt* output, click an object to prompt SAM.",
                            visible=renderer.prompt_teacher is not None)
    status = server.gui.add_markdown("")
    last_cut = server.gui.add_markdown("", visible=False)  # stays put, unlike the status line
    views: dict[int, ClientView] = {}

    def settings() -> tuple[str, str, int]:
        return output.value, phrase.value, int(resolution.value)

    def set_status(line: str) -> None:
        status.content = line

    pivots = orbit_pivots(train).numpy()
    up_direction = tuple(float(x) for x in up)

    def move_to(client, index: int) -> None:
        """Put the tab's camera at training view ``index``, orbiting around the scene in front of it (viser's
        setters: the position moves ``look_at`` along, and ``look_at`` with ``up_direction`` fix the rotation)."""
        _, position, fov_y = camera_pose(train, index)
        with client.atomic():
            client.camera.fov = fov_y
            client.camera.position = position
            client.camera.look_at = pivots[index]
            client.camera.up_direction = up_direction

    scale = frustum_scale(train)
    centres = train.centers.numpy()
    frustums: dict[int, list] = {}  # client id -> its frustums (each tab hides the ones its camera is in)

    def add_frustums(client) -> list:
        handles = []
        for i in range(len(train)):
            wxyz, position, fov_y = camera_pose(train, i)
            aspect = float(train.width[i] / train.height[i])
            # thickness in screen pixels: in world units (viser's default) a frustum next to the camera
            # covers the view with thick bands
            frustum = client.scene.add_camera_frustum(
                f"/train/{i:04d}", fov=fov_y, aspect=aspect, scale=scale, wxyz=wxyz, position=position,
                color=(90, 90, 200), thickness=1.5, thickness_units="screen", visible=cameras.value)
            frustum.on_click(lambda event, i=i: move_to(event.client, i))
            handles.append(frustum)
        return handles

    def update_frustums(client) -> None:
        """Hide the frustums the tab's camera stands in or next to; show the others (if shown at all)."""
        handles = frustums.get(client.client_id)
        if not handles:
            return
        near = hidden_frustums(centres, client.camera.position, scale)
        for i, handle in enumerate(handles):
            visible = bool(cameras.value) and not near[i]
            if handle.visible != visible:
                handle.visible = visible

    @cameras.on_update
    def _toggle_frustums(_event) -> None:
        for client in server.get_clients().values():
            update_frustums(client)

    @server.on_client_connect
    def _connect(client) -> None:
        move_to(client, 0)
        frustums[client.client_id] = add_frustums(client)
        view = ClientView(client, renderer, settings, preview_side=preview_side, on_status=set_status)
        view.show = show.value
        views[client.client_id] = view

        def moved(_camera) -> None:
            update_frustums(client)
            view.request()

        client.camera.on_update(moved)
        update_frustums(client)
        view.request()

    @server.on_client_disconnect
    def _disconnect(client) -> None:
        frustums.pop(client.client_id, None)
        view = views.pop(client.client_id, None)
        if view is not None:
            view.stop()

    def rerender(_event=None) -> None:
        for view in list(views.values()):
            view.request()

    for handle in (output, phrase):
        handle.on_update(rerender)

    @output.on_update
    def _prompting(_event) -> None:
        if output.value.startswith("prompt: "):
            renderer.preload()

    @resolution.on_update
    def _resolution(_event) -> None:
        line = resolution_warning(int(resolution.value), default_side,
                                  [v.seconds_per_pixel for v in views.values() if v.seconds_per_pixel])
        if line:
            set_status(line)
        rerender()

    @show.on_update
    def _show(event) -> None:
        for view in list(views.values()):
            view.show_cut(show.value)

    def tab_of(event) -> ClientView | None:
        return views.get(event.client.client_id) if event.client is not None else None

    home.on_click(lambda event: move_to(event.client, 0) if event.client is not None else None)
    clear.on_click(lambda event: tab_of(event) and tab_of(event).clear())

    @extract.on_click
    def _extract(event) -> None:
        view = tab_of(event)
        if view is None:
            return
        cut = view.extract(renderer.run.path / "view")
        if cut is not None:
            files = ", ".join(str(f) for f in cut.files)
            last_cut.content = f"last cut-out: {len(cut.xyz)} points in `{cut.path}`"
            last_cut.visible = True
            print(f"featurefield view: cut-out of {len(cut.xyz)} points written to {files}", flush=True)
        if cut is not None and not renderer.can_show_alone():  # a NeRF's cut-out: its points, over the render
            event.client.scene.add_point_cloud("/selection", points=cut.xyz.numpy(), colors=(255, 40, 40),
                                               point_size=0.01)
        if cut is not None:
            show.visible = renderer.can_show_alone()

    @server.scene.on_click()
    def _clicked(event) -> None:
        view = views.get(event.client_id)
        if view is not None and output.value.startswith("prompt: "):
            view.click(*event.screen_pos)
