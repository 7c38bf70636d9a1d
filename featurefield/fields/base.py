"""The protocol every 3D backend implements, so the trainer, queries, eval and export work on all.

A field lives in the scene's canonical frame (see :class:`~featurefield.data.scene.Normalization`)
and is given canonical cameras. It is made by :meth:`FeatureField.create` for a scene; it renders colour,
depth, alpha and, per teacher, features; the trainer drives it through :meth:`FeatureField.sample_batch`,
:meth:`FeatureField.training_loss`, its optimizers and :meth:`FeatureField.after_step`. Beyond that, a field
says what else it can do through :meth:`FeatureField.capabilities` (``"subset"``: render a subset of its
primitives, for 3D cut-outs), and :meth:`FeatureField.export` writes it in the scene's world frame.

Backends are found by name through :mod:`featurefield.fields.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from featurefield.cameras import Cameras
from featurefield.data.view_source import ResidentViews, ViewSource
from featurefield.errors import FeatureFieldError


@dataclass
class TeacherTarget:
    """What a field needs to know about one teacher it distills.

    Attributes:
        name: teacher name (key in every per-teacher dict).
        dim: feature dimension ``D``.
        grid: ``(h, w)`` of the teacher's feature map for the training images.
        weight: loss weight.
    """

    name: str
    dim: int
    grid: tuple[int, int]
    weight: float = 1.0


@dataclass
class TrainData:
    """Everything a field samples training batches from.

    A field reads the views only through :attr:`views` (a :class:`~featurefield.data.view_source.ViewSource`):
    ``views.view(i)`` for one whole view, ``views.pool(step)`` for views to draw rays across. Built from
    tensors (``TrainData(cameras, images, alphas, features, background)``), the views are those tensors.

    Attributes:
        cameras: the ``N`` training cameras, canonical frame (on the training device).
        images: ``[N, H, W, 3]`` uint8 RGB (composited on ``background``), or ``None`` when ``views`` is given.
        alphas: ``[N, H, W]`` uint8 alpha or ``None``.
        features: per teacher, ``[N, D, h, w]`` fp16 teacher features.
        background: ``[3]`` float background colour, or ``None`` for opaque scenes.
        views: the views, wherever they live (default: resident, from ``images``, ``alphas``, ``features``).
    """

    cameras: Cameras
    images: Tensor | None = None
    alphas: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    background: Tensor | None = None
    views: ViewSource | None = None

    def __post_init__(self) -> None:
        if self.views is None:
            if self.images is None:
                raise ValueError("TrainData needs images or views")
            self.views = ResidentViews(self.images, self.alphas, self.features or {}, self.images.device)


@dataclass
class Render:
    """A rendered view. Shapes use the rendered camera's ``H x W``.

    Attributes:
        rgb: ``[H, W, 3]`` in [0, 1].
        depth: ``[H, W, 1]`` expected z-depth of the surface in canonical units, NORMALIZED by
            alpha: ``sum_i w_i z_i / alpha`` (0 where alpha < 1e-6), as gsplat's "ED" mode.
        alpha: ``[H, W, 1]`` accumulated opacity.
        embedding: ``[H, W, E]`` the rendered low-dimensional embedding (splat) or ``None``.
        features: per teacher ``[H, W, D]`` features rendered directly (nerf), else empty.
        projected: ``[H, W, K]`` when ``render(..., projection=...)`` asked for projected channels.
        extras: backend-specific outputs (e.g. ``"means2d"`` for densification, ``"normals"``).
    """

    rgb: Tensor
    depth: Tensor
    alpha: Tensor
    embedding: Tensor | None = None
    features: dict[str, Tensor] = field(default_factory=dict)
    projected: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class FeatureField(nn.Module, ABC):
    """A 3D field that renders colour, depth and teacher features from any camera.

    Attributes:
        kind: the backend's registry name (:mod:`featurefield.fields.registry`).
        config: the field's settings as created (its config dataclass, with anything that creating resolved,
            e.g. an automatic strategy); a run records them in its ``config.json``.
    """

    kind: ClassVar[str] = "field"
    config: Any

    # --------------------------------------------------------------- construction
    @classmethod
    @abstractmethod
    def create(cls, scene, targets: list[TeacherTarget], config=None, max_steps: int = 30_000,
               device: torch.device | str = "cpu") -> FeatureField:
        """A fresh field for ``scene`` (canonical frame) distilling ``targets``, on ``device``.

        Args:
            config: the backend's config dataclass (None: its defaults).
            max_steps: the run length its schedules are laid out for.
        """

    # --------------------------------------------------------------- capabilities
    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """What the field can do beyond the protocol: ``"subset"`` when :meth:`subset` works (a field made of
        primitives that render alone, e.g. Gaussians; not a NeRF's density)."""
        return frozenset()

    def subset(self, ids: Tensor, invert: bool = False) -> FeatureField:
        """A copy with only the primitives ``ids [K]`` int64 (``points_with_features``' ``"ids"``), or all but
        them (``invert``). Only where ``"subset" in capabilities()``."""
        raise FeatureFieldError(f"the {self.kind} field cannot render a subset of itself; extract the selection as "
                                "a point cloud instead")

    def export(self, normalization, folder: Path, *, name: str | None = None, teacher: str | None = None,
               max_points: int = 1_000_000, decoders: bool | str = True) -> list[Path]:
        """Write the field's 3D content into ``folder`` in the scene's world frame (``normalization``: the run's
        world -> canonical similarity); returns the files written.

        The default is a point cloud ``<name or "points">.ply`` of :meth:`points_with_features` with the
        features of ``teacher``; a backend with a format of its own (Gaussians: a 3DGS PLY) overrides it.
        ``decoders``: for a backend whose format keeps its decoders in a side file: True writes it beside the
        export, ``"shared"`` as the folder's one file that several parts of one field exported there read, False
        not at all (another part's export wrote the shared one).
        """
        from featurefield.export import write_point_cloud

        with torch.no_grad():
            pts = self.points_with_features(teacher, max_points=max_points)
        xyz = normalization.to_world(pts["xyz"].float())
        path = write_point_cloud(Path(folder) / f"{name or 'points'}.ply", xyz, pts.get("rgb"), pts.get("features"),
                                 {"opacity": pts["opacity"].float()} if "opacity" in pts else None)
        return [path]

    # --------------------------------------------------------------- rendering
    @abstractmethod
    def render(self, camera: Cameras, *, background: Tensor | None = None, features: bool = True,
               projection: tuple[str, Tensor, Tensor] | None = None, colour: bool = True) -> Render:
        """Render one camera (``len(camera) == 1``, canonical frame).

        Args:
            background: ``[3]`` colour behind the content (default: the field's training background).
            features: also render embeddings/features (off for colour-only evaluation).
            colour: render colour and depth too; ``False`` lets a backend that can skip them (the
                Gaussian field) render feature channels alone (``rgb``/``depth`` are then None).
            projection: ``(teacher, P [D, K], b [K])``: additionally return ``Render.projected``
                ``[H, W, K]`` = decoded features of ``teacher`` at each pixel ``@ P + b``. A field whose
                decoder is linear folds ``P`` into the embedding space and renders only ``K``
                channels (text queries, PCA pictures); others project rendered features.
        """

    @abstractmethod
    def decode(self, render: Render, teacher: str, grid: tuple[int, int] | None = None, *,
               as_teacher: bool = False, spill: bool = True) -> Tensor:
        """Teacher-space features of a render.

        Args:
            as_teacher: with ``grid`` the teacher's own grid: the field's prediction of what the teacher
                sees, read at the grid as the field was trained (:attr:`teacher_sampling`) and including
                any 2D model of the teacher (see :meth:`models_teacher_spill`); used where the field is
                compared with the teacher.
            spill: with ``as_teacher``, False leaves the 2D spill model out (the field's own features,
                read the teacher's way).
        Returns:
            ``[D, h, w]`` features for ``teacher`` resampled to ``grid`` (default: the render's
            ``H x W``), not normalized.
        """

    def models_teacher_spill(self, teacher: str) -> bool:
        """Whether ``decode(..., as_teacher=True)`` adds a learnt 2D spill model for ``teacher``."""
        return False

    #: how ``decode(..., as_teacher=True)`` reads a full-resolution render at the teacher's grid, matching
    #: how the field was trained: ``"area"`` (each cell the mean of its pixels) or ``"centre"`` (the
    #: render sampled at each cell's centre, for fields trained on the teacher grid's bilinear interpolant)
    teacher_sampling: str = "area"

    def linear_decoder(self, teacher: str) -> tuple[Tensor, Tensor] | None:
        """``(W [E, D], b [D])`` when decoding is per-pixel linear (features = emb @ W + b), else None."""
        return None

    @abstractmethod
    def points_with_features(self, teacher: str | None = None, max_points: int = 1_000_000) -> dict[str, Tensor]:
        """3D samples of the scene content, canonical frame, for 3D selection and export.

        Returns:
            ``{"xyz": [P, 3], "rgb": [P, 3], "opacity": [P], "features": [P, D] (when teacher given),
            "ids": [P] int64}``: for splats, one entry per Gaussian (``ids`` index Gaussians); for a
            NeRF, points sampled where density is high.
        """

    # --------------------------------------------------------------- training
    @abstractmethod
    def sample_batch(self, data: TrainData, step: int, generator: torch.Generator) -> Any:
        """Draw one training batch (a view for splats, a ray batch for NeRF)."""

    def sample_rank_batch(self, data: TrainData, step: int, generator: torch.Generator, rank: int, ranks: int) -> Any:
        """Rank ``rank``'s batch of a step that ``ranks`` processes train together (:mod:`featurefield.distributed`),
        ``generator`` being in the same state on every rank.

        The draws of all ranks are made in turn and the ``rank``-th kept, so the ranks get different batches
        (the Gaussian field: consecutive views of one shuffled order) and the generator ends in the same state
        everywhere. A field whose batches cost more to make than to draw overrides it to build only its own.
        """
        batch = None
        for r in range(ranks):
            drawn = self.sample_batch(data, step, generator)
            if r == rank:
                batch = drawn
        return batch

    def share_statistics(self, all_reduce) -> None:
        """Called before training on several ranks: ``all_reduce(tensor, op)`` sums (``op="sum"``) or maxes
        (``"max"``) a tensor over the ranks in place. A field that keeps statistics of its batches between steps
        (the Gaussian field's densification) gathers them through it, so that every rank decides alike."""

    @abstractmethod
    def training_loss(self, batch: Any, data: TrainData, step: int) -> dict[str, Tensor]:
        """Losses for a batch: ``"loss"`` (the total, to backprop) plus named parts and metrics
        (e.g. ``"rgb"``, ``"feature/sam"``, ``"psnr"``) as 0-d tensors."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers (the trainer steps and zeroes them, and checkpoints their state)."""

    def schedulers(self) -> dict[str, Any]:
        """Named LR schedulers stepped once per training step (checkpointed)."""
        return {}

    def after_step(self, step: int, batch: Any, losses: dict[str, Tensor]) -> None:
        """Called after backward, before optimizer steps (densification statistics live here)."""

    def after_optimizer_step(self, step: int) -> None:
        """Called after optimizer steps (densify/prune, proposal annealing...)."""

    def stats(self) -> dict[str, float]:
        """Numbers for the progress line (e.g. ``{"gaussians": 1.2e5}``)."""
        return {}

    # --------------------------------------------------------------- persistence
    @abstractmethod
    def config_dict(self) -> dict:
        """JSON-able constructor arguments; ``FIELD.from_checkpoint`` rebuilds from it + state."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict, state: dict[str, Tensor]) -> FeatureField:
        """Rebuild a field from :meth:`config_dict` and ``state_dict()`` (sizes may have changed)."""
