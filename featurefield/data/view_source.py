"""Where the training views live while a field trains: on the device, in host memory, or streamed from disk.

A field reads its training views only through a :class:`ViewSource`:

- ``view(i)``: one view's image, alpha and teacher features on the training device (the Gaussian field draws
  a whole view per step), with ``prefetch(ids)`` a hint of the views the next steps ask for;
- ``pool(step)``: the views a step draws rays across (the NeRF draws rays from many views per step).

:class:`ResidentViews` holds every view, on the device or in host memory: the fastest, for scenes that fit.
:class:`StreamedViews` holds none: it reads the views asked for from the image cache
(:mod:`featurefield.data.image_cache`) and the feature cache (:class:`~featurefield.teachers.store.FeatureStore`)
with positioned reads, never a memory map, and keeps at most ``prefetch`` views read ahead by a background
thread into pinned memory, so the copy to the GPU overlaps the step. Host and GPU memory then do not grow
with the number of views, nor does the cost of a step.

Streamed, the ray pool is a ring of ``pool_views`` views on the device; every ``pool_every`` steps the
oldest is replaced by the next view of a seeded order (a fresh permutation of all views per pass), read
ahead in the background. The pool is a function of the step alone, so a resumed run draws the same rays.
The trade-off, as nerfstudio's ``num_images_to_sample_from`` / ``num_times_to_repeat_images``: a step's rays
come from ``pool_views`` views instead of all of them, so nearby steps see correlated batches, and every view
comes round once per ``N * pool_every`` steps (4,000 steps for 1,000 views by default) for
``pool_views * pool_every`` steps. Drawing each ray from any of the N views instead would read a few pixels and
four feature cells per ray scattered over the caches on disk: thousands of small random reads per step, whose
cost grows with the files. With ``pool_views >= N`` the pool is every view in order, as resident.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from featurefield.errors import FeatureFieldError

RESIDENCIES = ("auto", "device", "host", "stream")
#: ``auto`` keeps the views on the GPU when they take at most this share of its free memory...
DEVICE_SHARE = 0.25
#: ... else in host memory when they take at most this share of the available host memory, else streams them
HOST_SHARE = 0.25
#: streamed, the most a field may spend on tables over every view (a NeRF's undistorted pixel directions)
STREAMED_LOOKUP_BYTES = 1 << 30


@dataclass
class DataConfig:
    """Where the training views live while a field trains (``--data.*``).

    Attributes:
        residency: auto: on the device when the training views' pixels and teacher features take at most a
            quarter of its free memory, else in host memory when they take at most a quarter of the available
            host memory, else streamed from the caches on disk; device, host or stream to force one. Streaming
            keeps host and GPU memory independent of the number of views.
        prefetch: streamed, the views read ahead in the background (host memory holds at most this many and
            the one in use).
        pool_views: streamed, a field that draws rays across views (nerf) draws a step's rays from this many
            views held on the device.
        pool_every: streamed, one view of that pool is replaced by the next every this many steps.
    """

    residency: Literal["auto", "device", "host", "stream"] = "auto"
    prefetch: int = 4
    pool_views: int = 64
    pool_every: int = 4

    def __post_init__(self) -> None:
        if self.residency not in RESIDENCIES:
            raise FeatureFieldError(f"--data.residency must be one of {', '.join(RESIDENCIES)}, got {self.residency!r}")
        for name in ("prefetch", "pool_views", "pool_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FeatureFieldError(f"--data.{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")


@dataclass
class TrainView:
    """One training view on the training device.

    Attributes:
        image: ``[H, W, 3]`` uint8 RGB (composited on the background).
        alpha: ``[H, W]`` uint8 alpha, or ``None`` for opaque scenes.
        features: per teacher, ``[D, h, w]`` fp16 teacher features.
    """

    image: Tensor
    alpha: Tensor | None
    features: dict[str, Tensor]


@dataclass
class ViewPool:
    """The views a step draws rays across, as slots ``P``.

    Attributes:
        ids: ``[P]`` int64 training-view index of each slot, on the training device.
        images: ``[P, H, W, 3]`` uint8 (on the device, or in host memory when the views live there).
        alphas: ``[P, H, W]`` uint8 or ``None``.
        features: per teacher, ``[P, h, w, D]`` fp16, channels last (a ray reads one contiguous vector).
    """

    ids: Tensor
    images: Tensor
    alphas: Tensor | None
    features: dict[str, Tensor]


class ViewSource:
    """The training views of a scene, as fields read them (see the module doc).

    Attributes:
        count, height, width: ``N`` views of ``H x W`` pixels.
        has_alpha: the views carry alpha.
        lookahead: how many upcoming views :meth:`prefetch` uses (0: it is a no-op).
        residency: ``"device"``, ``"host"`` or ``"stream"``.
        lookup_bytes: the most bytes a field may spend on a table over every view (e.g. per-pixel ray
            directions), ``None``: the field's own default; streamed sources bound it, so memory does not grow
            with the number of views past it.
    """

    count: int
    height: int
    width: int
    has_alpha: bool
    lookahead: int = 0
    residency: str
    lookup_bytes: int | None = None

    def __len__(self) -> int:
        return self.count

    def view(self, i: int) -> TrainView:
        """Training view ``i`` on the training device."""
        raise NotImplementedError

    def prefetch(self, ids: list[int]) -> None:
        """Hint: the next requests are for ``ids``, in this order, the first of them possibly this step's (the
        first :attr:`lookahead` are read ahead; one read ahead no longer hinted is dropped)."""

    def pool(self, step: int) -> ViewPool:
        """The views step ``step`` draws rays across."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work (idempotent)."""


class ResidentViews(ViewSource):
    """Every training view held whole: on the training device, or in host memory (``host``) and copied per step.

    Args:
        images: ``[N, H, W, 3]`` uint8; alphas: ``[N, H, W]`` uint8 or None.
        features: per teacher ``[N, D, h, w]`` fp16 (may be memory-mapped from the cache).
        device: the training device.
    """

    def __init__(self, images: Tensor, alphas: Tensor | None, features: dict[str, Tensor], device: torch.device | str,
                 residency: str = "device") -> None:
        self.images, self.alphas = images, alphas
        self.device = torch.device(device)
        self.count, self.height, self.width = (int(n) for n in images.shape[:3])
        self.has_alpha = alphas is not None
        self.residency = residency
        self._features = dict(features)  # channels first, until pool() converts them
        self._pool: ViewPool | None = None

    def view(self, i: int) -> TrainView:
        dev = self.device
        if self._pool is None:
            feats = {name: f[i] for name, f in self._features.items()}
        else:  # converted to channels last for the pool: the same values, viewed back
            feats = {name: f[i].permute(2, 0, 1) for name, f in self._pool.features.items()}
        return TrainView(self.images[i].to(dev, non_blocking=True),
                         None if self.alphas is None else self.alphas[i].to(dev, non_blocking=True),
                         {name: f.to(dev, non_blocking=True) for name, f in feats.items()})

    def pool(self, step: int) -> ViewPool:
        if self._pool is None:
            maps = {name: f.permute(0, 2, 3, 1).to(torch.float16).contiguous() for name, f in self._features.items()}
            ids = torch.arange(self.count, device=self.device)
            self._pool = ViewPool(ids, self.images, self.alphas, maps)
            self._features = {}  # one copy, channels last, from now on
        return self._pool


class StreamedViews(ViewSource):
    """Training views read from the caches on disk when asked for, a few ahead (see the module doc).

    Args:
        images: rows ``[H, W, C]`` uint8 of the image cache (C = 4: alpha last), one per training view.
        features: per teacher, rows ``[D, h, w]`` fp16 of the feature cache, in the same order.
        device: the training device.
        config: ``prefetch``, ``pool_views``, ``pool_every``.
        seed: seeds the pool's order of views.

    Attributes:
        max_held: the most views this source held at once outside the field's hands (read ahead, in flight, or
            being handed over): at most ``prefetch + 1``, whatever the number of views.
    """

    residency = "stream"
    lookup_bytes = STREAMED_LOOKUP_BYTES

    def __init__(self, images, features: dict, device: torch.device | str, config: DataConfig, seed: int = 0) -> None:
        self._images, self._features = images, dict(features)
        self.device = torch.device(device)
        self.count = len(images)
        self.height, self.width, channels = (int(n) for n in images.row_shape)
        self.has_alpha = channels == 4
        self.config = config
        self.lookahead = config.prefetch
        self.seed = int(seed)
        self.max_held = 0
        self._pin = self.device.type == "cuda"
        self._pending: OrderedDict[int, Future] = OrderedDict()
        self._draining: list[Future] = []  # read-aheads no longer wanted that were already running
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="featurefield-views")
        self._perms: dict[int, Tensor] = {}
        self._ring: ViewPool | None = None
        self._base: int | None = None

    # ------------------------------------------------------------------ reading
    def _read(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        """View ``i`` in host memory (pinned for a CUDA device): ``[H, W, C]`` uint8 and ``[D, h, w]`` fp16 rows."""
        row = torch.empty(self._images.row_shape, dtype=torch.uint8, pin_memory=self._pin)
        self._images.read(i, row.numpy())
        feats = {}
        for name, rows in self._features.items():
            feats[name] = torch.empty(rows.row_shape, dtype=torch.float16, pin_memory=self._pin)
            rows.read(i, feats[name].numpy())
        return row, feats

    def _held(self) -> int:
        self._draining = [f for f in self._draining if not f.done()]
        return len(self._pending) + len(self._draining)

    def _take(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        """View ``i`` in host memory: read ahead already, or read now."""
        fut = self._pending.pop(int(i), None)
        self.max_held = max(self.max_held, self._held() + 1)
        return fut.result() if fut is not None else self._read(int(i))

    def prefetch(self, ids: list[int]) -> None:
        want = [int(i) for i in list(ids)[: self.lookahead]]
        for stale in [k for k in self._pending if k not in want]:
            fut = self._pending.pop(stale)
            if not fut.cancel():
                self._draining.append(fut)
        for i in want:
            if i not in self._pending and self._held() < self.lookahead:
                self._pending[i] = self._executor.submit(self._read, i)
        self.max_held = max(self.max_held, self._held())

    # ------------------------------------------------------------------ whole views
    def view(self, i: int) -> TrainView:
        row, feats = self._take(i)
        dev = self.device
        row = row.to(dev, non_blocking=True)
        return TrainView(row[..., :3], row[..., 3] if self.has_alpha else None,
                         {name: f.to(dev, non_blocking=True) for name, f in feats.items()})

    # ------------------------------------------------------------------ the ray pool
    def _order(self, q: int) -> int:
        """The view at position ``q`` of the pool's order: pass ``q // N`` is a seeded permutation of all views."""
        n = self.count
        if self._pool_size() == n:
            return q % n
        epoch = q // n
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(n, generator=gen)
        return int(self._perms[epoch][q % n])

    def _pool_size(self) -> int:
        return min(self.config.pool_views, self.count)

    def _put(self, slot: int, i: int) -> None:
        row, feats = self._take(i)
        dev, ring = self.device, self._ring
        row = row.to(dev, non_blocking=True)
        ring.images[slot] = row[..., :3]
        if ring.alphas is not None:
            ring.alphas[slot] = row[..., 3]
        for name, f in feats.items():
            ring.features[name][slot] = f.to(dev, non_blocking=True).permute(1, 2, 0)
        ring.ids[slot] = i

    def pool(self, step: int) -> ViewPool:
        size = self._pool_size()
        if self._ring is None:
            dev, (H, W) = self.device, (self.height, self.width)
            feats = {name: torch.empty((size, *rows.row_shape[1:], rows.row_shape[0]), dtype=torch.float16, device=dev)
                     for name, rows in self._features.items()}
            self._ring = ViewPool(torch.zeros(size, dtype=torch.int64, device=dev),
                                  torch.empty((size, H, W, 3), dtype=torch.uint8, device=dev),
                                  torch.empty((size, H, W), dtype=torch.uint8, device=dev) if self.has_alpha else None,
                                  feats)
        base = 0 if size == self.count else step // self.config.pool_every
        if self._base is None or not self._base <= base < self._base + size:  # first use (or a jump): fill it
            for q in range(base, base + size):
                self.prefetch([self._order(p) for p in range(q, q + self.lookahead)])  # this one and the next
                self._put(q % size, self._order(q))
        else:  # slide: the views of positions base .. base + size - 1 are held, in slot position % size
            for q in range(self._base + size, base + size):
                self._put(q % size, self._order(q))
        self._base = base
        if size < self.count:
            self.prefetch([self._order(q) for q in range(base + size, base + size + self.lookahead)])
        return self._ring

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pending.clear()


def view_bytes(count: int, height: int, width: int, alpha: bool, grids: list[tuple[int, int, int]]) -> int:
    """Bytes of ``count`` training views held whole: uint8 pixels (and alpha) and fp16 features ``(D, h, w)``."""
    per_view = height * width * (4 if alpha else 3) + sum(2 * d * h * w for d, h, w in grids)
    return count * per_view


def available_host_memory() -> int:
    """Bytes of host memory available to a new allocation (``MemAvailable``; else all physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def choose_residency(config: DataConfig, nbytes: int, device: torch.device) -> str:
    """``"device"``, ``"host"`` or ``"stream"`` for training views of ``nbytes`` (:func:`view_bytes`) on ``device``."""
    if config.residency != "auto":
        return config.residency
    host = available_host_memory()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= DEVICE_SHARE * free:
            return "device"
    elif nbytes <= HOST_SHARE * host:
        return "device"  # the CPU is both
    return "host" if nbytes <= HOST_SHARE * host else "stream"
