"""Any output of a run for a camera: colour, depth, opacity, feature PCA, text relevancy, SAM prompts, cut-outs."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.run import Run
from featurefield.viewer.viser_cameras import sized

#: outputs every run has; teacher outputs are "features: NAME", "text: NAME" and "prompt: NAME"
BASE_OUTPUTS = ("colour", "depth", "opacity")


def relevancy_overlay(rgb, relevancy) -> np.ndarray:
    """The colour ``[H, W, 3]`` with LERF relevancy ``[H, W]`` drawn over it: untouched at 0.5 and below
    (no better than the negatives), the heatmap's colour for 0.5..1 blended in as the relevancy rises,
    opaque at 1. ``[H, W, 3]`` uint8."""
    from featurefield import viz

    relevancy = torch.as_tensor(relevancy).float().cpu()
    weight = ((relevancy - 0.5) * 2).clamp(0, 1)[..., None].numpy()
    heat = viz.heatmap(relevancy, 0.5, 1.0).astype(np.float32)
    return (viz.to_uint8(rgb)[..., :3] * (1 - weight) + heat * weight).round().astype(np.uint8)


@dataclass
class CutOut:
    """A 3D selection made in the viewer: the field's points it indexes, which are kept, and the PLY written.

    Attributes:
        points: :meth:`FeatureField.points_with_features` output (canonical frame).
        keep: ``[M]`` bool over those points.
        files: the PLYs written (world frame): the point cloud, then for a Gaussian run the 3DGS PLY of
            the selected Gaussians and its decoders (:func:`~featurefield.query.selection.export_cutout`).
    """

    points: dict
    keep: torch.Tensor
    files: list[Path]

    @property
    def path(self) -> Path:
        """The point-cloud PLY (a Gaussian run also gets ``<stem>_gaussians.ply``, in :attr:`files`)."""
        return self.files[0]

    @property
    def xyz(self) -> torch.Tensor:
        """``[K, 3]`` canonical positions of the kept points."""
        return self.points["xyz"][self.keep.to(self.points["xyz"].device)].float().cpu()


def _encodes_text(run: Run, teacher: str) -> bool:
    """Whether a run's teacher encodes text, without loading its model where its factory says (the viewer
    must not load SAM's image encoder to show colour)."""
    from featurefield.teachers.base import teacher_has_text

    known = teacher_has_text(teacher)
    return run.teacher(teacher).has_text if known is None else known


class ViewRenderer:
    """Renders one output of a run for a camera; thread-safe (renders take turns)."""

    def __init__(self, run: Run, decoder=None, prompt_teacher: str | None = None) -> None:
        """``decoder``: the prompt decoder (default: the prompt teacher's, loaded when first needed);
        ``prompt_teacher``: the teacher whose features it reads (default: the run's first with a prompt decoder)."""
        self.run = run
        self.text_teachers = [t for t in run.teacher_names if _encodes_text(run, t)]
        prompting = run.prompt_teachers
        if prompt_teacher is None:
            self.prompt_teacher = prompting[0] if prompting else None
        else:
            self.prompt_teacher = prompt_teacher if prompt_teacher in run.teacher_names else None
        self._decoder = decoder
        self._decoder_lock = threading.Lock()
        self._bases: dict = {}
        self._lock = threading.Lock()

    @property
    def outputs(self) -> list[str]:
        """What can be shown: :data:`BASE_OUTPUTS`, each teacher's PCA, each text teacher's query, SAM prompts."""
        return [*BASE_OUTPUTS, *(f"features: {t}" for t in self.run.teacher_names),
                *(f"text: {t}" for t in self.text_teachers),
                *([f"prompt: {self.prompt_teacher}"] if self.prompt_teacher else [])]

    def preload(self) -> None:
        """Load the prompt decoder now, in a thread of its own (the viewer calls it when a prompt output is
        chosen, so the first click waits less); a failure (e.g. missing weights) is left for the click to say."""
        if self.prompt_teacher is None or self._decoder is not None:
            return

        def load() -> None:
            try:
                self.decoder()
            except FeatureFieldError:
                pass

        threading.Thread(target=load, name="featurefield-view-sam-decoder", daemon=True).start()

    def decoder(self):
        with self._decoder_lock:
            return self._load_decoder()

    def _load_decoder(self):
        if self._decoder is None:
            self._decoder = self.run.prompt_decoder("SAM prompts need", teacher=self.prompt_teacher)
        return self._decoder

    @torch.no_grad()
    def render(self, camera: Cameras, output: str = "colour", text: str = "",
               prompt: torch.Tensor | None = None, field=None) -> tuple[np.ndarray, np.ndarray]:
        """``(picture [H, W, 3] uint8, depth [H, W] float32)`` of ``output`` at ``camera`` (canonical frame).

        ``text`` is the phrase of a ``"text: NAME"`` output; ``prompt`` ``[P, 3]`` the 3D points (canonical)
        of a ``"prompt: NAME"`` output, of which those the camera sees prompt SAM. Without them, those
        outputs show the colour. ``field``: render this instead of the run's field (a cut-out of it,
        :meth:`subset`). The depth (canonical units, 0 where nothing was rendered) lets viser draw its
        frustums behind the rendered surface.
        """
        from featurefield import viz
        from featurefield.render import pca_basis, pca_render

        if output not in self.outputs:
            raise FeatureFieldError(f"unknown output {output!r}; this run has: {', '.join(self.outputs)}")
        camera = camera.to(self.run.device)
        what, _, teacher = output.partition(": ")
        field = field or self.run.field
        with self._lock:
            if what == "features":
                if teacher not in self._bases:
                    self._bases[teacher] = pca_basis(self.run, teacher)
                picture, r = pca_render(self.run, camera, teacher, self._bases[teacher], field=field)
            elif what == "prompt" and prompt is not None and len(prompt):
                picture, r = self._prompted(camera, teacher, prompt, field)
            elif what == "text" and text.strip():
                from featurefield.query.text import relevancy_map

                q = relevancy_map(field, camera, self.run.teacher(teacher), [text.strip()], background=self.run.background)
                r = q.render
                picture = relevancy_overlay(r.rgb, q.relevancy[0])
            else:
                r = field.render(camera, background=self.run.background, features=False)
                if what == "depth":
                    picture = viz.depth_image(r.depth[..., 0], r.alpha[..., 0])
                elif what == "opacity":
                    picture = viz.to_uint8(r.alpha[..., 0])
                else:
                    picture = viz.to_uint8(r.rgb)
        from featurefield.query.selection import surface_depth

        depth = surface_depth(r)  # where the render is opaque enough to click on (the 3D queries' rule)
        depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))
        return np.ascontiguousarray(picture[..., :3]), depth.float().cpu().numpy()

    def _prompted(self, camera: Cameras, teacher: str, prompt: torch.Tensor, field=None):
        """The colour with SAM's mask for the prompt points this camera sees (unoccluded), and the render."""
        from featurefield import viz

        mask, r = self._prompt_mask(camera, teacher, prompt, field)
        picture = viz.to_uint8(r.rgb)
        return (picture if mask is None else viz.overlay_mask(picture, mask.cpu())), r

    def _prompt_mask(self, camera: Cameras, teacher: str, prompt: torch.Tensor, field=None):
        """``(mask [H, W] bool or None where the camera sees none of the points, render)``."""
        from featurefield.query.prompts import prompt_mask, render_sam_features
        from featurefield.query.selection import surface_depth, visibility

        feats, r = render_sam_features(field or self.run.field, camera, teacher, self.run.background)
        uv, seen = visibility(prompt.to(camera.device), camera, surface_depth(r))
        if not seen.any():
            return None, r
        H, W = int(camera.height[0]), int(camera.width[0])
        return prompt_mask(self.decoder(), feats, (H, W), points=uv[seen].cpu())[0], r

    @torch.no_grad()
    def extract(self, camera: Cameras, prompt: torch.Tensor, path: Path, views: int = 6) -> CutOut | None:
        """Cut out in 3D what SAM selects for ``prompt`` at ``camera``, written to ``path`` as a PLY in the
        scene's world frame; None when nothing is.

        SAM is prompted with the same 3D point at up to ``views`` training views that see it from around
        it (:func:`~featurefield.query.selection.spread_views`), and the masks are lifted together
        (:func:`~featurefield.query.selection.lift_masks`): from ``camera`` alone, the object's back and
        inside are hidden and would stay in the scene when the cut-out is deleted."""
        from featurefield.query.selection import export_cutout, lift_masks, spread_views

        if self.prompt_teacher is None:
            raise FeatureFieldError(f"{self.run.path}: SAM prompts need a run trained with the sam teacher")
        camera = camera.to(self.run.device)
        with self._lock:
            mask, _ = self._prompt_mask(camera, self.prompt_teacher, prompt)
            if mask is None or not mask.any():
                return None
            cams, masks = [camera], [mask.to(self.run.device)]
            if views > 0:
                train = self.run.cameras("train").to(self.run.device)
                side = max(int(camera.width[0]), int(camera.height[0]))
                for i in spread_views(train, prompt[0], views, start=camera.centers[0]):
                    other = sized(train[[i]], min(side, max(int(train.width[i]), int(train.height[i]))))
                    other_mask, _ = self._prompt_mask(other, self.prompt_teacher, prompt)
                    if other_mask is not None:  # None: the point is hidden there
                        cams.append(other)
                        masks.append(other_mask.to(self.run.device))
            selection, points = lift_masks(self.run.field, cams, masks)
        if not selection.keep.any():
            return None
        return CutOut(points, selection.keep, export_cutout(self.run.field, path, points, selection.keep,
                                                           self.run.normalization))

    @torch.no_grad()
    def extract_text(self, teacher: str, phrase: str, path: Path, threshold: float = 0.5) -> CutOut | None:
        """Cut out in 3D what matches ``phrase``: the field's points whose LERF relevancy exceeds ``threshold``
        (``featurefield query --text --extract``), written to ``path`` with their relevancy. As :meth:`extract`."""
        from featurefield.query.selection import export_cutout
        from featurefield.query.text import point_relevancy

        if teacher not in self.text_teachers:
            raise FeatureFieldError(f"{self.run.path}: teacher {teacher!r} has no text encoder")
        with self._lock:
            q = point_relevancy(self.run.field, self.run.teacher(teacher), [phrase])
        keep = q.select(threshold)
        if not keep.any():
            return None
        return CutOut(q.points, keep, export_cutout(self.run.field, path, q.points, keep, self.run.normalization,
                                                    extra={"relevancy": q.relevancy[0]}))

    def can_show_alone(self) -> bool:
        """Whether the field can render a cut-out alone or without it (Gaussians can; a NeRF's point samples cannot)."""
        return "subset" in self.run.field.capabilities()

    def subset(self, cut: CutOut, without: bool = False):
        """The run's field with only the cut-out's primitives (``without=True``: all but them)."""
        from featurefield.query.selection import subset_field

        with self._lock:
            return subset_field(self.run.field, cut.points, cut.keep, invert=without)
