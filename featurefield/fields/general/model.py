"""The generalizable feature field (FeatureNeRF): images in, density, colour, features and descriptors out.

A point ``x`` (world = the object's canonical frame) is described by its positional encoding and by the
image features found where it projects into each source view (pixelNeRF's pixel-aligned features,
averaged over views, :mod:`.sampling`). A residual MLP trunk, conditioned on those features in its first
blocks, predicts density; a colour head (with the view direction) predicts RGB; a feature head predicts
the teacher's feature, distilled by volume rendering (FeatureNeRF). The trunk's activations after block
``descriptor_block`` are the point's *NeRF feature*, a 3D descriptor used for correspondence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from featurefield.cameras import Cameras
from featurefield.errors import FeatureFieldError
from featurefield.fields.general.encoders import ConvEncoder, TeacherEncoder
from featurefield.fields.general.sampling import bilinear_bags, map_table, pixel_aligned

ENCODERS = ("cnn", "teacher")


@dataclass
class GeneralConfig:
    """Settings of the generalizable field (recorded in the run; defaults are the GPU preset).

    Attributes:
        encoder: ``"teacher"`` (the distilled teacher's frozen image encoder, e.g. SAM's TinyViT) or
            ``"cnn"`` (a small CNN trained from scratch with the field).
        cnn_dim: output channels of the CNN encoder.
        width: MLP width. blocks: residual blocks; the first ``condition_blocks`` add the image features.
        descriptor_block: the block whose output is the NeRF feature (3D descriptor), 1-based.
        frequencies: positional-encoding octaves of positions; dir_frequencies: of view directions.
        samples: samples per ray (stratified while training, evenly spaced when rendering).
        bound: radius of the sphere around the origin that holds the object (rays are sampled inside it).
        image_size: the size ``(H, W)`` of the images it was trained on (inputs must match).
        feature_dim: the teacher's feature dimension ``D`` (set from the teacher when training starts).
        background: RGB the renders are composited on.
    """

    encoder: str = "teacher"
    cnn_dim: int = 128
    width: int = 256
    blocks: int = 5
    condition_blocks: int = 3
    descriptor_block: int = 3
    frequencies: int = 6
    dir_frequencies: int = 4
    samples: int = 64
    bound: float = 1.0
    image_size: tuple[int, int] = (128, 128)
    feature_dim: int = 256
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise FeatureFieldError(f"general field: unknown encoder {self.encoder!r}; expected one of {', '.join(ENCODERS)}")
        if not 1 <= self.descriptor_block <= self.blocks or not 0 <= self.condition_blocks <= self.blocks:
            raise FeatureFieldError("general field: descriptor_block and condition_blocks must lie within the blocks")
        self.image_size = tuple(int(s) for s in self.image_size)
        self.background = tuple(float(c) for c in self.background)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def positional_encoding(x: Tensor, octaves: int) -> Tensor:
    """``[..., 3]`` -> ``[..., 3 + 6 * octaves]``: ``x`` and ``sin, cos`` of ``2^k pi x``."""
    if octaves == 0:
        return x
    freqs = (2.0 ** torch.arange(octaves, device=x.device, dtype=x.dtype)) * math.pi
    xf = x[..., None, :] * freqs[:, None]  # [..., L, 3]
    return torch.cat([x, xf.sin().flatten(-2), xf.cos().flatten(-2)], -1)


@dataclass
class Conditioning:
    """Encoded source views: ``maps [B, S, C, h, w]``, ``w2c [B, S, 4, 4]``, ``K [B, S, 3, 3]``, image size."""

    maps: Tensor
    w2c: Tensor
    K: Tensor
    image_size: tuple[int, int]

    def __getitem__(self, b) -> Conditioning:
        sl = slice(b, b + 1) if isinstance(b, int) else b
        return Conditioning(self.maps[sl], self.w2c[sl], self.K[sl], self.image_size)


@dataclass
class FoldedConditioning:
    """Source views prepared once for fast rendering: the conditioning layers applied to the maps themselves.

    ``cond[k](z)`` is affine in ``z``, and ``z`` is a bilinear mix of map cells averaged over views, so
    sampling the maps *after* the layers gives the same terms without a per-point matrix product.

    Attributes:
        table: ``[B * S * h * w + 1, condition_blocks * width]`` the layers' weights times each map cell
            (channels last, the last row zeros; see :func:`~.sampling.map_table`). bias: ``[condition_blocks * width]``.
        w2c, K, image_size: as in :class:`Conditioning`; map_size: ``(h, w)``.
    """

    table: Tensor
    bias: Tensor
    w2c: Tensor
    K: Tensor
    image_size: tuple[int, int]
    map_size: tuple[int, int]


class _ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc0 = nn.Linear(width, width)
        self.fc1 = nn.Linear(width, width)
        nn.init.zeros_(self.fc1.weight)  # each block starts as the identity
        nn.init.zeros_(self.fc1.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc1(F.relu(self.fc0(F.relu(h)), inplace=True))  # the layer's fresh output may be overwritten


class GeneralField(nn.Module):
    """pixelNeRF-style conditional field with FeatureNeRF's feature branch (see module doc).

    Args:
        config: :class:`GeneralConfig`. teacher: the distillation teacher; used as the encoder when
            ``config.encoder == "teacher"`` (it may be ``None`` for a CNN encoder).
    """

    def __init__(self, config: GeneralConfig, teacher=None) -> None:
        super().__init__()
        self.config = config
        if config.encoder == "teacher":
            if teacher is None:
                raise FeatureFieldError("general field: encoder 'teacher' needs the teacher; pass it, or use encoder 'cnn'")
            self.encoder: nn.Module = TeacherEncoder(teacher)
        else:
            self.encoder = ConvEncoder(config.cnn_dim)
        c, w = self.encoder.dim, config.width
        pe = 3 + 6 * config.frequencies
        de = 3 + 6 * config.dir_frequencies
        self.inp = nn.Linear(pe, w)
        self.cond = nn.ModuleList([nn.Linear(c, w) for _ in range(config.condition_blocks)])
        self.trunk = nn.ModuleList([_ResBlock(w) for _ in range(config.blocks)])
        self.density = nn.Linear(w, 1)
        self.color = nn.Sequential(nn.Linear(w + de, w // 2), nn.ReLU(inplace=True), nn.Linear(w // 2, 3))
        self.feature = nn.Sequential(nn.Linear(w, w), nn.ReLU(inplace=True), nn.Linear(w, config.feature_dim))

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """Nothing beyond rendering: it is queried from images (:mod:`.queries`), not subset or exported."""
        return frozenset()

    @property
    def descriptor_dim(self) -> int:
        return self.config.width

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
        if device is not None and isinstance(self.encoder, TeacherEncoder):
            self.encoder.teacher.to(device)
        return out

    @property
    def device(self) -> torch.device:
        return self.inp.weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ conditioning
    def encode(self, images: Tensor, cameras: Cameras | list[Cameras], maps: Tensor | None = None) -> Conditioning:
        """Encode source views.

        Args:
            images: ``[B, S, 3, H, W]`` RGB in [0, 1] (or ``[S, 3, H, W]`` for one object).
            cameras: their cameras, one :class:`Cameras` of ``B * S`` views (object-major) or a list of ``B``.
            maps: precomputed encoder maps ``[B, S, C, h, w]`` (e.g. the teacher's, already extracted).
        """
        if images.dim() == 4:
            images = images[None]
        B, S, _, H, W = images.shape
        if (H, W) != tuple(self.config.image_size):
            raise FeatureFieldError(f"images are {W}x{H} but this field was trained on "
                                    f"{self.config.image_size[1]}x{self.config.image_size[0]}; resize them to that size")
        if isinstance(cameras, list):
            cams = [c.to(self.device) for c in cameras]
            w2c = torch.stack([c.w2c() for c in cams])
            K = torch.stack([c.K() for c in cams])
        else:
            cameras = cameras.to(self.device)
            w2c, K = cameras.w2c().reshape(B, S, 4, 4), cameras.K().reshape(B, S, 3, 3)
        if maps is None:
            maps = self.encoder(images.reshape(B * S, 3, H, W).to(self.device))
            maps = maps.reshape(B, S, *maps.shape[1:])
        return Conditioning(maps, w2c, K, (H, W))

    def fold(self, cond: Conditioning, dtype: torch.dtype | None = None) -> FoldedConditioning:
        """Fold the conditioning layers into ``cond``'s maps (once per encoded image; see :class:`FoldedConditioning`).

        Args:
            cond: encoded source views. dtype: of the table (e.g. ``torch.float16`` on a GPU; default the maps').
        """
        weight = torch.cat([layer.weight for layer in self.cond])  # [n * width, C]
        bias = torch.cat([layer.bias for layer in self.cond])
        table = map_table(cond.maps.to(weight.dtype)) @ weight.T
        dtype = dtype or cond.maps.dtype
        return FoldedConditioning(table.to(dtype), bias.to(dtype), cond.w2c, cond.K, cond.image_size,
                                  tuple(cond.maps.shape[-2:]))

    def folded_terms(self, points: Tensor, folded: FoldedConditioning, bias: bool = True) -> list[Tensor]:
        """The trunk's conditioning terms of ``points [B, P, 3]`` from a :class:`FoldedConditioning`:
        ``condition_blocks`` tensors ``[B, P, width]`` equal to ``cond[k](pixel_aligned(points))``
        (without the layers' biases if ``bias`` is false; then one tensor ``[B * P, condition_blocks * width]``)."""
        B, P, _ = points.shape
        if not self.cond:
            return []
        index, weight = bilinear_bags(points, folded.w2c, folded.K, folded.image_size, folded.map_size)
        terms = F.embedding_bag(index, folded.table, per_sample_weights=weight.to(folded.table.dtype), mode="sum")
        if not bias:
            return [terms]
        return list((terms + folded.bias).reshape(B, P, -1).split(self.config.width, -1))

    # ------------------------------------------------------------------ the field
    def forward(self, points: Tensor, dirs: Tensor, cond: Conditioning, need: tuple[str, ...] = ("rgb", "feature")) -> dict[str, Tensor]:
        """Query the field.

        Args:
            points: ``[B, P, 3]`` world points; dirs: ``[B, P, 3]`` unit view directions (for colour).
            cond: the source views. need: which of ``"rgb"``, ``"feature"``, ``"descriptor"`` to compute
                (density always).
        Returns:
            ``sigma [B, P]`` and, as asked, ``rgb [B, P, 3]``, ``feature [B, P, D]``, ``descriptor [B, P, width]``.
        """
        with record_function("general/pixel_aligned"):
            z = pixel_aligned(points, cond.maps, cond.w2c, cond.K, cond.image_size).to(points.dtype)  # [B, P, C]
            terms = [layer(z) for layer in self.cond]
        with record_function("general/trunk"):
            h, descriptor = self.run_trunk(points, terms, "descriptor" in need)
            out = {"sigma": self.sigma(h)}
        with record_function("general/heads"):
            if descriptor is not None:
                out["descriptor"] = descriptor
            if "rgb" in need:
                out["rgb"] = self.rgb(h, dirs)
            if "feature" in need:
                out["feature"] = self.feature(h)
        return out

    def run_trunk(self, points: Tensor, terms: list[Tensor], descriptor: bool = False) -> tuple[Tensor, Tensor | None]:
        """The residual trunk: ``points [..., 3]`` and the conditioning terms ``cond[k](z)`` (one ``[..., width]`` per
        conditioned block) -> ``h [..., width]`` and, if asked, the descriptor (the activations after
        ``descriptor_block``; else ``None``)."""
        cfg = self.config
        h = self.inp(positional_encoding(points / cfg.bound, cfg.frequencies))
        desc = None
        for k, block in enumerate(self.trunk):
            if k < len(terms):
                h = h + terms[k]
            h = block(h)
            if k + 1 == cfg.descriptor_block and descriptor:
                desc = h
        return h, desc

    def sigma(self, h: Tensor) -> Tensor:
        """Density ``[...]`` from trunk activations ``h [..., width]``."""
        return F.softplus(self.density(h).squeeze(-1) - 1.0)

    def rgb(self, h: Tensor, dirs: Tensor) -> Tensor:
        """Colour ``[..., 3]`` from ``h [..., width]`` and unit view directions ``[..., 3]``."""
        d = positional_encoding(dirs, self.config.dir_frequencies)
        return torch.sigmoid(self.color(torch.cat([h, d.to(h.dtype)], -1)))

    def feature_hidden(self, h: Tensor) -> Tensor:
        """The feature head's hidden layer ``[..., width]``; the head's output is :meth:`feature_decode` of it.

        The last layer is affine, so ``sum_i w_i feature(h_i) = feature_decode(sum_i w_i hidden_i, sum_i w_i)``:
        a renderer may composite the hidden layer and decode once per ray instead of once per sample.
        """
        return self.feature[1](self.feature[0](h))

    def feature_decode(self, hidden: Tensor, weight: Tensor) -> Tensor:
        """``[..., width]`` weighted sums of :meth:`feature_hidden` and their weights ``[...]`` -> features ``[..., D]``."""
        last = self.feature[2]
        return F.linear(hidden, last.weight) + weight[..., None].to(hidden.dtype) * last.bias.to(hidden.dtype)
