"""Two ranks on the CPU for the tests of :mod:`featurefield.distributed`: processes joined over gloo as torchrun
would join them, the tiny demo scene and fields they train, and what each rank did, recorded.

:func:`run_ranks` starts ``fn(rank, world, *args)`` in fresh processes (spawned: the test process's threads
are not forked) with torchrun's environment; :func:`session` is the one two-rank session the tests share
(trainings, a resume, single steps for the gradient comparisons), each rank saving what it saw into
``rank{r}.pt``. Everything here is deterministic (seeded), so the parent process rebuilds the same fields and
batches to compare against.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch

#: the demo scene every test of the module trains on: 12 views of 32 x 32, 10 for training, 300 points
SCENE = {"size": 32, "views": 12, "points": 300}
#: where densification happens within a dozen steps (every 2nd step up to half the run)
SPLAT = {"cpu_max_init": 300, "cpu_max_gaussians": 2000, "sh_degree": 1, "default": {"refine_every": 2}}


def splat_config():
    from gsplat.strategy import DefaultStrategy

    from featurefield.fields.splat.config import SplatConfig

    return SplatConfig(**{**SPLAT, "default": DefaultStrategy(**SPLAT["default"])})


def nerf_config(rays: int = 64):
    from featurefield.fields.nerf.config import NerfConfig

    return NerfConfig(preset="small", rays_per_batch=rays)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, world: int, port: int, args: tuple) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    import tests.toyteachers  # noqa: F401 - the toy teachers, registered in this fresh process too

    fn(rank, world, *args)


def run_ranks(fn, world: int, *args, timeout: float = 300) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` spawned ranks; raise the first rank's error (with its
    traceback), or after ``timeout`` seconds."""
    ctx = torch.multiprocessing.start_processes(_entry, args=(fn, world, free_port(), args), nprocs=world,
                                                join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            raise TimeoutError(f"{world} ranks did not finish in {timeout:.0f} s")


def tiny_data(scene):
    """The :class:`TrainData` the trainer makes of ``scene`` (colour only)."""
    from featurefield.fields.base import TrainData
    from featurefield.train import _images_uint8

    train = list(scene.split["train"])
    images, alphas = _images_uint8(scene, train, torch.device("cpu"))
    return TrainData(scene.canonical_cameras()[train], images, alphas, {}, torch.tensor(scene.background))


def tiny_scene():
    from featurefield.data import load_scene

    return load_scene("demo:1", **SCENE)


def fresh_field(kind: str, scene, rays: int = 64):
    """A field made as the trainer makes one (seed 0), its optimizers and schedulers built."""
    from featurefield.fields.nerf.model import NerfField
    from featurefield.fields.splat.model import GaussianField

    torch.manual_seed(0)
    if kind == "splat":
        fld = GaussianField.create(scene, [], splat_config(), max_steps=100)
    else:
        fld = NerfField.create(scene, [], nerf_config(rays), max_steps=100)
    fld.train()
    fld.optimizers()
    fld.schedulers()
    return fld


@contextlib.contextmanager
def no_jitter():
    """The NeRF's stratified jitter off (samples at the bin centres, as when evaluating), so that a ray's loss
    depends on the ray alone and a union of batches can be compared exactly."""
    import featurefield.fields.nerf.model as nerf_model

    uniform, pdf = nerf_model.uniform_edges, nerf_model.pdf_edges
    nerf_model.uniform_edges = lambda R, n, dev, jitter, *a, **k: uniform(R, n, dev, False, *a, **k)
    nerf_model.pdf_edges = lambda e, w, n, jitter, *a, **k: pdf(e, w, n, False, *a, **k)
    try:
        yield
    finally:
        nerf_model.uniform_edges, nerf_model.pdf_edges = uniform, pdf


def gradients(fld) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in fld.named_parameters() if p.grad is not None}


def parameters(fld) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in fld.named_parameters()}


class Recorder:
    """What this rank did: each training step's (field, step, batch, local loss, Gaussians), and every file it
    wrote under ``watch`` and under ``images`` (the image cache; an audit hook sees Python's opens for writing and
    every rename: the atomic writes). A step's batch is its view (splat) or the sorted views of its rays (nerf)."""

    def __init__(self, watch: Path, images: Path) -> None:
        self.watch, self.images = str(watch), str(images)
        self.writes: list[str] = []
        self.image_writes: list[str] = []
        self.steps: dict[str, list] = {}
        self.fields: dict[str, object] = {}
        self.signal_at: tuple[str, int] | None = None
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args) -> None:
        if event == "open" and args and isinstance(args[0], (str, Path)):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                self._note(args[0])
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink"):
            self._note(args[1] if event in ("os.rename", "os.replace") else args[0])

    def _note(self, path) -> None:
        if str(path).startswith(self.watch):
            self.writes.append(os.path.relpath(str(path), self.watch))
        elif str(path).startswith(self.images):
            self.image_writes.append(os.path.relpath(str(path), self.images))

    def wrap(self, cls, name: str) -> None:
        """Record ``cls.training_loss`` calls under ``name`` from now on (one list per training)."""
        self.current = name
        if getattr(cls.training_loss, "recorded", False):
            return
        original = cls.training_loss
        recorder = self

        def training_loss(fld, batch, data, step):
            losses = original(fld, batch, data, step)
            seen = batch["view"] if "view" in batch else tuple(sorted(set(batch["image"].tolist())))
            recorder.steps.setdefault(recorder.current, []).append(
                (step, seen, float(losses["loss"]), int(getattr(fld, "num_gaussians", 0))))
            recorder.fields[recorder.current] = fld
            if recorder.signal_at == (recorder.current, step):
                os.kill(os.getpid(), signal.SIGTERM)  # a stop request reaching this rank alone
            return losses

        training_loss.recorded = True
        cls.training_loss = training_loss


def session(rank: int, world: int, out: Path) -> None:
    """The two-rank session the tests read (``out/rank{r}.pt``; the runs in ``out/runs``):

    * ``splat``: a new Gaussian run with the toy teacher, 24 one-view steps (12 of 2 views), densifying;
      ``splat-stream``: the same run, its views streamed from the caches on disk;
    * ``nerf-stream``: a NeRF run of 8 (4 of 2), its rays drawn from a streamed pool of 4 views, one replaced a step;
    * ``nerf``: a new NeRF run of 16 (8 of 2); rank 1 alone receives SIGTERM at step 3, both stop after it;
      ``nerf-resumed``: the same run continued to its end on the 2 ranks;
    * ``one-to-two``: ``out/runs/one`` (6 steps trained by the parent on one process) continued to 12 steps;
    * single steps of each field through :class:`DataParallel`, gradients and parameters saved.
    """
    from featurefield import distributed
    from featurefield.data.view_source import DataConfig
    from featurefield.fields.nerf.model import NerfField
    from featurefield.fields.splat.model import GaussianField
    from featurefield.stopping import TrainingStopped
    from featurefield.train import TrainConfig, optimization_step, train

    runs = out / "runs"
    cache = out / "cache"
    rec = Recorder(runs, cache / "images")
    result: dict = {}
    with distributed.joined("cpu"):
        common = dict(device="cpu", progress=False, cache_dir=cache, log_every=2, checkpoint_every=4)
        rec.wrap(GaussianField, "splat")
        train("demo:1", runs / "splat", field="splat", teachers=["toycolour"], scene_options=SCENE,
              field_config=splat_config(), config=TrainConfig(steps=24, **common))
        result["splat"] = parameters(rec.fields["splat"])
        result["adam"] = [(g["lr"], g["eps"], tuple(g["betas"])) for g in rec.fields["splat"].optimizers()["adam"].param_groups]
        rec.wrap(GaussianField, "splat-stream")
        train("demo:1", runs / "splat-stream", field="splat", teachers=["toycolour"], scene_options=SCENE,
              field_config=splat_config(), config=TrainConfig(steps=24, data=DataConfig(residency="stream"), **common))
        result["splat-stream"] = parameters(rec.fields["splat-stream"])
        rec.wrap(NerfField, "nerf-stream")
        pool = DataConfig(residency="stream", pool_views=4, pool_every=1, prefetch=2)
        train("demo:1", runs / "nerf-stream", field="nerf", teachers=["toycolour"], scene_options=SCENE,
              field_config=nerf_config(), config=TrainConfig(steps=8, data=pool, **common))
        result["nerf-stream"] = parameters(rec.fields["nerf-stream"])

        rec.wrap(NerfField, "nerf")
        rec.signal_at = ("nerf", 3) if rank == 1 else None
        try:
            train("demo:1", runs / "nerf", field="nerf", teachers=["toycolour"], scene_options=SCENE,
                  field_config=nerf_config(), config=TrainConfig(steps=16, **common))
        except TrainingStopped as err:
            result["nerf_stopped"] = str(err)
        result["nerf_at_stop"] = parameters(rec.fields["nerf"])
        rec.signal_at = None
        rec.wrap(NerfField, "nerf-resumed")
        train(None, runs / "nerf", resume=True, config=TrainConfig(device="cpu", progress=False))
        result["nerf"] = parameters(rec.fields["nerf-resumed"])

        rec.wrap(GaussianField, "one-to-two")
        train(None, runs / "one", resume=True, config=TrainConfig(steps=12, device="cpu", progress=False))
        result["one-to-two"] = parameters(rec.fields["one-to-two"])

        rec.current = "single steps"
        scene = tiny_scene()
        data = tiny_data(scene)
        for kind, patch in (("splat", contextlib.nullcontext), ("nerf", no_jitter)):
            fld = fresh_field(kind, scene)
            parallel = distributed.DataParallel(distributed.current(), seed=0, scale_adam=False)
            with patch():
                grads = {}
                fld.after_step = lambda step, batch, losses, fld=fld, grads=grads: grads.update(gradients(fld))
                optimization_step(fld, data, 0, torch.Generator().manual_seed(0), parallel)
            result[f"step/{kind}"] = {"grads": grads, "params": parameters(fld)}
    result.update(steps=rec.steps, writes=rec.writes, image_writes=rec.image_writes)
    torch.save(result, out / f"rank{rank}.pt")
