"""`featurefield view`: viser's camera to ours and back, every output rendered, previews then full size,
the browser client served."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featurefield.cli import main
from featurefield.viewer import ClientView, ViewRenderer, camera_pose, relevancy_overlay, serve, viewer_camera


@pytest.fixture(scope="module")
def run(demo_run):  # noqa: F811
    return demo_run


def test_a_training_camera_survives_the_trip_through_viser(run):
    cams = run.cameras("train").to("cpu")
    for i in (0, len(cams) - 1):
        wxyz, position, fov_y = camera_pose(cams, i)
        back = viewer_camera(wxyz, position, fov_y, int(cams.width[i]), int(cams.height[i]))
        assert torch.allclose(back.c2w[0], cams.c2w[i], atol=1e-5)
        assert torch.allclose(back.fy, cams.fy[i : i + 1], rtol=1e-5)
        assert float(back.cx[0]) == cams.width[i] / 2


def test_every_output_of_a_run_is_rendered(run):
    renderer = ViewRenderer(run)
    assert renderer.outputs == ["colour", "depth", "opacity", "features: toycolour", "features: toytext", "text: toytext"]
    cam = run.cameras("test")[0]
    H, W = int(cam.height[0]), int(cam.width[0])
    pictures = {}
    for output in renderer.outputs:
        picture, depth = renderer.render(cam, output)
        assert picture.shape == (H, W, 3) and picture.dtype == np.uint8 and depth.shape == (H, W)
        pictures[output] = picture
    direct = run.field.render(cam, background=run.background, features=False)
    assert np.array_equal(pictures["colour"], (direct.rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    assert np.array_equal(pictures["text: toytext"], pictures["colour"])  # no phrase yet: the colour
    assert not np.array_equal(pictures["features: toycolour"], pictures["colour"])
    assert (depth > 0).any() and np.isfinite(depth).all()
    with pytest.raises(Exception, match="unknown output"):
        renderer.render(cam, "normals")


def test_a_text_query_is_drawn_over_the_colour(run, monkeypatch):
    import featurefield.query.text as text

    renderer = ViewRenderer(run)
    cam = run.cameras("test")[0]
    colour, _ = renderer.render(cam, "colour")
    q = text.relevancy_map(run.field, cam, run.teacher("toytext"), ["red thing"], background=run.background)
    queried, _ = renderer.render(cam, "text: toytext", "red thing")
    assert np.array_equal(queried, relevancy_overlay(q.render.rgb, q.relevancy[0]))
    # a phrase that matches everywhere (relevancy 1) paints the whole view the heatmap's top colour
    monkeypatch.setattr(text, "lerf_relevancy", lambda pos, neg, *a, **k: torch.ones_like(pos))
    everywhere, _ = renderer.render(cam, "text: toytext", "red thing")
    assert (everywhere == everywhere[0, 0]).all() and not np.array_equal(everywhere, colour)


def test_relevancy_overlay_leaves_what_does_not_match_alone():
    rgb = torch.rand(4, 5, 3)
    relevancy = torch.tensor([0.0, 0.5, 0.75, 1.0, 0.3]).expand(4, 5)
    out = relevancy_overlay(rgb, relevancy)
    base = (rgb * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(out[:, [0, 1, 4]], base[:, [0, 1, 4]])
    assert not np.array_equal(out[:, [2, 3]], base[:, [2, 3]])
    assert (out[:, 3] == out[0, 3]).all()  # opaque heatmap colour at 1, whatever lies below


class FakeClient:
    """What ClientView reads of a viser client: its camera, and where the pictures go."""

    def __init__(self, run):
        wxyz, position, fov = camera_pose(run.cameras("train").to("cpu"), 0)
        self.camera = SimpleNamespace(wxyz=wxyz, position=position, fov=fov, image_width=320, image_height=240)
        self.shown: list[tuple[int, int]] = []
        self.changed = threading.Condition()
        self.scene = SimpleNamespace(set_background_image=self._show)

    def _show(self, image, format, depth):
        assert image.dtype == np.uint8 and depth.shape == image.shape[:2]
        with self.changed:
            self.shown.append(image.shape[:2])
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[tuple[int, int]]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.shown) >= count, timeout=timeout)
            return list(self.shown)

    def settle(self, count: int) -> None:
        """Wait for ``count`` pictures, then for the render loop to go quiet."""
        self.wait_for(count)
        time.sleep(0.3)

    def watch(self, renderer, settings, side: int) -> ClientView:
        """This tab's ClientView with previews and full renders both ``side`` pixels; status lines in ``self.lines``."""
        self.lines: list[str] = []
        return ClientView(self, renderer, settings, preview_side=side, on_status=self.lines.append)


def test_a_moving_camera_gets_previews_then_the_full_size_once_it_rests(run):
    client, lines = FakeClient(run), []
    view = ClientView(client, ViewRenderer(run), lambda: ("colour", "", 96), preview_side=32, on_status=lines.append)
    try:
        view.request()
        assert client.wait_for(2)[:2] == [(24, 32), (72, 96)]  # 4:3 canvas, longer side 32, then 96
        view.request()
        assert client.wait_for(4)[2:4] == [(24, 32), (72, 96)]
        time.sleep(0.5)
    finally:
        view.stop()
    assert len(client.shown) == 4  # nothing more once it rests
    assert len(lines) == 4 and lines[-1].startswith("colour · 96 x 72 · ")


def test_the_full_size_follows_the_rest_since_the_last_move_not_the_last_preview(run):
    """A preview still rendering when the camera stops does not push the full size back by its own duration."""
    from featurefield.viewer import REST_SECONDS

    class SlowPreviews:
        def render(self, camera, *args):
            H, W = int(camera.height[0]), int(camera.width[0])
            if W == 32:
                time.sleep(REST_SECONDS + 0.05)
            return np.zeros((H, W, 3), np.uint8), np.zeros((H, W), np.float32)

    client = FakeClient(run)
    view = ClientView(client, SlowPreviews(), lambda: ("colour", "", 96), preview_side=32)
    try:
        start = time.perf_counter()
        view.request()
        client.wait_for(2)
        elapsed = time.perf_counter() - start
    finally:
        view.stop()
    assert client.shown[:2] == [(24, 32), (72, 96)]
    assert elapsed < 2 * REST_SECONDS + 0.05 - 0.1  # waiting the rest after the preview would take longer


def test_the_server_serves_the_browser_client(run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve(run, port=port, max_side=64, verbose=False)
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.get_port()}/", timeout=10).read().decode()
        assert "<html" in page.lower()
    finally:
        server.stop()


def test_view_command_errors_in_one_line(tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurefield view: error:") and "\n" not in err
    assert main(["view", str(tmp_path), "--max-side", "4"]) == 2


def test_a_browser_camera_over_the_websocket_gets_rendered(run, monkeypatch):
    """End to end through viser's server: a client's camera message leads to a preview and a full render."""
    import msgspec
    import viser
    from viser._messages import ViewerCameraMessage
    from websockets.sync.client import connect

    sizes, done = [], threading.Event()
    real_render = ViewRenderer.render

    def recording_render(self, camera, *args, **kwargs):
        sizes.append((int(camera.width[0]), int(camera.height[0])))
        if len(sizes) >= 2:
            done.set()
        return real_render(self, camera, *args, **kwargs)

    monkeypatch.setattr(ViewRenderer, "render", recording_render)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = serve(run, port=port, max_side=96, preview_side=32, verbose=False)
    try:
        with connect(f"ws://127.0.0.1:{server.get_port()}", subprotocols=[f"viser-v{viser.__version__}"]) as ws:
            camera = ViewerCameraMessage(wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, -3.0), fov=0.8, near=0.01,
                                         far=100.0, image_height=300, image_width=400, look_at=(0.0, 0.0, 0.0),
                                         up_direction=(0.0, -1.0, 0.0))
            ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
            assert done.wait(timeout=30)
    finally:
        server.stop()
    assert sizes[:2] == [(32, 24), (96, 72)]  # the browser canvas's 4:3, a preview then the full size


class DiskDecoder:
    """A stand-in for SAM's prompt decoder: a disk of ``radius`` pixels around the first point; records the points."""

    def __init__(self, radius: float = 3.0, per_width: int | None = None):
        """``per_width``: the radius is for images that wide, and scales with the image (an object's mask does)."""
        self.points, self.radius, self.per_width = [], radius, per_width

    def predict(self, embedding, image_size, points=None, labels=None, box=None):
        self.points.append(points.clone())
        H, W = image_size
        radius = self.radius * (W / self.per_width if self.per_width else 1)
        v, u = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        return (u - points[0, 0]) ** 2 + (v - points[0, 1]) ** 2 <= radius**2, 1.0


def test_a_click_prompts_sam_at_the_same_3d_point_from_another_view(run):
    from featurefield.query.selection import project_points

    decoder = DiskDecoder()
    renderer = ViewRenderer(run, decoder=decoder, prompt_teacher="toycolour")
    assert renderer.outputs[-1] == "prompt: toycolour"
    client = FakeClient(run)
    view = client.watch(renderer, lambda: ("prompt: toycolour", "", 96), 96)
    try:
        view.request()
        client.settle(1)
        assert not decoder.points  # no prompt yet: the colour only
        assert not view.click(0.01, 0.01)  # a corner of the frame: empty space
        assert view.prompt is None and "nothing there" in client.lines[-1]
        assert view.click(0.5, 0.6)  # the table in the middle
        client.settle(2)
    finally:
        view.stop()
    point = view.prompt
    assert point.shape == (1, 3) and len(decoder.points) == 1
    camera, _ = view._last
    uv, _, inside = project_points(point, camera.to("cpu"))
    assert inside.all() and torch.allclose(decoder.points[0], uv, atol=1e-3)
    assert abs(float(uv[0, 0]) - 0.5 * 96) < 1 and abs(float(uv[0, 1]) - 0.6 * 72) < 1  # where it was clicked
    # another view of the same point: the prompt lands where that camera sees it, and the mask is drawn there
    other = run.cameras("train")[3]
    picture, _ = renderer.render(other, "prompt: toycolour", prompt=point)
    colour, _ = renderer.render(other, "colour")
    seen_uv, _, seen = project_points(point, other)
    assert seen.all()  # in front of that camera and inside its image
    assert torch.allclose(decoder.points[-1], seen_uv.cpu(), atol=1e-3)
    u, v = int(seen_uv[0, 0]), int(seen_uv[0, 1])
    assert not np.array_equal(picture[v, u], colour[v, u])
    changed = np.argwhere((picture != colour).any(-1))
    assert len(changed) and np.abs(changed[:, ::-1] + 0.5 - decoder.points[-1][0].numpy()).max() <= 4.5


def test_the_clicked_object_is_cut_out_in_3d(run, tmp_path):
    from plyfile import PlyData

    from featurefield.query.selection import project_points

    decoder = DiskDecoder(radius=15, per_width=96)
    renderer = ViewRenderer(run, decoder=decoder, prompt_teacher="toycolour")
    client = FakeClient(run)
    view = client.watch(renderer, lambda: ("prompt: toycolour", "", 96), 96)
    try:
        assert view.extract(tmp_path) is None and "click an object first" in client.lines[-1]
        view.request()
        client.wait_for(1)
        assert view.click(0.5, 0.6)
        client.settle(2)
        prompted = len(decoder.points)
        cut = view.extract(tmp_path)
        path, xyz = cut.path, cut.xyz
        assert len(decoder.points) - prompted >= 3  # SAM prompted at the view and at training views around the point
        assert any("points written" in line for line in client.lines)
        # the cut-out alone, and the scene without it: the Gaussians it holds, and all the others
        kept = int(cut.keep.sum())
        for show, count in (("the cut-out alone", kept), ("without the cut-out", run.field.num_gaussians - kept)):
            shown = len(client.shown)
            view.show_cut(show)
            client.wait_for(shown + 1)
            assert view._field().num_gaussians == count
        time.sleep(0.3)
        alone = client.shown[-1]
    finally:
        view.stop()
    assert path == tmp_path / "selection_00.ply" and len(xyz) > 0 and alone == (72, 96)
    assert [f.name for f in cut.files] == ["selection_00.ply", "selection_00_gaussians.ply",
                                           "selection_00_gaussians.decoders.pt"]
    from featurefield.fields.splat.ply import field_from_ply

    alone_field = field_from_ply(tmp_path / "selection_00_gaussians.ply")  # the cut-out reloads as a field
    assert alone_field.num_gaussians == kept
    assert len(xyz) < run.field.num_gaussians / 2  # the clicked region, not the scene
    camera, _ = view._last
    uv, _, inside = project_points(xyz, camera.to("cpu"))
    centre = torch.tensor([0.5 * 96, 0.6 * 72])
    # within the disk the decoder drew, but for a few points of the other views' hull just outside it
    assert inside.all() and ((uv - centre).norm(dim=-1) <= 15.5).float().mean() > 0.9
    world = PlyData.read(str(path))["vertex"]
    assert len(world["x"]) == len(xyz)
    expected = run.normalization.to_world(xyz)
    assert np.allclose(np.stack([world["x"], world["y"], world["z"]], -1), expected.numpy(), atol=1e-4)


def test_a_cut_subset_is_kept_under_the_choice_it_was_made_for(run):
    """The panel may switch "alone" to "without" while the render thread still makes the first subset."""
    from featurefield.viewer.client import SHOW

    renderer = ViewRenderer(run)
    view = ClientView(FakeClient(run), renderer, lambda: ("colour", "", 32), preview_side=32)
    started, release = threading.Event(), threading.Event()

    def slow_subset(cut, without):
        started.set()
        release.wait(5)
        return "without" if without else "alone"

    renderer.subset, renderer.can_show_alone = slow_subset, lambda: True
    try:
        view.cut, view.show = object(), SHOW[1]
        first = threading.Thread(target=view._field)
        first.start()
        assert started.wait(5)
        view.show = SHOW[2]
        release.set()
        first.join(5)
        assert view._field() == "without"
        view.show = SHOW[1]
        assert view._field() == "alone"
    finally:
        view.stop()


def test_a_nerf_run_shows_every_output_too(tmp_path):
    from featurefield.query.correspondence import unproject
    from featurefield.train import TrainConfig, train

    cfg = TrainConfig(steps=6, checkpoint_every=6, device="cpu", progress=False, cache_dir=tmp_path / "cache")
    nerf = train("demo:2", tmp_path / "run", field="nerf", teachers=["toycolour", "toytext"], config=cfg,
                 scene_options={"size": 24, "views": 6, "test_every": 3, "points": 200})
    decoder = DiskDecoder(radius=4)
    renderer = ViewRenderer(nerf, decoder=decoder, prompt_teacher="toycolour")
    cam = nerf.cameras("test")[0]
    for output in renderer.outputs:
        picture, depth = renderer.render(cam, output, "red thing")
        assert picture.shape == (24, 24, 3) and depth.shape == (24, 24)
    _, depth = renderer.render(cam, "colour")
    assert (depth > 0).any()
    v, u = np.argwhere(depth > 0)[len(np.argwhere(depth > 0)) // 2]
    clicked = torch.tensor([[u + 0.5, v + 0.5]], dtype=torch.float32)
    point = unproject(cam, clicked, torch.tensor([float(depth[v, u])]))
    renderer.render(cam, "prompt: toycolour", prompt=point)
    assert len(decoder.points) == 1 and torch.allclose(decoder.points[0], clicked, atol=1e-2)


def test_what_matches_the_phrase_is_cut_out_in_3d(run, tmp_path, monkeypatch):
    from plyfile import PlyData

    import featurefield.query.text as text

    renderer = ViewRenderer(run)
    client = FakeClient(run)
    settings = {"value": ("text: toytext", "", 64)}
    view = client.watch(renderer, lambda: settings["value"], 64)
    try:
        assert view.extract(tmp_path) is None and "type a phrase" in client.lines[-1]
        settings["value"] = ("text: toytext", "red thing", 64)
        # relevancy 0.6 for the half of the points most similar to the phrase, 0.4 for the others
        monkeypatch.setattr(text, "lerf_relevancy", lambda pos, neg, *a, **k: 0.4 + 0.2 * (pos > pos.median()).float())
        cut = view.extract(tmp_path)
        path, xyz = cut.path, cut.xyz
    finally:
        view.stop()
    everything = run.field.points_with_features("toytext")
    assert path == tmp_path / "selection_00.ply" and 0 < len(xyz) < len(everything["xyz"])
    ply = PlyData.read(str(path))["vertex"]
    assert len(ply["x"]) == len(xyz) and (np.asarray(ply["relevancy"]) > 0.5).all()


def test_render_sizes_suit_the_device_and_the_images(run):
    from featurefield.viewer.server import default_sides

    top, preview = default_sides(run)  # a CPU run of 24-pixel images: twice their size, no more
    assert (top, preview) == (48, 48)


def test_training_frustums_are_sized_by_the_gaps_between_cameras(run):
    from featurefield.viewer.server import frustum_scale

    cams = run.cameras("train").to("cpu")
    close = cams[[0, 0]].with_poses(cams.c2w[[0, 0]].clone())
    close.c2w[1, 0, 3] += 0.02
    assert abs(frustum_scale(close) - 0.01) < 1e-6  # half the gap between the two
    assert frustum_scale(cams[[0]]) == 0.1 and 0 < frustum_scale(cams) <= 0.1


def test_a_cut_out_that_cannot_be_made_is_said_in_the_panel(run, tmp_path):
    from featurefield.errors import FeatureFieldError

    class MissingDecoder:
        def predict(self, *args, **kwargs):
            raise FeatureFieldError("SAM's decoder weights are missing; run featurefield weights sam")

    renderer = ViewRenderer(run, decoder=MissingDecoder(), prompt_teacher="toycolour")
    client = FakeClient(run)
    view = client.watch(renderer, lambda: ("colour", "", 64), 64)
    try:
        view.request()
        client.settle(1)
        assert view.click(0.5, 0.6)
        assert view.extract(tmp_path) is None
    finally:
        view.stop()
    assert any(line.startswith("error: SAM's decoder weights are missing") for line in client.lines)
    assert not list(tmp_path.iterdir())


def _orbit(position, look_at, up, azimuth: float, elevation: float):
    """A drag of viser's orbit controls: the camera turns ``azimuth`` about ``up`` and ``elevation`` towards
    it, around ``look_at``, and keeps looking there. ``(c2w [4, 4])`` in OpenCV axes."""
    import viser.transforms as vtf

    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    rel = np.asarray(position, dtype=np.float64) - np.asarray(look_at, dtype=np.float64)
    rel = vtf.SO3.exp(up * azimuth).as_matrix() @ rel
    side = np.cross(up, rel)
    rel = vtf.SO3.exp(side / np.linalg.norm(side) * elevation).as_matrix() @ rel
    eye = np.asarray(look_at) + rel
    z = -rel / np.linalg.norm(rel)
    x = np.cross(z, -up)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    c2w[:3, 3] = eye
    return torch.from_numpy(c2w).float()


def _browser_tab(server, timeout: float = 20.0):
    """Connect to ``server`` as the browser does (its first camera message, at viser's start pose (3, 3, 3)
    looking at the origin, 5.2 units away) and return the server's handle of that tab once it is set up."""
    import msgspec
    import viser
    from viser._messages import ViewerCameraMessage
    from websockets.sync.client import connect

    ws = connect(f"ws://127.0.0.1:{server.get_port()}", subprotocols=[f"viser-v{viser.__version__}"])
    forward = -np.ones(3) / np.sqrt(3)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    wxyz = viser.transforms.SO3.from_matrix(np.stack([right, np.cross(forward, right), forward], 1)).wxyz
    camera = ViewerCameraMessage(wxyz=tuple(wxyz), position=(3.0, 3.0, 3.0), fov=0.8, near=0.01, far=100.0,
                                 image_height=240, image_width=320, look_at=(0.0, 0.0, 0.0),
                                 up_direction=(0.0, 0.0, 1.0))
    ws.send(msgspec.msgpack.encode(camera.as_serializable_dict()))
    deadline = time.time() + timeout
    while time.time() < deadline:
        clients = list(server.get_clients().values())
        if clients and np.linalg.norm(clients[0].camera.position - np.array([3.0, 3.0, 3.0])) > 1e-3:
            return ws, clients[0]
        time.sleep(0.05)
    ws.close()
    raise AssertionError("the server never moved the tab's camera to the first training view")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_after_an_orbit_the_scene_centre_stays_in_view(run):
    from featurefield.query.selection import project_points

    centre = run.field.points_with_features()["xyz"].float().median(dim=0).values.cpu()
    server = serve(run, port=_free_port(), max_side=32, verbose=False)
    try:
        ws, tab = _browser_tab(server)
        look_at, up, position = tab.camera.look_at.copy(), tab.camera.up_direction.copy(), tab.camera.position.copy()
        ws.close()
    finally:
        server.stop()
    train = run.cameras("train").to("cpu")
    assert np.allclose(position, train.centers[0].numpy(), atol=1e-5)  # at the first training view
    template = train[[0]]
    for azimuth, elevation in ((0.0, 0.0), (0.5, 0.0), (-0.5, 0.0), (1.2, 0.0), (0.4, 0.3), (-0.4, -0.3)):
        orbited = template.with_poses(_orbit(position, look_at, up, azimuth, elevation)[None])
        uv, _, inside = project_points(centre[None], orbited)
        assert inside.all(), f"the scene centre left the view after an orbit of {azimuth:.1f} / {elevation:.1f} rad"
        W, H = float(orbited.width[0]), float(orbited.height[0])
        assert 0.1 * W < float(uv[0, 0]) < 0.9 * W and 0.1 * H < float(uv[0, 1]) < 0.9 * H


def test_the_pivot_lies_on_each_training_view_at_the_scene_depth(run):
    from featurefield.camera_paths import focus_point
    from featurefield.viewer.server import orbit_pivots

    train = run.cameras("train").to("cpu")
    pivots = orbit_pivots(train)
    forward = train.c2w[:, :3, 2]
    rel = pivots - train.centers
    assert torch.allclose(torch.linalg.cross(rel, forward, dim=-1), torch.zeros_like(rel), atol=1e-5)  # on the axis
    depth = ((focus_point(train)[None] - train.centers) * forward).sum(-1)
    assert torch.allclose((rel * forward).sum(-1), depth, atol=1e-5)


def test_a_tab_hides_the_frustums_its_camera_stands_in(run):
    from featurefield.viewer.server import frustum_scale, hidden_frustums

    train = run.cameras("train").to("cpu")
    centres, scale = train.centers.numpy(), frustum_scale(train)
    near = hidden_frustums(centres, centres[0], scale)
    assert near[0] and near.sum() < len(centres)
    assert not hidden_frustums(centres, centres[0] + 100.0, scale).any()
    server = serve(run, port=_free_port(), max_side=32, verbose=False)
    try:
        ws, tab = _browser_tab(server)
        try:
            deadline = time.time() + 10
            handles = []
            while time.time() < deadline and not handles:
                handles = [h for i in range(len(train)) if (h := tab.scene.get_handle_by_name(f"/train/{i:04d}"))]
                time.sleep(0.05)
            assert len(handles) == len(train)
            shown = {h.name: h.visible for h in handles}
            assert not shown["/train/0000"] and sum(shown.values()) == len(train) - int(near.sum())
        finally:
            ws.close()
    finally:
        server.stop()


def test_the_resolution_slider_warns_above_the_device_default():
    from featurefield.viewer.server import resolution_warning, slider_limit

    assert slider_limit(320, 320) == 640 and slider_limit(320, 1000) == 1008  # asked for on the command line
    assert resolution_warning(320, 320, [1e-6]) is None
    line = resolution_warning(640, 320, [1e-5])
    assert line.startswith("warning: 640 px is above") and "about 3.1 s" in line  # 640 x 480 px at 10 us each
    assert "take about" not in resolution_warning(640, 320, [])


def test_the_viewer_loads_no_teacher_model_to_show_colour(run, monkeypatch):
    from featurefield.teachers import base

    assert base.teacher_has_text("sam") is False and base.teacher_has_text("clip") is True
    for name in run.teacher_names:  # the toy teachers describe themselves, as the built-in ones do
        monkeypatch.setattr(base._REGISTRY[name], "describe", lambda name=name: {"has_text": name == "toytext"},
                            raising=False)

    def no_model(name):
        raise AssertionError(f"teacher {name!r} was loaded")

    monkeypatch.setattr(run, "teacher", no_model)
    renderer = ViewRenderer(run)
    assert renderer.text_teachers == ["toytext"]
    picture, _ = renderer.render(run.cameras("test")[0], "colour")
    assert picture.ndim == 3
