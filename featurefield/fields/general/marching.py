"""Fast novel views of the generalizable field: the same samples as :mod:`.rendering`, far fewer evaluated.

:func:`march_view` renders what :func:`~.rendering.render_view` renders (same rays, same samples per ray,
same compositing); it differs in what it evaluates:

* the conditioning layers are folded into the source maps once per encoded image
  (:meth:`~.model.GeneralField.fold`): a point's terms are one embedding-bag gather, no matrix product;
* samples in empty cells of an occupancy grid are skipped (as ``render_view(occupancy=...)`` does);
* rays march in windows of their occupied samples, front to back, and a ray stops once its
  transmittance falls to ``transmittance`` (early ray termination): the trunk runs on the samples before
  the surface, not behind it;
* the heads run only on samples whose weight exceeds ``min_weight`` (unless those are most of them), and the feature head's affine last
  layer runs once per ray on the composited hidden layer (:meth:`~.model.GeneralField.feature_decode`)
  where the feature is at least as wide as that layer (the teachers' 256 channels at width 256).

With ``transmittance = min_weight = 0`` the result equals the skipped dense render up to float rounding.
The defaults (1e-4, 1e-5) leave out at most the weight behind transmittance 1e-4 and ``samples * 1e-5``
of weight in pruned samples: a ray moves by at most ~1e-3 of its largest value (~1e-4 in the tests),
about the fp16 rounding of the GPU path.

:func:`march_volume` renders a view from a cached feature volume (:func:`~.rendering.feature_volume`)
instead of the field: trilinear density and features, no network at all (an approximation: its cost in
quality is measured by ``bench/general_speed.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function

from featurefield.cameras import Cameras
from featurefield.fields.general.model import FoldedConditioning, GeneralField
from featurefield.fields.general.rendering import occupied, sphere_bounds

HEADS = ("rgb", "feature", "descriptor")


def ray_samples(origins: Tensor, dirs: Tensor, samples: int, bound: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Evenly spaced samples of rays ``[R, 3]`` inside the sphere, as :func:`~.rendering.render_rays` places them.

    Returns:
        ``t [R, N]``, ``points [R, N, 3]``, spacing ``[R]`` and ``hit [R]``.
    """
    near, far, hit = sphere_bounds(origins, dirs, bound)
    far = torch.where(hit, far, near + 1e-3)
    u = torch.arange(samples, device=origins.device, dtype=origins.dtype) + 0.5
    t = near[:, None] + (far - near)[:, None] * u / samples
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    return t, points, (far - near) / samples, hit


def _window_weights(sigma: Tensor, spacing: Tensor, trans: Tensor) -> tuple[Tensor, Tensor]:
    """Compositing weights ``[R, M]`` of a window of samples and the transmittance ``[R]`` after it.

    Args:
        sigma: ``[R, M]`` densities (0 for empty slots). spacing: ``[R]``. trans: ``[R]`` transmittance
            before the window. The same products as :func:`~.rendering.composite`, in windows.
    """
    alpha = 1 - torch.exp(-sigma * spacing[:, None])
    factors = 1 - alpha + 1e-10
    before = torch.cumprod(torch.cat([trans[:, None], factors[:, :-1]], 1), 1)
    return alpha * before, before[:, -1] * factors[:, -1]


def plain_trunk(field: GeneralField, points: Tensor, folded: FoldedConditioning, descriptor: bool) -> tuple[Tensor, Tensor | None]:
    """The trunk at ``points [M, 3]`` from folded conditioning: ``h [M, width]`` and the descriptor (or ``None``).
    :class:`~.trunk_triton.FusedTrunk` is its fused twin."""
    with record_function("general/pixel_aligned"):
        terms = field.folded_terms(points[None], folded)
    with record_function("general/trunk"):
        h, desc = field.run_trunk(points[None], terms, descriptor)
    return h[0], (desc[0] if desc is not None else None)


@torch.no_grad()
def march_rays(field: GeneralField, folded: FoldedConditioning, origins: Tensor, dirs: Tensor, occupancy: Tensor,
               need: tuple[str, ...] = ("rgb", "feature"), *, transmittance: float = 1e-4, min_weight: float = 1e-5,
               window: int = 8, trunk=plain_trunk, stats: dict | None = None) -> dict[str, Tensor]:
    """Render rays of one object, evaluating only what changes the result (see the module doc).

    Args:
        field: the field; folded: its :meth:`~.model.GeneralField.fold` of one object's source views.
        origins, dirs: ``[R, 3]`` rays (unit directions). occupancy: an occupancy grid ``[G, G, G]``
            (:func:`~.rendering.occupancy_grid` or :func:`~.rendering.occupancy_from_density`).
        need: ``"rgb"``, ``"feature"``, ``"descriptor"``. transmittance: a ray stops below it (0: never).
        min_weight: heads only on samples weighing more (0: every sample of nonzero weight).
        window: occupied samples per ray in the first round (doubling each round after).
        trunk: :func:`plain_trunk` or its fused twin, a :class:`~.trunk_triton.FusedTrunk` of the field.
        stats: if given, gets ``trunk_samples``, ``head_samples`` and ``rounds`` added to it.
    Returns:
        ``alpha [R]``, ``depth [R]`` (ray length) and as asked ``rgb [R, 3]`` (over the background),
        ``feature [R, D]``, ``descriptor [R, width]``.
    """
    cfg = field.config
    R, device = origins.shape[0], origins.device
    with record_function("general/rays"):
        t, points, spacing, hit = ray_samples(origins, dirs, cfg.samples, cfg.bound)
        keep = occupied(points, occupancy, cfg.bound) & hit[:, None]  # [R, N]
        rank = keep.cumsum(1) - 1  # position of each occupied sample among its ray's occupied samples
    trans = torch.ones(R, device=device)
    alpha_sum = torch.zeros(R, device=device)
    depth = torch.zeros(R, device=device)
    head_weight = torch.zeros(R, device=device)
    acc: dict[str, Tensor] = {}
    late = cfg.feature_dim >= cfg.width  # composite the feature head's hidden layer only when it is no wider than its output
    counts = {"trunk_samples": 0, "head_samples": 0, "rounds": 0}
    start, size = 0, window
    while True:
        with record_function("general/rays"):
            alive = trans > transmittance
            ray, sample = (keep & alive[:, None] & (rank >= start) & (rank < start + size)).nonzero(as_tuple=True)
        if ray.numel() == 0:  # a ray with an occupied sample past `start` has one at `start`: all are done
            break
        h, desc = trunk(field, points[ray, sample], folded, "descriptor" in need)  # [M, width]
        with record_function("general/trunk"):
            sigma = field.sigma(h).float()
        with record_function("general/composite"):
            slot = rank[ray, sample] - start
            dense = torch.zeros(R, size, device=device)
            dense[ray, slot] = sigma
            wd, trans = _window_weights(dense, spacing, trans)
            w = wd[ray, slot]
            alpha_sum += wd.sum(1)
            depth.index_add_(0, ray, w * t[ray, sample])
        with record_function("general/heads"):
            m = (w > min_weight).nonzero().squeeze(1)
            if m.numel() > 0.75 * w.numel():  # gathering most rows costs more than the heads on the few light ones
                m = None
            r, wm, hm = (ray, w, h) if m is None else (ray[m], w[m], h[m])
            head_weight.index_add_(0, r, wm)
            parts = {}
            if "feature" in need:
                parts["feature"] = field.feature_hidden(hm) if late else field.feature(hm)
            if "rgb" in need:
                parts["rgb"] = field.rgb(hm, dirs[r])
            if "descriptor" in need:
                parts["descriptor"] = desc if m is None else desc[m]
            for key, v in parts.items():
                if key not in acc:
                    acc[key] = torch.zeros(R, v.shape[-1], device=device)
                acc[key].index_add_(0, r, wm[:, None] * v.float())
        counts["trunk_samples"] += int(ray.numel())
        counts["head_samples"] += int(r.numel())
        counts["rounds"] += 1
        start, size = start + size, 2 * size
    out = {"alpha": alpha_sum, "depth": depth}
    with record_function("general/heads"):
        for key in HEADS:
            if key not in need:
                continue
            width = {"rgb": 3, "feature": cfg.width if late else cfg.feature_dim, "descriptor": cfg.width}[key]
            v = acc.get(key, torch.zeros(R, width, device=device))
            out[key] = field.feature_decode(v, head_weight).float() if key == "feature" and late else v
        if "rgb" in out:
            out["rgb"] = out["rgb"] + (1 - alpha_sum[:, None]) * torch.tensor(cfg.background, device=device)
    if stats is not None:
        for k, v in counts.items():
            stats[k] = stats.get(k, 0) + v
    return out


def _view(render, camera: Cameras, device: torch.device, chunk: int) -> dict[str, Tensor]:
    """Run ``render(origins [R, 3], dirs [R, 3])`` over a camera's rays in chunks; images ``[H, W, ...]``, z-depth."""
    camera = camera.to(device)
    o, d = camera.rays(0)
    H, W = o.shape[:2]
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    parts: dict[str, list[Tensor]] = {}
    for s in range(0, o.shape[0], chunk):
        for k, v in render(o[s:s + chunk], d[s:s + chunk]).items():
            parts.setdefault(k, []).append(v)
    out = {k: torch.cat(v).reshape(H, W, -1).squeeze(-1) for k, v in parts.items()}
    out["depth"] = out["depth"] * (d @ camera.c2w[0, :3, 2]).reshape(H, W)
    return out


@torch.no_grad()
def march_view(field: GeneralField, folded: FoldedConditioning, camera: Cameras, occupancy: Tensor,
               need: tuple[str, ...] = ("rgb", "feature"), *, chunk: int = 1 << 16, transmittance: float = 1e-4,
               min_weight: float = 1e-5, window: int = 8, trunk=plain_trunk, stats: dict | None = None) -> dict[str, Tensor]:
    """One object's view by :func:`march_rays`; the outputs of :func:`~.rendering.render_view`.

    Args:
        field, folded, occupancy, need, transmittance, min_weight, window, trunk, stats: as in :func:`march_rays`.
        camera: one camera (``H x W``). chunk: rays per round of marching (bounds memory).
    Returns:
        ``alpha [H, W]``, ``depth [H, W]`` (z-depth), ``rgb [H, W, 3]``, ``feature [H, W, D]``,
        ``descriptor [H, W, width]`` as asked.
    """
    def render(o: Tensor, d: Tensor) -> dict[str, Tensor]:
        return march_rays(field, folded, o, d, occupancy, need, transmittance=transmittance, min_weight=min_weight,
                          window=window, trunk=trunk, stats=stats)

    return _view(render, camera, field.device, chunk)


def trilinear_bags(points: Tensor, resolution: int, bound: float) -> tuple[Tensor, Tensor]:
    """Trilinear interpolation in a cell-centred ``resolution^3`` volume over ``[-bound, bound]^3`` as embedding
    bags: for ``points [M, 3]``, the eight cells ``index [M, 8]`` (rows of the volume flattened from ``[x, y, z]``
    order) and their weights ``[M, 8]``; the border cells extend to the cube's faces (``grid_sample``'s
    ``padding_mode="border"``). Gathering channels-last rows reads each cell's channels contiguously.
    """
    R = resolution
    u = ((points.float() / bound + 1) * (R / 2) - 0.5).clamp(0, R - 1)  # [M, 3] in cell units
    lo = u.floor().clamp(max=max(R - 2, 0))
    f = u - lo
    lo = lo.long()
    index, weight = [], []
    for corner in range(8):
        d = [(corner >> k) & 1 for k in (2, 1, 0)]  # offsets along x, y, z
        c = [(lo[:, k] + d[k]).clamp(max=R - 1) for k in range(3)]
        index.append((c[0] * R + c[1]) * R + c[2])
        weight.append(torch.stack([f[:, k] if d[k] else 1 - f[:, k] for k in range(3)], -1).prod(-1))
    return torch.stack(index, 1), torch.stack(weight, 1)


@torch.no_grad()
def march_volume(volume: dict[str, Tensor], camera: Cameras, samples: int, bound: float,
                 need: tuple[str, ...] = ("feature",), *, background: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 transmittance: float = 1e-4, min_weight: float = 1e-5, chunk: int = 1 << 16) -> dict[str, Tensor]:
    """A view rendered from a cached volume instead of the field (approximate: trilinear, not the network).

    Args:
        volume: :func:`~.rendering.feature_volume`'s output: ``sigma [R, R, R]`` and the channels in
            ``need`` (``feature [R, R, R, D]``, ``descriptor``; ``rgb`` if it holds one).
        camera: one camera. samples, bound: as the field's config (the same samples as its renders).
        need: channels to render besides alpha and depth. background: under ``rgb``.
        transmittance, min_weight: as in :func:`march_rays` (channels are looked up only where they count).
    Returns:
        ``alpha [H, W]``, ``depth [H, W]`` (z-depth) and the channels asked, ``[H, W, C]``.
    """
    res = volume["sigma"].shape[0]
    sigma_zyx = volume["sigma"].float().permute(2, 1, 0)[None, None].contiguous()  # grid_sample reads (x, y, z) from [z, y, x]
    tables = {k: volume[k].reshape(res**3, -1) for k in need}  # [x, y, z] volumes are channels-last rows already

    def render(o: Tensor, d: Tensor) -> dict[str, Tensor]:
        t, points, spacing, hit = ray_samples(o, d, samples, bound)
        R, N = t.shape
        grid = (points / bound).reshape(1, 1, 1, -1, 3)
        sigma = F.grid_sample(sigma_zyx, grid, padding_mode="border", align_corners=False).reshape(R, N) * hit[:, None]
        w, _ = _window_weights(sigma, spacing, torch.ones(R, device=o.device))
        alive = (1 - w.cumsum(1) + w) > transmittance  # transmittance before each sample
        keep = ((w > min_weight) & alive).reshape(-1).nonzero().squeeze(1)
        ray = torch.div(keep, N, rounding_mode="floor")
        wk = w.reshape(-1)[keep]
        out = {"alpha": w.sum(1), "depth": (w * t).sum(1)}
        index, weight = trilinear_bags(points.reshape(-1, 3)[keep], res, bound)
        for k, table in tables.items():
            v = F.embedding_bag(index, table, per_sample_weights=weight.to(table.dtype), mode="sum").float()
            out[k] = torch.zeros(R, v.shape[1], device=o.device).index_add_(0, ray, wk[:, None] * v)
        if "rgb" in out:
            out["rgb"] = out["rgb"] + (1 - out["alpha"][:, None]) * torch.tensor(background, device=o.device)
        return out

    return _view(render, camera, volume["sigma"].device, chunk)


class compile_trunk:  # noqa: N801 - used like a function: field.run_trunk = compile_trunk(field.run_trunk)
    """``torch.compile`` of a trunk function (dynamic shapes: the sample count changes every round), falling
    back to the plain function for good if compiling or the first compiled call fails (``error`` says why).

    Optional: it fuses the trunk's ReLUs, adds and casts into fewer kernels on a GPU; the plain function is
    its twin and the default.
    """

    def __init__(self, fn) -> None:
        self.fn = fn
        self.error: str | None = None
        try:
            self.compiled = torch.compile(fn, dynamic=True)
        except Exception as err:  # noqa: BLE001 - any failure means: run the plain function
            self.compiled, self.error = None, f"{type(err).__name__}: {err}"

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001
                self.compiled, self.error = None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return self.fn(*args, **kwargs)
