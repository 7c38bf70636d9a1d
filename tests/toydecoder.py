"""A stand-in for a teacher's prompt decoder whose masks are regions of the features."""

from __future__ import annotations

import torch.nn.functional as F


class RegionDecoder:
    """A stand-in for SamPromptDecoder: channel 0 of the features holds a region id; a point prompt
    returns its region (upsampled to the image), a box prompt the majority region inside the box."""

    def __init__(self, levels: float = 1.0, stretch: bool = False):
        self.calls = []
        self.levels = levels  # channel 0 times this, rounded, is the region id
        self.stretch = stretch  # channel 0 first stretched to [0, 1] over the picture (a barely trained field's)

    def predict(self, embedding, image_size, points=None, labels=None, box=None):
        self.calls.append((embedding.shape, tuple(image_size), points, box))
        x = embedding[None, :1].float()
        if self.stretch:
            x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
        ids = F.interpolate(x * self.levels, size=tuple(image_size), mode="nearest")[0, 0].round()
        if points is not None:
            x, y = points[0].tolist()
            target = ids[int(y), int(x)]
        else:
            x0, y0, x1, y1 = [int(v) for v in box.tolist()]
            target = ids[y0:y1, x0:x1].flatten().mode().values
        return ids == target, 0.9
