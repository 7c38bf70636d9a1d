"""Cheap deterministic teachers for the tests, registered as ``toycolour``, ``toytext`` and ``toyprompt`` on import."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from featurefield.teachers.base import Teacher, register_teacher


class ColourTeacher(Teacher):
    """A cheap deterministic teacher: 4x4-pooled colour lifted to 8-D, with a toy text encoder."""

    dim = 8

    def __init__(self, name: str, text: bool):
        self.name, self.has_text = name, text
        g = torch.Generator().manual_seed(3)
        self.lift = torch.randn(3, 8, generator=g)

    def feature_grid(self, height, width):
        return height // 4, width // 4

    def extract(self, images):
        x = F.avg_pool2d(images.float(), 4) * 2 - 1
        return torch.tanh(torch.einsum("nchw,cd->ndhw", x, self.lift.to(x.device)))

    def encode_text(self, texts):
        if not self.has_text:
            return super().encode_text(texts)
        colours = {"red thing": [1.0, -1, -1], "white": [1.0, 1, 1]}
        rgb = torch.tensor([colours.get(t, [0.0, 0.0, 0.0]) for t in texts])
        emb = torch.tanh(rgb @ self.lift)
        emb[torch.tensor([t not in colours for t in texts])] = torch.randn(8, generator=torch.Generator().manual_seed(5))
        return F.normalize(emb, dim=-1)

    def settings(self):
        return {"name": self.name, "dim": 8, "version": 1}


register_teacher("toycolour")(lambda **o: ColourTeacher("toycolour", False))
register_teacher("toytext")(lambda **o: ColourTeacher("toytext", True))


class PromptTeacher(ColourTeacher):
    """``toyprompt``: a toy teacher whose weights are files on disk (``toyprompt.bin``, and ``toyprompt_decoder.bin``
    for its prompt decoder, a :class:`~tests.toydecoder.RegionDecoder`: 4 levels of its features' first channel),
    found as the ``sam`` teacher's are (``weights=``, ``$FEATUREFIELD_WEIGHTS``, the user cache). ``made`` counts
    the teachers built, ``decoders`` the prompt decoders."""

    has_prompts = True
    weights_folder = True
    made = 0
    decoders = 0

    def __init__(self, weights=None):
        from featurefield.teachers.weights import find_weight_file

        super().__init__("toyprompt", False)
        self.weights = weights
        self.weights_path = find_weight_file("toyprompt", "toyprompt.bin", weights)
        type(self).made += 1

    @property
    def weights_location(self):
        return (Path(self.weights).expanduser() if self.weights is not None else self.weights_path.parent).resolve()

    def prompt_decoder(self, device=None):
        from featurefield.teachers.weights import find_weight_file
        from tests.toydecoder import RegionDecoder

        find_weight_file("toyprompt", "toyprompt_decoder.bin", self.weights_location)
        type(self).decoders += 1
        return RegionDecoder(levels=3.0, stretch=True)

    def settings(self):
        return {"name": self.name, "dim": 8, "version": 1}


def write_toyprompt_weights(folder: Path) -> Path:
    """The weights files of ``toyprompt`` in ``folder`` (made); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("toyprompt.bin", "toyprompt_decoder.bin"):
        (folder / name).write_bytes(b"toy")
    return folder


register_teacher("toyprompt")(PromptTeacher)
