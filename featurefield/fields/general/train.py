"""Training the generalizable field over the instances of a generated category.

Each step takes ``batch`` instances from the shards (streamed, :class:`~featurefield.data.category.InstanceStream`),
encodes their source view(s), renders ``rays`` rays of another view of each, and minimises
``MSE(rgb) + feature_weight * (L1(feature) + cosine_weight * (1 - cos(feature))) + alpha_weight * MSE(alpha, mask)``
against the target view's pixels, the teacher's features there (on the object's pixels only) and the
object's mask.

The run folder follows the shared layout (``config.json`` with ``"field": "general"``,
``checkpoints/latest.pt`` written atomically, ``metrics.jsonl``), so the shared machinery can load it.
A stop request (SIGINT / SIGTERM) or the ``deadline`` finishes the step, writes a checkpoint and
returns; ``resume=True`` continues from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from featurefield.data.category.shards import CategoryData, InstanceStream
from featurefield.errors import FeatureFieldError
from featurefield.fields.general.model import GeneralConfig, GeneralField
from featurefield.fields.general.rendering import render_rays
from featurefield.io import atomic_torch_save, atomic_write_json, resolve_device
from featurefield.run import load_checkpoint
from featurefield.run_config import CHECKPOINT, CONFIG
from featurefield.stopping import StopRequest

KIND = "general"


@dataclass
class GeneralTrainConfig:
    """Loop settings of :func:`train_general`.

    Attributes:
        steps: optimisation steps. batch: instances per step. rays: rays per instance per step.
        foreground: share of rays drawn from the object's pixels (the rest uniformly over the image).
        sources: source views per instance. lr: learning rate (decays 10x over the run).
        feature_weight, cosine_weight: the feature loss's weight and its cosine term's share.
        alpha_weight: weight of ``MSE(alpha, mask)``, the rendered opacity against the object's mask
            (generated views have exact masks; it makes empty space empty much sooner).
        checkpoint_every, log_every: in steps. seed: sampling seed. device: ``auto``, ``cpu``, ``cuda``.
        workers: DataLoader processes reading the shards (0: in the main process).
        amp: bf16 autocast of the MLP on CUDA. progress: show a progress bar.
        teacher_cache_gb: keep the teacher's features of every view of the instances met, fp16 on the
            device, up to this many GiB (a slow teacher such as SAM then runs once per view, not per step).
        deadline: a Unix time; at the first step past it the loop checkpoints and returns (resumable).
    """

    steps: int = 20000
    batch: int = 8
    rays: int = 512
    foreground: float = 0.5
    sources: int = 1
    lr: float = 5e-4
    feature_weight: float = 0.5
    cosine_weight: float = 1.0
    alpha_weight: float = 0.5
    checkpoint_every: int = 500
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    amp: bool = True
    teacher_cache_gb: float = 0.0
    progress: bool = True
    deadline: float | None = None


def teacher_spec(teacher, built=None) -> dict:
    """What the run records of its teacher: the registry name and options, or a custom one's settings; with the
    teacher ``built`` from them, where its weights were found (``weights``, read by :func:`make_teacher`)."""
    if isinstance(teacher, str):
        out = {"name": teacher, "options": {}}
    elif isinstance(teacher, dict):
        out = {"name": teacher["name"], "options": dict(teacher.get("options", {}))}
    else:
        return {"name": teacher.name, "options": getattr(teacher, "spec_options", {}), "settings": teacher.settings()}
    where = getattr(built, "weights_location", None)
    if where is not None:
        out["weights"] = str(where)
    return out


def make_teacher(spec: str | dict, device: torch.device, weights: str | Path | None = None):
    """The teacher a run recorded (:func:`teacher_spec`); ``weights`` (the command line's ``--weights``) in place of
    where its weights were recorded (:meth:`~featurefield.teachers.spec.TeacherSpec.create`)."""
    from featurefield.teachers import TeacherSpec

    return TeacherSpec.parse({"name": spec, "options": {}} if isinstance(spec, str) else spec).create(weights).to(device)


def _cameras_tensors(c2w: Tensor, intr: Tensor) -> tuple[Tensor, Tensor]:
    """``w2c [..., 4, 4]`` and ``K [..., 3, 3]`` from ``c2w [..., 4, 4]`` and ``intr [..., 4]`` (fx, fy, cx, cy)."""
    R, t = c2w[..., :3, :3], c2w[..., :3, 3:]
    w2c = torch.zeros_like(c2w)
    w2c[..., :3, :3] = R.transpose(-1, -2)
    w2c[..., :3, 3:] = -R.transpose(-1, -2) @ t
    w2c[..., 3, 3] = 1
    K = torch.zeros(*intr.shape[:-1], 3, 3, device=intr.device)
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2], K[..., 2, 2] = intr[..., 0], intr[..., 1], intr[..., 2], intr[..., 3], 1
    return w2c, K


def sample_rays(mask: Tensor, c2w: Tensor, intr: Tensor, rays: int, foreground: float, generator: torch.Generator):
    """Draw pixels of target views and their rays.

    Args:
        mask: ``[B, H, W]`` bool object pixels; c2w: ``[B, 4, 4]``; intr: ``[B, 4]``; rays: per view.
        foreground: share drawn from the mask (the rest uniformly).
    Returns:
        ``pix [B, R]`` flat pixel indices, ``uv [B, R, 2]`` pixel centres, ``origins, dirs [B, R, 3]``.
    """
    B, H, W = mask.shape
    n_fg = int(round(rays * foreground))
    weights = mask.reshape(B, -1).float() + 1e-6  # a view without object pixels samples uniformly
    fg = torch.multinomial(weights.cpu(), n_fg, replacement=True, generator=generator).to(mask.device)
    uni = torch.randint(0, H * W, (B, rays - n_fg), generator=generator).to(mask.device)
    pix = torch.cat([fg, uni], 1)
    uv = torch.stack([pix % W, pix // W], -1).float() + 0.5
    dirs = torch.stack([(uv[..., 0] - intr[:, None, 2]) / intr[:, None, 0], (uv[..., 1] - intr[:, None, 3]) / intr[:, None, 1],
                        torch.ones_like(uv[..., 0])], -1)
    dirs = torch.einsum("bij,brj->bri", c2w[:, :3, :3], dirs)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return pix, uv, c2w[:, None, :3, 3].expand_as(dirs), dirs


def feature_targets(maps: Tensor, uv: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Teacher features ``[B, R, D]`` at pixel positions ``uv [B, R, 2]`` of maps ``[B, D, h, w]`` (bilinear)."""
    H, W = image_size
    grid = torch.stack([2 * uv[..., 0] / W - 1, 2 * uv[..., 1] / H - 1], -1)[:, None]
    return F.grid_sample(maps.float(), grid, mode="bilinear", align_corners=False)[:, :, 0].transpose(1, 2)


class TeacherCache:
    """The teacher's features of every view of the instances met so far, fp16 on the device, up to a budget.

    ``get(data, instance, views)`` returns ``[len(views), D, h, w]``; an instance's views are extracted all at
    once the first time it is met (one batched teacher call), then served from memory.
    """

    def __init__(self, teacher, budget_gb: float, device: torch.device) -> None:
        self.teacher, self.budget, self.device = teacher, budget_gb * 2**30, device
        self.maps: dict[int, Tensor] = {}
        self.used = 0

    @torch.no_grad()
    def get(self, data: CategoryData, instance: int, views: list[int]) -> Tensor | None:
        if instance not in self.maps:
            inst = data.instance(instance)
            feats = self.teacher.extract(inst["rgb"].permute(0, 3, 1, 2).to(self.device)).half()
            if self.used + feats.numel() * 2 > self.budget:
                return None
            self.maps[instance] = feats
            self.used += feats.numel() * 2
        return self.maps[instance][views]


def _teacher_maps(teacher, cache: TeacherCache | None, data: CategoryData | None, batch: dict, images: Tensor,
                  key: str) -> Tensor:
    """Teacher features ``[N, D, h, w]`` of ``images [N, 3, H, W]`` (views ``batch[key]`` of ``batch["instance"]``),
    from the cache where it holds them."""
    if cache is not None and data is not None:
        views = batch[key].reshape(len(batch["instance"]), -1)
        got = [cache.get(data, int(i), v.tolist()) for i, v in zip(batch["instance"], views)]
        if all(g is not None for g in got):
            return torch.cat(got).float()
    with torch.no_grad():
        return teacher.extract(images).float()


def step_losses(field: GeneralField, teacher, batch: dict[str, Tensor], cfg: GeneralTrainConfig,
                generator: torch.Generator, cache: TeacherCache | None = None, data: CategoryData | None = None) -> dict[str, Tensor]:
    """Losses of one batch (see module doc). ``batch`` as :class:`InstanceStream` yields, collated; ``cache`` and
    ``data`` serve teacher features from memory."""
    dev = field.device
    src = batch["src_rgb"].to(dev).permute(0, 1, 4, 2, 3).float() / 255  # [B, S, 3, H, W]
    tgt = batch["tgt_rgb"].to(dev).permute(0, 3, 1, 2).float() / 255  # [B, 3, H, W]
    B, S, _, H, W = src.shape
    w2c, K = _cameras_tensors(batch["src_c2w"].to(dev), batch["src_intr"].to(dev))
    if field.config.encoder == "teacher":  # the teacher's features of the sources are the encoder's maps
        maps = _teacher_maps(teacher, cache, data, batch, src.reshape(B * S, 3, H, W), "src_views")
        maps = maps.reshape(B, S, *maps.shape[1:])
    else:
        maps = field.encoder(src.reshape(B * S, 3, H, W))
        maps = maps.reshape(B, S, *maps.shape[1:])
    tgt_maps = _teacher_maps(teacher, cache, data, batch, tgt, "tgt_view")
    from featurefield.fields.general.model import Conditioning

    cond = Conditioning(maps, w2c, K, (H, W))
    mask = batch["tgt_mask"].to(dev)
    c2w_t, intr_t = batch["tgt_c2w"].to(dev), batch["tgt_intr"].to(dev)
    pix, uv, origins, dirs = sample_rays(mask, c2w_t, intr_t, cfg.rays, cfg.foreground, generator)
    gt_rgb = tgt.flatten(2).gather(2, pix[:, None].expand(B, 3, -1)).transpose(1, 2)  # [B, R, 3]
    gt_feat = feature_targets(tgt_maps, uv, (H, W))
    on = mask.reshape(B, -1).gather(1, pix).float()  # [B, R]
    amp = cfg.amp and dev.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = render_rays(field, cond, origins, dirs, stratified=True, generator=None)
    mse = F.mse_loss(out["rgb"], gt_rgb)
    denom = on.sum().clamp_min(1)
    l1 = ((out["feature"] - gt_feat).abs().mean(-1) * on).sum() / denom
    cos = (F.cosine_similarity(out["feature"], gt_feat, dim=-1) * on).sum() / denom
    alpha = F.mse_loss(out["alpha"], on)
    loss = mse + cfg.feature_weight * (l1 + cfg.cosine_weight * (1 - cos)) + cfg.alpha_weight * alpha
    psnr = -10 * torch.log10(mse.detach().clamp_min(1e-10))
    return {"loss": loss, "mse": mse.detach(), "psnr": psnr, "feature_l1": l1.detach(), "feature_cosine": cos.detach(),
            "alpha_mse": alpha.detach()}


def _collate(items: list[dict]) -> dict[str, Tensor]:
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def train_general(data: str | Path, output: str | Path, *, teacher="sam", config: GeneralConfig | None = None,
                  train: GeneralTrainConfig | None = None, resume: bool = False) -> dict:
    """Train a generalizable field on a generated category and write a run folder.

    Args:
        data: a folder written by :func:`~featurefield.data.category.generate_category`.
        output: the run folder. teacher: a registered teacher's name (``"sam"``) or a
            :class:`~featurefield.teachers.base.Teacher` object (tests use a small random one).
        config: the field's settings (``image_size`` and ``feature_dim`` are taken from the data and teacher).
        train: loop settings. resume: continue from ``output``'s checkpoint.
    Returns:
        A summary: steps done, whether it stopped early, the last logged losses, time.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    train = train or GeneralTrainConfig()
    dataset = CategoryData(data)
    output = Path(output)
    device = resolve_device(train.device)
    ckpt_path = output / CHECKPOINT
    console = Console(stderr=True)
    if resume and ckpt_path.is_file():
        run_cfg = json.loads((output / CONFIG).read_text())
        if run_cfg.get("field") != KIND:
            raise FeatureFieldError(f"{output}: holds a {run_cfg.get('field')!r} run, not a general one; choose another --output")
        ckpt = load_checkpoint(ckpt_path)
        config = GeneralConfig(**ckpt["field_config"])
    else:
        ckpt = None
        if (output / CONFIG).is_file() and not resume:
            raise FeatureFieldError(f"{output}: already holds a run; pass --resume to continue it or choose a new --output")
    teacher_obj = make_teacher(teacher, device) if isinstance(teacher, (str, dict)) else teacher.to(device)
    config = config or GeneralConfig()
    config = dataclasses.replace(config, image_size=(dataset.size, dataset.size), feature_dim=int(teacher_obj.dim),
                                 background=tuple(dataset.background))
    torch.manual_seed(train.seed)
    field = GeneralField(config, teacher_obj).to(device)
    opt = torch.optim.Adam(field.trainable_parameters(), lr=train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** min(1.0, s / max(1, train.steps)))
    start = 0
    generator = torch.Generator().manual_seed(train.seed)
    if ckpt is not None:
        field.load_state_dict(ckpt["field_state"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["rng"])
        start = int(ckpt["step"])
        console.print(f"resuming {output} from step {start}")
    else:
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output / CONFIG, {
            "field": KIND, "data": str(Path(data).resolve()), "category": dataset.category,
            "teacher": teacher_spec(teacher, teacher_obj), "field_config": config.to_dict(), "train": dataclasses.asdict(train)})
    elapsed_before = float(ckpt.get("elapsed", 0.0)) if ckpt else 0.0

    def save(step: int) -> None:
        state = field.state_dict()
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise FeatureFieldError(f"training diverged by step {step} ({bad[0]} is not finite); the last good checkpoint "
                                    f"is kept at {ckpt_path}; lower --lr and --resume")
        atomic_torch_save(ckpt_path, {"field_kind": KIND, "field_config": config.to_dict(), "field_state": state,
                                      "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                      "rng": generator.get_state(), "step": step,
                                      "elapsed": elapsed_before + time.perf_counter() - t0})

    stream = InstanceStream(data, "train", sources=train.sources, seed=train.seed, start=start * train.batch)
    loader = torch.utils.data.DataLoader(stream, batch_size=train.batch, num_workers=train.workers,
                                         collate_fn=_collate, persistent_workers=False,
                                         pin_memory=device.type == "cuda")
    cache = TeacherCache(teacher_obj, train.teacher_cache_gb, device) if train.teacher_cache_gb > 0 else None
    field.train()
    t0 = time.perf_counter()
    log_path = output / "metrics.jsonl"
    last: dict[str, float] = {}
    done = start
    stopped = None
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
    with StopRequest() as stop, Progress(*columns, console=console, disable=not train.progress) as bar:
        task = bar.add_task("train general", total=train.steps, completed=start, info="")
        batches = iter(loader)
        for step in range(start, train.steps):
            losses = step_losses(field, teacher_obj, next(batches), train, generator, cache, dataset)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            sched.step()
            done = step + 1
            log_now = done % train.log_every == 0 or done == train.steps or done == start + 1
            ckpt_now = done % train.checkpoint_every == 0 or done == train.steps
            if log_now or ckpt_now or device.type != "cuda":
                if not torch.isfinite(losses["loss"].detach()):
                    raise FeatureFieldError(f"training diverged at step {done} (loss {float(losses['loss'].detach())}); the last "
                                            f"good checkpoint is kept at {ckpt_path}; lower --lr and --resume")
            if log_now:
                last = {k: float(v.detach()) for k, v in losses.items()}
                rate = (done - start) / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, info=f"loss {last['loss']:.4f}  psnr {last['psnr']:.2f}  "
                                      f"cos {last['feature_cosine']:.3f}  {rate:.1f} it/s")
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": done, **last, "it_per_s": rate}) + "\n")
            past_deadline = train.deadline is not None and time.time() > train.deadline
            if ckpt_now or stop or past_deadline:
                save(done)
            bar.update(task, completed=done)
            if stop or past_deadline:
                stopped = stop.signal_name or "deadline"
                break
    if start >= train.steps:
        save(train.steps)
    summary = {"steps": train.steps, "done": done, "stopped": stopped, **last,
               "train_seconds": elapsed_before + time.perf_counter() - t0, "device": str(device)}
    if device.type == "cuda":
        summary["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if stopped is None:
        atomic_write_json(output / "metrics.json", summary)
    return summary
