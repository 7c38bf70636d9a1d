"""Cheap deterministic teachers for the tests, registered as ``toycolour`` and ``toytext`` on import."""

from __future__ import annotations

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
