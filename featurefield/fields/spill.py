"""A learnt model of how a 2D teacher's features spill past object outlines, on the teacher's grid.

A ViT teacher's feature at a background cell next to an object carries some of the object (patch
embeddings, attention, the neck's convolutions). A 3D field that can only put features where there is
geometry reproduces that spill by growing faint "halo" Gaussians around objects (the Gaussian field),
which also show up, wrongly coloured, in views the training set did not constrain, or cannot reproduce
it at all (a radiance field's features are carried by its density). :class:`FeatureSpill` explains the
spill in 2D instead: a small non-negative blur (weights summing to one, learnt per teacher) applied at
the teacher's grid, where the field is compared with the teacher — to the Gaussian field's embedding
map, to the NeRF field's decoded features (trained on patches of rays one cell apart). Full-resolution
reads of the field (queries, renders) do not use it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FeatureSpill(nn.Module):
    """A ``size x size`` blur (softmax weights, shared by all channels), initialised close to identity.

    Args:
        size: odd kernel size in teacher-grid cells (3: one cell each way).
        centre_weight: the centre's weight at initialisation.
    """

    def __init__(self, size: int = 3, centre_weight: float = 0.98) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"the spill kernel size must be odd and positive, got {size}")
        self.size = size
        logits = torch.zeros(size * size)
        if size > 1:
            logits[size * size // 2] = math.log(centre_weight * (size * size - 1) / (1 - centre_weight))
        self.logits = nn.Parameter(logits)

    def kernel(self) -> Tensor:
        """``[size, size]`` non-negative weights summing to one."""
        return torch.softmax(self.logits, 0).reshape(self.size, self.size)

    def forward(self, x: Tensor) -> Tensor:
        """Blur a channels-last map ``[h, w, C]`` (edges replicated); returns ``[h, w, C]``."""
        if self.size == 1:
            return x
        h, w, c = x.shape
        r = self.size // 2
        img = F.pad(x.permute(2, 0, 1)[None], (r, r, r, r), mode="replicate")  # [1, C, h + 2r, w + 2r]
        weight = self.kernel().to(x.dtype)[None, None].expand(c, 1, self.size, self.size)
        return F.conv2d(img, weight, groups=c)[0].permute(1, 2, 0)
