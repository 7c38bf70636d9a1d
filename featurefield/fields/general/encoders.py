"""Image encoders of the generalizable field: each maps ``[B, 3, H, W]`` RGB in [0, 1] to a feature map
``[B, C, h, w]`` covering the whole image.

* :class:`ConvEncoder`: a small CNN trained with the field (from scratch), features at 1/2 resolution
  from three scales concatenated, as pixelNeRF concatenates ResNet stages.
* :class:`TeacherEncoder`: a frozen 2D teacher (e.g. SAM's TinyViT image encoder) used as the encoder;
  when the teacher is also the distillation target, its features of the source views are computed once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class ConvEncoder(nn.Module):
    """A from-scratch CNN: stages at 1/2, 1/4, 1/8 resolution, upsampled to 1/2 and fused by a 1x1 conv.

    Args:
        dim: output channels ``C``. width: channels of the first stage (doubled per stage).
    """

    trainable = True

    def __init__(self, dim: int = 128, width: int = 32) -> None:
        super().__init__()
        self.dim = dim
        self.stages = nn.ModuleList([_block(3, width, 2), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2)])
        self.fuse = nn.Conv2d(7 * width, dim, 1)

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> ``[B, C, H/2, W/2]``."""
        x = (images - 0.5) / 0.25
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        size = outs[0].shape[-2:]
        cat = torch.cat([outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]], 1)
        return self.fuse(cat)


class TeacherEncoder(nn.Module):
    """A frozen :class:`~featurefield.teachers.base.Teacher` used as the image encoder (no gradients).

    Args:
        teacher: the teacher; its ``extract`` output ``[B, D, h, w]`` covers the image.
    """

    trainable = False

    def __init__(self, teacher) -> None:
        super().__init__()
        # kept outside the module tree: its weights are frozen and live in the teacher's own files
        object.__setattr__(self, "teacher", teacher)
        self.dim = int(teacher.dim)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.teacher.extract(images).float()

    def to(self, *args, **kwargs):
        device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
        if device is not None:
            self.teacher.to(device)
        return super().to(*args, **kwargs)
