"""The one Trainer every field backend uses: data, loop, evaluation, checkpoints, resume, progress.

Use it from Python::

    from featurefield.train import TrainConfig, train
    run = train("demo", "runs/demo", field="splat", teachers=["dino"], config=TrainConfig(steps=2000))

or from the shell: ``featurefield train splat SCENE --teacher sam``.

A backend is found by name in :mod:`featurefield.fields.registry` and driven only through the
:class:`~featurefield.fields.base.FeatureField` protocol, so the loop, the NaN guard, the atomic
checkpoints and ``--resume`` behave the same for every field; this module imports no backend.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featurefield import distributed
from featurefield.data.scene import Scene
from featurefield.data.view_source import DataConfig, ResidentViews, StreamedViews, choose_residency, view_bytes
from featurefield.errors import FeatureFieldError
from featurefield.fields.base import FeatureField, TeacherTarget, TrainData
from featurefield.fields.registry import FieldSpec, field_spec
from featurefield.io import atomic_torch_save, atomic_write_json, atomic_write_text, free_bytes, megabytes
from featurefield.metrics import cosine_map, psnr
from featurefield.npyrows import NpyRows
from featurefield.run import Run, load_checkpoint, load_run
from featurefield.run_config import CHECKPOINT, NORMALIZATION, RunConfig, SceneSpec, plain, read_normalization
from featurefield.stopping import StopRequest, TrainingStopped
from featurefield.teachers import DEFAULT_TEACHER, TeacherSpec


@dataclass
class TrainConfig:
    """Settings of the training loop shared by every backend.

    Attributes:
        steps: optimisation steps of one view or ray batch each (``None``: the backend's default for the device);
            on N ranks (torchrun) the run takes ``ceil(steps / N)`` steps of N views each, the same views seen
            (:mod:`featurefield.distributed`).
        seed: seeds parameters init and batch sampling.
        eval_every: evaluate on held-out views every this many steps (0: only at the end).
        eval_views: at most this many test views in intermediate evaluations.
        final_eval_views: at most this many test views in the final evaluation (None: all; on a CPU a
            large test set takes minutes, e.g. lego's 200 views).
        checkpoint_every: write ``checkpoints/latest.pt`` every this many steps (and at the end).
        log_every: append a line to ``metrics.jsonl`` every this many steps.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        feature_batch: images per teacher forward pass when filling the feature cache.
        cache_dir: feature cache folder (default: the per-user cache); streamed runs keep decoded images there too.
        progress: show the live progress line.
        scale_adam: on N ranks, scale Adam for N views a step as gsplat's multi-GPU training does (lr x sqrt(N),
            eps / sqrt(N), betas 1 - N (1 - beta)); False keeps the one-GPU settings.
        data: where the training views live (``--data.residency auto|device|host|stream``) and how streamed
            views are read ahead (:class:`~featurefield.data.view_source.DataConfig`).
    """

    steps: int | None = None
    seed: int = 0
    eval_every: int = 0
    eval_views: int = 8
    final_eval_views: int | None = None
    checkpoint_every: int = 1000
    log_every: int = 100
    device: str = "auto"
    feature_batch: int = 8
    cache_dir: Path | None = None
    progress: bool = True
    scale_adam: bool = True
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):  # as a run's config.json records it
            self.data = DataConfig(**self.data)
        if self.steps is not None and (isinstance(self.steps, bool) or self.steps < 1):
            raise FeatureFieldError(f"--steps must be at least 1 (or left out for the default), got {self.steps}")
        for name, low in (("eval_every", 0), ("checkpoint_every", 1), ("log_every", 1), ("feature_batch", 1)):
            if getattr(self, name) < low:
                raise FeatureFieldError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if self.eval_views < 1:
            raise FeatureFieldError(f"eval views must be at least 1, got {self.eval_views}")
        if self.final_eval_views is not None and self.final_eval_views < 1:
            raise FeatureFieldError(f"--final-eval-views must be at least 1 (or left out for all), got {self.final_eval_views}")


#: what one ``metrics.jsonl`` line and the run's small files (config, metrics.json, normalization) take, at most
LOG_LINE_BYTES = 1024
RUN_FILES_BYTES = 64 * 1024


def checkpoint_bytes(fld: FeatureField) -> int:
    """The size of ``fld``'s checkpoint as it is now: its tensors (parameters, buffers) plus each optimizer's
    per-parameter state (Adam's two moments, the same size as the parameter; assumed before the first step)."""
    tensors = sum(v.numel() * v.element_size() for v in fld.state_dict().values() if torch.is_tensor(v))
    moments = 0
    for opt in fld.optimizers().values():
        for group in opt.param_groups:
            for p in group["params"]:
                state = [v for v in opt.state.get(p, {}).values() if torch.is_tensor(v) and v.numel() == p.numel()]
                moments += p.numel() * p.element_size() * (len(state) if opt.state.get(p) else 2)
    return tensors + moments


def nonfinite_tensors(state: dict) -> list[str]:
    """The names of the floating-point tensors of ``state`` (a ``state_dict``) holding a NaN or an infinity."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def _images_uint8(scene: Scene, views: list[int], device: torch.device) -> tuple[Tensor, Tensor | None]:
    imgs, alphas = [], []
    for i in views:
        imgs.append((scene.image(i) * 255).round().to(torch.uint8))
        a = scene.alpha(i)
        alphas.append(None if a is None else (a * 255).round().to(torch.uint8))
    images = torch.stack(imgs).to(device)
    alpha = None if any(a is None for a in alphas) else torch.stack(alphas).to(device)
    return images, alpha


def optimization_step(fld: FeatureField, data: TrainData, step: int, generator: torch.Generator,
                      parallel: distributed.DataParallel | None = None) -> dict[str, Tensor]:
    """One step of any field through the protocol: sample, loss, backward, optimizers, schedulers, densify.

    ``parallel``: the collectives of a step on several ranks (this rank's batch, gradients averaged, the
    densification's random draws shared, the losses averaged); None for one process.
    """
    parallel = parallel or distributed.DataParallel()
    batch = parallel.sample_batch(fld, data, step, generator)
    losses = fld.training_loss(batch, data, step)
    losses["loss"].backward()
    parallel.average_gradients(fld)
    fld.after_step(step, batch, losses)
    for opt in fld.optimizers().values():
        opt.step()
        opt.zero_grad(set_to_none=True)
    for sch in fld.schedulers().values():
        sch.step()
    with parallel.shared_randomness(step, data.cameras.device):
        fld.after_optimizer_step(step)
    return parallel.mean_losses(losses)


class Trainer:
    """Trains one field on one scene with one or more teachers, in a run folder.

    Args:
        field: the backend's name (:mod:`featurefield.fields.registry`); field_config: its config dataclass
            (None: its defaults).
        teachers: the teachers to distill.
    """

    def __init__(self, run_dir: Path, scene: Scene, field: str, field_config, teachers: list[TeacherSpec],
                 config: TrainConfig, built_teachers: dict | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.scene = scene
        self.spec: FieldSpec = field_spec(field)
        self.kind = field
        self.field_config = field_config
        self.teacher_specs = [TeacherSpec.parse(t) for t in teachers]
        self._built_teachers = dict(built_teachers or {})  # already made (their options checked) by train()
        self.config = config
        self.ranks = distributed.current()  # one rank, or those of torchrun's group (train() joins it)
        self.parallel = distributed.DataParallel(self.ranks, config.seed, config.scale_adam)
        self.device = distributed.rank_device(config.device)
        self.steps = config.steps or self.spec.default_steps(self.device)
        self.console = None
        self._elapsed_before = {"train_seconds": 0.0, "feature_seconds": 0.0, "wall_seconds": 0.0, "sessions": 0}
        self._last_checkpoint: int | None = None
        self._t_start, self._t_loop, self._t_features = time.perf_counter(), None, 0.0

    # ------------------------------------------------------------------ data
    def prepare(self) -> None:
        """Teachers, their features of the training views (extracted once, cached) and the views a field trains
        on (:attr:`data`), held where :attr:`residency` says."""
        from featurefield.teachers.store import FeatureStore

        scene, dev = self.scene, self.device
        train_views, test_views = list(scene.split["train"]), list(scene.split.get("test", []))
        if not train_views:
            raise FeatureFieldError(f"{scene.source or scene.name}: the scene has no training views")
        store = self._store = FeatureStore(self.config.cache_dir)
        self.targets = []
        self._test_rows: dict[tuple[str, tuple[int, ...]], NpyRows] = {}  # readers of test-view features, made on use
        H, W = int(scene.cameras.height[train_views[0]]), int(scene.cameras.width[train_views[0]])
        self.teachers = {}
        for spec in self.teacher_specs:
            teacher = (self._built_teachers.pop(spec.name, None) or spec.create()).to(dev)
            self.teachers[spec.name] = teacher
            distributed.fill_feature_cache(store, scene, teacher, train_views, device=dev,  # several ranks: a shard each
                                           batch_size=self.config.feature_batch, progress=self.config.progress)
            self.targets.append(TeacherTarget(spec.name, teacher.dim, tuple(teacher.feature_grid(H, W)), spec.weight))
        nbytes = view_bytes(len(train_views), H, W, scene.alpha(train_views[0]) is not None,
                            [(t.dim, *t.grid) for t in self.targets])
        # several ranks: rank 0's choice for all (they must agree: the streamed image cache is written once)
        self.residency = distributed.on_main(lambda: choose_residency(self.config.data, nbytes, dev))
        extract = dict(views=train_views, device=dev, batch_size=self.config.feature_batch, progress=self.config.progress)
        if self.residency == "stream":
            from featurefield.data.image_cache import cached_images

            features = {name: store.rows(scene, teacher, **extract) for name, teacher in self.teachers.items()}
            def decoded(progress: bool):
                return cached_images(scene, train_views, store.cache_dir, progress=progress)

            images = distributed.agree(lambda: decoded(self.config.progress), main_only=True)  # several ranks: rank 0
            if images is None:  # writes the image cache, then the others read it
                images = decoded(False)
            views = StreamedViews(images, features, dev, self.config.data, seed=self.config.seed)
        else:
            held = dev if self.residency == "device" else torch.device("cpu")
            features = {name: store.load_or_extract(scene, teacher, **extract).to(held)
                        for name, teacher in self.teachers.items()}
            images, alphas = _images_uint8(scene, train_views, held)
            views = ResidentViews(images, alphas, features, dev, self.residency)
        bg = None if scene.background is None else torch.tensor(scene.background, dtype=torch.float32, device=dev)
        self.data = TrainData(cameras=scene.canonical_cameras()[train_views].to(dev), background=bg, views=views)
        self.test_views = test_views

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self, generator: torch.Generator) -> dict:
        state = {"torch": torch.get_rng_state(), "generator": generator.get_state(), "numpy": np.random.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict, generator: torch.Generator) -> None:
        torch.set_rng_state(state["torch"])
        generator.set_state(state["generator"])
        np.random.set_state(state["numpy"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def save_checkpoint(self, fld: FeatureField, step: int, generator: torch.Generator) -> None:
        """Write ``checkpoints/latest.pt`` (rank 0; every rank returns once it is written, or raises its error)."""
        distributed.agree(lambda: self._save_checkpoint(fld, step, generator), main_only=True)
        self._last_checkpoint = step

    def _save_checkpoint(self, fld: FeatureField, step: int, generator: torch.Generator) -> None:
        state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in fld.state_dict().items()}
        bad = nonfinite_tensors(state)
        if bad:  # never overwrite the last good checkpoint with a broken model
            raise self._diverged_error(step, f"non-finite parameters: {', '.join(bad[:3])}")
        try:
            self._write_checkpoint(fld, step, generator, state)
        except (OSError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and "writ" not in str(err) and "inline_container" not in str(err):
                raise  # not a failed write (torch's zip writer says "file write failed" or "unexpected pos"): a bug
            reason = err.strerror if isinstance(err, OSError) and err.strerror else "the write failed"
            raise FeatureFieldError(
                f"{self.run_dir / CHECKPOINT}: cannot write the checkpoint of step {step} ({reason}; "
                f"{megabytes(free_bytes(self.run_dir))} free); "
                f"{self._previous_checkpoint()}; free disk space and continue with --output {self.run_dir} --resume"
            ) from err

    def check_free_space(self, fld: FeatureField, start: int) -> None:
        """Refuse to train when the run folder's disk clearly cannot hold what training writes from step ``start``.

        A checkpoint is written beside the previous one and renamed over it (:func:`~featurefield.io.atomic_path`),
        so two are on disk for a moment; the log grows a line per ``log_every`` steps. The checkpoint's size is
        the field's present size (:func:`checkpoint_bytes`); a field that grows (Gaussians) may need more, and a
        disk that fills up later still fails in one line, keeping the previous checkpoint.
        """
        ckpt_path = self.run_dir / CHECKPOINT
        size = checkpoint_bytes(fld)
        have = ckpt_path.stat().st_size if ckpt_path.is_file() else 0  # already on disk: one more copy is needed
        logs = LOG_LINE_BYTES * ((self.steps - start) // self.config.log_every + 2) + RUN_FILES_BYTES
        need = max(2 * size - have, 0) + logs
        free = free_bytes(self.run_dir)
        if free < need:
            fix = (f"free disk space there (the checkpoint of step {start} is intact), then continue with --output "
                   f"{self.run_dir} --resume" if have else
                   "free disk space there and run the same command again, or choose another --output (nothing was "
                   "trained yet)")
            raise FeatureFieldError(
                f"{self.run_dir}: training needs about {megabytes(need)} free for its checkpoints ({megabytes(size)} "
                f"each, written beside the previous one) and logs, but {megabytes(free)} are free; {fix}")

    def _previous_checkpoint(self) -> str:
        if self._last_checkpoint is None:
            return "no checkpoint was written before"
        return f"the previous checkpoint (step {self._last_checkpoint}) is intact"

    def _diverged_error(self, step: int, what: str) -> FeatureFieldError:
        """The one-line error of a diverged training: what was seen, the checkpoint kept, the likely setting."""
        from featurefield.config_checks import changed_rates

        kept = (f"the last good checkpoint (step {self._last_checkpoint}) is kept at {self.run_dir / CHECKPOINT}"
                if self._last_checkpoint is not None else "no checkpoint was written yet")
        suspects = changed_rates(self.field_config, self.kind)
        suspects += [f"--teacher {t.name}@{t.weight:g}" for t in self.teacher_specs if t.weight > 1.0]
        hint = (f"likely cause: {', '.join(suspects[:2])}; lower it" if suspects
                else "lower the learning rates or the feature weight")
        return FeatureFieldError(f"training diverged at step {step} ({what}); {kept}; {hint}, then --resume or start again")

    def _write_checkpoint(self, fld: FeatureField, step: int, generator: torch.Generator, state: dict) -> None:
        optimizers, schedulers = self.parallel.checkpoint_states(fld)  # as one rank holds them, whatever wrote it
        atomic_torch_save(self.run_dir / CHECKPOINT, {
            "step": step,
            "field_kind": self.kind,
            "field_config": fld.config_dict(),
            "field_state": state,
            "optimizers": optimizers,
            "schedulers": schedulers,
            "ranks": self.ranks.world,
            "rng": self._rng_state(generator),
            "targets": [dataclasses.asdict(t) for t in self.targets],
            "elapsed": self._elapsed(),
        })

    def _elapsed(self) -> dict[str, float]:
        """Seconds spent so far over every session of this run (a resumed run keeps counting)."""
        now = time.perf_counter()
        before = self._elapsed_before
        return {"train_seconds": before["train_seconds"] + (now - self._t_loop if self._t_loop else 0.0),
                "feature_seconds": before["feature_seconds"] + self._t_features,
                "wall_seconds": before["wall_seconds"] + (now - self._t_start),
                "sessions": before["sessions"] + 1}

    # ------------------------------------------------------------------ evaluation
    def test_features(self, teacher: str, views: list[int]) -> NpyRows:
        """Teacher features of test views as a reader (``rows.read(k) -> [D, h, w]`` fp16 numpy of ``views[k]``),
        extracted (or found in the cache) on first use.

        Training never needs them, so a run starts fitting after extracting the training views only; the
        evaluations pay for the test views they look at, and read them one view at a time.
        """
        key = (teacher, tuple(views))
        if key not in self._test_rows:
            self._test_rows[key] = self._store.rows(self.scene, self.teachers[teacher], list(views), device=self.device,
                                                    batch_size=self.config.feature_batch, progress=False)
        return self._test_rows[key]

    @torch.no_grad()
    def evaluate(self, fld: FeatureField, max_views: int | None) -> dict[str, float]:
        views = self.test_views if max_views is None else self.test_views[:: max(1, math.ceil(len(self.test_views) / max_views))]
        if not views:
            return {}
        cams = self.scene.canonical_cameras()
        psnrs, cos = [], {t.name: [] for t in self.targets}
        targets = {t.name: self.test_features(t.name, views) for t in self.targets}
        was_training = fld.training
        fld.eval()
        for k, i in enumerate(views):
            r = fld.render(cams[i].to(self.device), background=self.data.background, features=bool(self.targets))
            gt = self.scene.image(i).to(self.device)
            psnrs.append(psnr(r.rgb, gt))
            for t in self.targets:
                target = torch.from_numpy(targets[t.name].read(k)).to(self.device, torch.float32)
                pred = fld.decode(r, t.name, tuple(target.shape[-2:]), as_teacher=True)
                cos[t.name].append(float(cosine_map(pred, target).mean()))
        fld.train(was_training)
        out = {"test/psnr": float(np.mean(psnrs)), "test/views": len(views)}
        for name, values in cos.items():
            out[f"test/cosine/{name}"] = float(np.mean(values))
        return out

    # ------------------------------------------------------------------ the loop
    def step(self, fld: FeatureField, step: int, generator: torch.Generator, nonfinite: Tensor) -> dict[str, Tensor]:
        """One optimisation step: sample, loss, backward, optimizer and scheduler steps, densification.

        ``nonfinite`` (a 0-d bool tensor on the device) is or-ed with "the loss was not finite"; it is
        checked where the loop synchronises anyway, so a GPU step never waits for the CPU.
        """
        losses = optimization_step(fld, self.data, step, generator, self.parallel)
        nonfinite |= ~torch.isfinite(losses["loss"].detach())
        return losses

    def _raise_if_diverged(self, nonfinite: Tensor, losses: dict[str, Tensor], step: int, ckpt_path: Path) -> None:
        if bool(nonfinite):
            raise self._diverged_error(step, f"loss is {float(losses['loss'].detach())}")

    @staticmethod
    def _broken(fld: FeatureField, err: Exception) -> str | None:
        """What is wrong with a field whose step failed (non-finite parameters, nothing left, nothing in view),
        else None (the failure is not the model's: a bug, keep its traceback)."""
        bad = nonfinite_tensors(fld.state_dict())
        if bad:
            return f"non-finite parameters: {', '.join(bad[:3])}"
        if fld.stats().get("gaussians", 1) == 0:
            return "every Gaussian was pruned"
        if "does not require grad" in str(err):  # the loss no longer depends on any parameter
            return "the model no longer renders anything into the training views"
        return None

    def _record_resolved_config(self, fld: FeatureField) -> None:
        """Write the field's settings as created into ``config.json`` where creating resolved any (``--splat.strategy
        auto``, an automatic MCMC cap, a NeRF's device preset), so the run's config reproduces it on any device."""
        if not (self.run_dir / "config.json").is_file():
            return
        saved = RunConfig.read(self.run_dir)
        settings = plain(fld.config)
        if saved.field_config != settings:
            saved.field_config = settings
            saved.write(self.run_dir)

    def _resume(self, generator: torch.Generator) -> tuple[FeatureField, int]:
        """The field, its optimizers, schedulers and random state as the run's checkpoint left them; the step."""
        ckpt_path = self.run_dir / CHECKPOINT
        ckpt = load_checkpoint(ckpt_path, device="cpu")
        if ckpt["field_kind"] != self.kind:
            raise FeatureFieldError(f"{ckpt_path}: run holds a {ckpt['field_kind']!r} field, not {self.kind!r}")
        fld = self.spec.field_class().from_config(ckpt["field_config"], ckpt["field_state"]).to(self.device)
        if set(fld.optimizers()) != set(ckpt["optimizers"]):
            raise FeatureFieldError(f"{ckpt_path}: the optimizer state was written by another featurefield "
                                    "version; it cannot be resumed (start a new run, or render/export it)")
        for k, opt in fld.optimizers().items():
            opt.load_state_dict(ckpt["optimizers"][k])
        for k, sch in fld.schedulers().items():
            sch.load_state_dict(ckpt["schedulers"][k])
        self._set_rng_state(ckpt["rng"], generator)
        self._elapsed_before = {**self._elapsed_before, **ckpt.get("elapsed", {})}
        start = self._last_checkpoint = int(ckpt["step"])
        self.console.print(f"resuming {self.run_dir} from step {start}")
        return fld, start

    def _create(self) -> FeatureField:
        """A fresh field for the scene (seeded), its resolved settings recorded in the run's config."""
        torch.manual_seed(self.config.seed)
        np.random.seed(self.config.seed)
        fld = self.spec.field_class().create(self.scene, self.targets, self.field_config, max_steps=self.steps,
                                             device=self.device).to(self.device)
        distributed.agree(lambda: self._record_resolved_config(fld), main_only=True)
        return fld

    def _log(self, record: dict) -> None:
        if not self.ranks.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _progress_line(self, fld: FeatureField, losses: dict[str, Tensor], done: int, start: int) -> str:
        """Log the step's numbers to ``metrics.jsonl``; returns the progress line's text."""
        last = {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in losses.items()}
        last.update({k: float(v) for k, v in fld.stats().items()})
        self._last_logged = last
        rate = (done - start) / max(time.perf_counter() - self._t_loop, 1e-9)
        self._log({"step": done, **last, "it_per_s": rate})
        info = f"loss {last['loss']:.4f}"
        if "psnr" in last:
            info += f"  psnr {last['psnr']:.2f}"
        if "gaussians" in last:
            info += f"  gaussians {int(last['gaussians']):,}"
        return info + f"  {rate:.1f} it/s"

    def _loop(self, fld: FeatureField, start: int, generator: torch.Generator) -> None:
        """Steps ``start..steps``: log, evaluate and checkpoint on schedule; a stop request (Ctrl-C, SIGTERM)
        finishes the step, checkpoints and raises :class:`TrainingStopped`."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        ckpt_path = self.run_dir / CHECKPOINT
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
        self._t_loop = time.perf_counter()
        done = start
        self._last_logged: dict = {}
        # piped to a file, a live bar prints nothing until the end: plain lines instead, every tenth of the run
        plain = self.config.progress and not self.console.is_terminal
        plain_every = max(1, (self.steps - start) // 10)
        stopping = False  # agreed by every rank (a signal may reach them at different steps)
        with StopRequest(interrupt_on_second=not self.ranks.distributed) as stop, \
                Progress(*columns, console=self.console, disable=not self.config.progress or plain or not self.ranks.main,
                         transient=False) as bar:
            task = bar.add_task(f"train {self.kind}" + (f" on {self.ranks.world} ranks" if self.ranks.distributed else ""),
                                total=self.steps, completed=start, info="")
            nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
            for step in range(start, self.steps):
                try:
                    losses = self.step(fld, step, generator, nonfinite)
                except torch.cuda.OutOfMemoryError as err:  # this rank's own failure: every rank that has it says so
                    raise distributed.rank_specific(FeatureFieldError(
                        f"out of GPU memory at step {step}; lower memory with --downscale 2, {self.spec.oom_advice} "
                        "or fewer teachers"
                    )) from err
                except (RuntimeError, ValueError) as err:  # a diverged model fails in many ways (empty, NaN)
                    broken = self._broken(fld, err)
                    if broken is None:
                        raise
                    raise distributed.rank_specific(self._diverged_error(step, broken)) from err
                done = step + 1
                stopping = self.parallel.should_stop(bool(stop), fld, done)
                checkpoint_now = done % self.config.checkpoint_every == 0 or done == self.steps
                log_now = done % self.config.log_every == 0 or done == self.steps or done == start + 1
                if self.device.type != "cuda" or log_now or checkpoint_now:
                    self._raise_if_diverged(nonfinite, losses, step, ckpt_path)
                # a NaN or infinite Gaussian is culled by the rasterizer, so the loss can stay finite: look at the
                # parameters too, at log steps and every 10th on a CPU (a NeRF's hash tables take milliseconds to scan)
                scan = log_now or checkpoint_now or (self.device.type != "cuda" and done % 10 == 0)
                if scan and (bad := nonfinite_tensors(fld.state_dict())):
                    raise self._diverged_error(step, f"non-finite parameters: {', '.join(bad[:3])}")
                if log_now:
                    bar.update(task, info=self._progress_line(fld, losses, done, start))
                if self.config.eval_every and done % self.config.eval_every == 0 and done < self.steps:
                    distributed.agree(functools.partial(self._evaluate_and_log, fld, done), main_only=True)
                if checkpoint_now or stopping:
                    self.save_checkpoint(fld, done, generator)
                bar.update(task, completed=done)
                if plain and ((done - start) % plain_every == 0 or done == self.steps):
                    line = _plain_progress_line(self.kind, done, self.steps, start, time.perf_counter() - self._t_loop,
                                                self._last_logged)
                    self.console.print(line, highlight=False, soft_wrap=True)
                if stopping:
                    break
        if stopping:  # also after the last step: the final evaluation is left to --resume
            signum, name = stop.signum or signal.SIGTERM, stop.signal_name or "a signal to another rank"
            raise TrainingStopped(signum, f"stopped by {name} at step {done} of {self.steps}; checkpoint written to {ckpt_path}",
                                  f"continue with --output {self.run_dir} --resume")

    def _evaluate_and_log(self, fld: FeatureField, done: int) -> None:
        """An evaluation during training on a few test views, logged and printed (rank 0)."""
        metrics = self.evaluate(fld, self.config.eval_views)
        self._log({"step": done, **metrics})
        self.console.print(f"step {done}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def _finish(self, fld: FeatureField, start: int, generator: torch.Generator) -> dict:
        """The final evaluation and the run's summary (``metrics.json``, and the last line of ``metrics.jsonl``)."""
        t_train = time.perf_counter() - self._t_loop
        if start >= self.steps:
            self.save_checkpoint(fld, self.steps, generator)
        summary = {"steps": self.steps, **self._elapsed(), "device": str(self.device), "data/residency": self.residency}
        if self.ranks.distributed:
            summary["ranks"] = self.ranks.world
        if summary["sessions"] > 1:  # resumed: this session's share beside the totals
            summary.update({"session_train_seconds": t_train, "session_feature_seconds": self._t_features})
        if self.device.type == "cuda":
            summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            summary["gpu"] = torch.cuda.get_device_name(self.device)
        distributed.agree(lambda: self._final_evaluation(fld, summary), main_only=True)
        return summary

    def _final_evaluation(self, fld: FeatureField, summary: dict) -> None:
        """Evaluate, complete ``summary`` and write it (rank 0)."""
        t_eval = time.perf_counter()
        summary.update(self.evaluate(fld, self.config.final_eval_views))
        summary["eval_seconds"] = time.perf_counter() - t_eval  # test-view features included
        summary.update({k: float(v) for k, v in fld.stats().items()})
        atomic_write_json(self.run_dir / "metrics.json", summary)
        self._log({"step": self.steps, "final": True, **summary})

    def fit(self, resume: bool = False) -> dict:
        """Prepare the data, create (or resume) the field, train it, evaluate it; returns the run's summary."""
        from rich.console import Console

        self.console = Console(stderr=True, quiet=not self.ranks.main)
        self._t_start = time.perf_counter()
        self._t_loop = None
        ckpt_path = self.run_dir / CHECKPOINT
        if resume and ckpt_path.exists():  # checked before any feature extraction: a broken file is found at once
            step = int(load_checkpoint(ckpt_path, device="cpu")["step"])
            if step > self.steps:
                raise FeatureFieldError(f"{self.run_dir}: the run is at step {step}, past --steps {self.steps}; "
                                        f"pass --steps {step} or more to continue it, or leave --steps out")
            distributed.agree(lambda: _tidy_for_resume(self.run_dir, step), main_only=True)
        self.prepare()
        self._t_features = time.perf_counter() - self._t_start
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        if resume and (self.run_dir / CHECKPOINT).exists():
            fld, start = self._resume(generator)
        else:
            fld, start = self._create(), 0
        fld.train()
        # build optimizers, then schedulers, before the first step: a scheduler created lazily after an
        # optimizer step misses that step (and PyTorch warns about the order)
        fld.optimizers()
        fld.schedulers()
        self.check_free_space(fld, start)
        self.parallel.start(fld, start)  # several ranks: one field, Adam for N views a step, shared statistics
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            self._loop(fld, start, generator)
            summary = self._finish(fld, start, generator)
        finally:
            self.data.views.close()
        self.field = fld
        return summary


def _plain_progress_line(kind: str, done: int, total: int, start: int, seconds: float, last: dict) -> str:
    """``train splat: step 52/520 (10%)  loss 0.1234  psnr 21.05  3.1 it/s  about 2 min 31 s left``."""
    rate = (done - start) / max(seconds, 1e-9)
    line = f"train {kind}: step {done}/{total} ({100 * done // max(total, 1)}%)"
    if "loss" in last:
        line += f"  loss {last['loss']:.4f}"
    if "psnr" in last:
        line += f"  psnr {last['psnr']:.2f}"
    line += f"  {rate:.1f} it/s"
    if done < total:
        left = int(round((total - done) / max(rate, 1e-9)))
        line += f"  about {left // 60} min {left % 60} s left" if left >= 60 else f"  about {left} s left"
    return line




def _tidy_for_resume(run_dir: Path, step: int) -> None:
    """Before resuming at ``step``: the log cut back to it, and a checkpoint write cut short by a kill removed."""
    _truncate_log(run_dir / "metrics.jsonl", step)
    ckpt_path = run_dir / CHECKPOINT
    for stray in ckpt_path.parent.glob(f".{ckpt_path.name}.*"):
        stray.unlink(missing_ok=True)


def _truncate_log(path: Path, step: int) -> None:
    """Drop what a run logged after its checkpoint at ``step`` (and the last session's final summary), so a
    resumed run's ``metrics.jsonl`` never repeats a step or goes back."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(record, dict) and not record.get("final") and record.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))


def scene_signature(scene: Scene) -> str:
    """A digest of what makes two scene folders the same capture: views, split, cameras (world frame, to
    1e-4) and the pixels of the first training view. A run can be pointed at a moved copy with the same one."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps({"views": len(scene), "split": {k: list(v) for k, v in sorted(scene.split.items())}}).encode())
    cams = scene.cameras
    for t in (cams.c2w[:, :3, :4], cams.fx, cams.fy, cams.cx, cams.cy):
        h.update(np.round(t.double().numpy(), 4).tobytes())
    h.update(np.stack([cams.width.numpy(), cams.height.numpy()]).astype(np.int64).tobytes())
    first = scene.split["train"][0] if scene.split.get("train") else 0
    h.update((scene.rgba(first) * 255).round().to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _repoint(output: Path, saved: RunConfig, new: SceneSpec) -> Scene:
    """The scene at ``new``'s path, loaded with the run's own loader settings, after checking that it is the
    capture the run was trained on (:func:`scene_signature`, recorded in ``scene.options``-free metadata)."""
    old = saved.scene
    candidate = SceneSpec(new.path, old.format, old.downscale, dict(old.options)).load()
    recorded = saved.scene_signature
    if recorded is None:  # a run from before signatures: compare with the original if it still loads
        try:
            recorded = scene_signature(old.load())
        except FeatureFieldError as err:
            raise FeatureFieldError(f"{output}: was trained on {old.path}, which cannot be loaded to compare with "
                                    f"{new.path}; resume it with its own scene") from err
    if scene_signature(candidate) != recorded:
        raise FeatureFieldError(f"{new.path}: is not the scene {output} was trained on ({old.path}: other views, "
                                "cameras or images); resume with that scene, or train a new run")
    return candidate


def _fit(trainer: Trainer, resume: bool) -> dict:
    """``trainer.fit`` with a full or read-only disk turned into one line that says what is kept."""
    import errno

    try:
        return trainer.fit(resume=resume)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise FeatureFieldError(f"{err.filename or trainer.run_dir}: cannot write ({err.strerror}); "
                                f"{trainer._previous_checkpoint()}; free disk space and continue with "
                                f"--output {trainer.run_dir} --resume") from err


def train(scene: str | Path | Scene, output: str | Path, *, field: str = "splat",
          teachers: list[str | dict | TeacherSpec] = (DEFAULT_TEACHER,), config: TrainConfig | None = None,
          field_config=None, format: str | None = None, downscale: float = 1.0, scene_options: dict | None = None,
          weights: Path | None = None, resume: bool = False) -> Run:
    """Train a feature field and return the loaded :class:`~featurefield.run.Run`.

    Every value is checked before any work, and a run folder has one writer at a time (:mod:`featurefield.runlock`).

    Args:
        scene: a scene folder, ``"demo"``/``"demo:SEED"``, or a loaded :class:`Scene`. On resume it may name
            another folder holding the same capture (the run's scene moved): the run is pointed at it.
        output: the run folder (created; with ``resume=True``, continued from its checkpoint).
        field: the backend's name (``"splat"``, ``"nerf"``: :func:`featurefield.fields.registry.registered`).
        teachers: teacher names or specs (see :meth:`TeacherSpec.parse`); ``[]`` trains colour only.
        config: loop settings; field_config: the backend's config dataclass (defaults if None). On resume,
            ``config.steps`` (when set) extends the run to that many steps; the rest is the run's own.
        weights: the command line's ``--weights``, for the teachers that take a weights folder. The run records where
            each teacher's weights were found (:attr:`TeacherSpec.weights`); on resume, ``weights`` replaces that place.

    Launched by torchrun (``torchrun --nproc-per-node N``), every rank calls it alike: it joins the process group,
    trains data parallel, and rank 0 alone writes the run (:mod:`featurefield.distributed`). ``config.steps``
    counts steps of one view, so N ranks take ``ceil(steps / N)`` steps of N views; ``config.json`` records the
    run's steps and the ranks it started on, and a ``config.steps`` given on resume is read the same way.
    """
    from featurefield.outputs import check_output_dir

    config = config or TrainConfig()
    output = Path(output)
    check_output_dir(output)
    if config.cache_dir is not None:
        check_output_dir(Path(config.cache_dir), "--cache-dir")
    with distributed.joined(config.device):
        trainer = _train(scene, output, field, teachers, config, field_config, format, downscale, scene_options,
                         weights, resume)
    return load_run(output, device=trainer.device)


def _train(scene, output: Path, field: str, teachers, config: TrainConfig, field_config, format, downscale,
           scene_options, weights, resume: bool) -> Trainer:
    """:func:`train` on this rank, inside its process group: returns the trainer, done."""
    from featurefield.config_checks import check_config_values

    ranks = distributed.current()
    if resume:
        if not (output / "config.json").is_file():
            raise FeatureFieldError(f"{output}: nothing to resume (no config.json); start a new run without --resume")
        with distributed.main_lock(output):
            saved = RunConfig.read(output)
            normalization = read_normalization(output)
            field = saved.field
            field_config = field_spec(field).config_from_dict(saved.field_config)
            teacher_specs = saved.teachers
            built = None
            if weights is not None:  # the teachers' weights moved: use (and record) the place given
                built = {t.name: t.create(weights) for t in teacher_specs}
                saved.teachers = teacher_specs = [t.recorded(built[t.name]) for t in teacher_specs]
            started_on = int(saved.trainer.get("ranks", 1))  # the run's steps are of that many views
            steps = distributed.run_steps(config.steps, started_on) if config.steps else saved.trainer.get("steps")
            # where the views live is the caller's to choose (this machine's memory); the pool's order is the run's
            data = dataclasses.replace(DataConfig(**saved.trainer.get("data", {})), residency=config.data.residency,
                                       prefetch=config.data.prefetch)
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            config = TrainConfig(**{**{k: v for k, v in saved.trainer.items() if k in known}, "steps": steps,
                                    "cache_dir": saved.trainer.get("cache_dir"), "progress": config.progress,
                                    "device": config.device, "data": data})
            new = None if scene is None else SceneSpec.of(scene, format, downscale, scene_options)
            changed = steps != saved.trainer.get("steps") or weights is not None
            if new is not None and new.path != saved.scene.path:
                loaded = _repoint(output, saved, new)
                saved.scene = SceneSpec(new.path, saved.scene.format, saved.scene.downscale, saved.scene.options)
                changed = True
            else:
                loaded = saved.scene.load()
            loaded = dataclasses.replace(loaded, normalization=normalization)
            if changed:
                saved.trainer = {**saved.trainer, "steps": steps}
                distributed.agree(lambda: saved.write(output), main_only=True)
            trainer = Trainer(output, loaded, field, field_config, teacher_specs, config, built)
            _fit(trainer, resume=True)
        return trainer

    spec = field_spec(field)
    scene_options = dict(scene_options or {})
    field_config = field_config if field_config is not None else spec.config_class()()
    check_config_values(field_config, field)
    teacher_specs = [TeacherSpec.parse(t, weights) for t in teachers]
    names = [t.name for t in teacher_specs]
    if len(set(names)) != len(names):
        raise FeatureFieldError(f"teacher listed twice: {names}")
    if teacher_specs and getattr(field_config, "embed_dim", 1) < 1:
        raise FeatureFieldError(f"--{field}.embed-dim must be at least 1 to distill a teacher")
    device = distributed.rank_device(config.device)
    loaded = scene if isinstance(scene, Scene) else None
    if loaded is None:
        from featurefield.data import load_scene

        loaded = load_scene(scene, format=format, downscale=downscale, **scene_options)
    built = {t.name: t.create() for t in teacher_specs}  # bad options or weights: one line now, not after the folder
    teacher_specs = [t.recorded(built[t.name]) for t in teacher_specs]  # later commands find the weights there
    config = dataclasses.replace(config, steps=distributed.run_steps(config.steps or spec.default_steps(device), ranks.world))
    distributed.agree(lambda: _make_run_folder(output), main_only=True)
    with distributed.main_lock(output):
        distributed.agree(lambda: _write_new_run(output, scene, loaded, field, field_config, teacher_specs, config,
                                                 format, downscale, scene_options, ranks.world), main_only=True)
        trainer = Trainer(output, loaded, field, field_config, teacher_specs, config, built)
        _fit(trainer, resume=False)
    return trainer


def _make_run_folder(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FeatureFieldError(f"{output}: cannot create the run folder ({err.strerror}); choose another --output") from err


def _write_new_run(output: Path, scene, loaded: Scene, field: str, field_config, teacher_specs, config: TrainConfig,
                   format, downscale, scene_options, ranks: int) -> None:
    """The new run's ``config.json`` and normalization, after checking that the folder holds no trained run."""
    if (output / CHECKPOINT).exists():
        raise FeatureFieldError(f"{output}: already holds a trained run; pass --resume to continue it or choose another --output")
    RunConfig(
        scene=SceneSpec.of(scene, format, downscale, scene_options), field=field, field_config=plain(field_config),
        teachers=teacher_specs,
        trainer={**plain(config), **({"ranks": ranks} if ranks > 1 else {})},
        background=None if loaded.background is None else list(loaded.background),
        cache_dir=None if config.cache_dir is None else str(config.cache_dir),
        featurefield=__import__("featurefield").__version__,
        scene_signature=scene_signature(loaded),
    ).write(output)
    atomic_write_json(output / NORMALIZATION, loaded.normalization.to_dict())
    (output / "metrics.jsonl").unlink(missing_ok=True)  # a log left by an attempt that never checkpointed
