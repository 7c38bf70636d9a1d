"""Densification for the Gaussian field: gsplat's strategies, one shared Adam, no host synchronisation.

gsplat's strategies edit "one optimizer per parameter" (they swap the parameter of its group and
move its Adam moments when Gaussians are cloned, split, pruned or relocated). The field keeps a
single fused Adam with one group per parameter instead, one ``step()`` for everything, and hands
the strategies a :class:`GroupOptimizer` per parameter: a view of that group shaped like the
optimizer they expect.

:class:`SyncFreeDefaultStrategy` is gsplat's ``DefaultStrategy`` with the per-step gradient
statistics accumulated by masked sums instead of boolean indexing, which made every step wait for
the GPU (``nonzero``) just to count which Gaussians were visible.
"""

from __future__ import annotations

from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from torch import Tensor


class GroupOptimizer:
    """One parameter group of a shared optimizer, seen as the single-parameter optimizer gsplat edits.

    ``param_groups`` is a one-element list holding the shared optimizer's own group dict (so
    replacing ``param_groups[0]["params"]`` edits the shared optimizer) and ``state`` is its state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, index: int) -> None:
        self.optimizer = optimizer
        self.index = index

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [self.optimizer.param_groups[self.index]]

    @property
    def state(self):
        return self.optimizer.state


def group_optimizers(optimizer: torch.optim.Optimizer, names: tuple[str, ...]) -> dict[str, GroupOptimizer]:
    """``{name: view}`` for the groups of ``optimizer`` whose ``"name"`` is in ``names``."""
    return {g["name"]: GroupOptimizer(optimizer, i) for i, g in enumerate(optimizer.param_groups) if g.get("name") in names}


class SyncFreeDefaultStrategy(DefaultStrategy):
    """gsplat's 3DGS clone/split/prune strategy; the running statistics are updated without syncing.

    Same statistics as gsplat's for the non-packed layout: per Gaussian, the sum over steps of the
    norm of its screen-space mean gradient (scaled to NDC) and the number of steps it was visible.
    """

    # overrides a private method of gsplat 1.5 (its signature and the state keys it fills, grad2d / count /
    # radii): pyproject.toml pins gsplat to the 1.5 series; tests/test_splat_training_parts.py compares the two
    def _update_state(self, params, state: dict[str, Any], info: dict[str, Any], packed: bool = False) -> None:
        if packed:
            return super()._update_state(params, state, info, packed=packed)
        means2d = info[self.key_for_gradient]
        grads = means2d.absgrad if self.absgrad else means2d.grad  # [C, N, 2]
        n_cams = info["n_cameras"]
        norm = torch.hypot(grads[..., 0] * (info["width"] / 2.0 * n_cams),
                           grads[..., 1] * (info["height"] / 2.0 * n_cams))  # [C, N]
        visible = (info["radii"] > 0.0).all(dim=-1)  # [C, N]
        n = len(params["means"])
        if state["grad2d"] is None:
            state["grad2d"] = torch.zeros(n, device=grads.device)
        if state["count"] is None:
            state["count"] = torch.zeros(n, device=grads.device)
        state["grad2d"] += torch.where(visible, norm, 0.0).sum(0)
        state["count"] += visible.sum(0, dtype=torch.float32)
        if self.refine_scale2d_stop_iter > 0:
            if state["radii"] is None:
                state["radii"] = torch.zeros(n, device=grads.device)
            radii: Tensor = info["radii"].amax(dim=-1) / float(max(info["width"], info["height"]))  # [C, N]
            state["radii"] = torch.maximum(state["radii"], torch.where(visible, radii, 0.0).amax(0))


class GroupLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` with one factor per group whose ``load_state_dict`` also restores the groups' rates.

    (PyTorch's sets the rates from its factors at step 0 when constructed and leaves them there on
    load, so a resumed run would take one step at the undecayed rate.)
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr
