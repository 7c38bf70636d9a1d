"""Densification for the Gaussian field: gsplat's strategies, one shared Adam, no host synchronisation.

gsplat's strategies edit "one optimizer per parameter" (they swap the parameter of its group and
move its Adam moments when Gaussians are cloned, split, pruned or relocated). The field keeps a
single fused Adam with one group per parameter instead, one ``step()`` for everything, and hands
the strategies a :class:`GroupOptimizer` per parameter: a view of that group shaped like the
optimizer they expect.

:class:`SyncFreeDefaultStrategy` is gsplat's ``DefaultStrategy`` with the per-step gradient
statistics accumulated by masked sums instead of boolean indexing, which made every step wait for
the GPU (``nonzero``) just to count which Gaussians were visible.

:class:`LeanMCMCStrategy` is gsplat's ``MCMCStrategy`` with its per-step position noise computed by
:func:`inject_position_noise` (the same noise, without a batched 3 x 3 matrix product per step).
"""

from __future__ import annotations

from typing import Any

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
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

    #: under data-parallel training, ``reduce(tensor, op)`` sums (``"sum"``) or maxes (``"max"``) a tensor over the
    #: ranks in place (:mod:`featurefield.distributed`): each step's statistics then cover every rank's view
    reduce = None

    # overrides a private method of gsplat 1.5 (its signature and the state keys it fills, grad2d / count /
    # radii): pyproject.toml pins gsplat to the 1.5 series; tests/test_splat_training_parts.py compares the two
    def _update_state(self, params, state: dict[str, Any], info: dict[str, Any], packed: bool = False) -> None:
        if self.reduce is not None:
            return self._update_state_of_ranks(params, state, info, packed)
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

    def _update_state_of_ranks(self, params, state: dict[str, Any], info: dict[str, Any], packed: bool) -> None:
        """This rank's update of the statistics, then the step's increments of ``grad2d`` and ``count`` summed
        over the ranks and ``radii`` maxed: every rank holds the statistics of all ranks' views (the same as
        one rank that saw them all in turn), so every rank grows and prunes the same Gaussians."""
        before = {k: None if state[k] is None else state[k].clone() for k in ("grad2d", "count")}
        reduce, self.reduce = self.reduce, None
        try:
            self._update_state(params, state, info, packed=packed)
        finally:
            self.reduce = reduce
        for k, old in before.items():
            if state[k] is not None:
                step = state[k] if old is None else state[k] - old
                reduce(step, "sum")
                state[k] = step if old is None else old + step
        if state.get("radii") is not None:
            reduce(state["radii"], "max")


class GroupLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` with one factor per group whose ``load_state_dict`` also restores the groups' rates.

    (PyTorch's sets the rates from its factors at step 0 when constructed and leaves them there on
    load, so a resumed run would take one step at the undecayed rate.)
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def _covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """``[N, 3, 3]`` covariances ``R S S R^T`` of Gaussians (gsplat's kernel on CUDA, its PyTorch twin elsewhere)."""
    if quats.is_cuda:
        from gsplat import quat_scale_to_covar_preci

        return quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)[0]
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

    return _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False, triu=False)[0]


@torch.no_grad()
def inject_position_noise(params, scaler: float) -> None:
    """3DGS-MCMC's exploration noise, as gsplat's ``inject_noise_to_position``: each mean moves by its
    covariance times a standard normal sample, scaled by ``scaler`` and gated to nearly transparent
    Gaussians (a steep sigmoid of ``1 - opacity`` about 0.995).

    The covariance-times-sample product is a broadcast multiply and a 3-term sum (gsplat's ``einsum``
    runs as a batched matrix-vector product, a slow kernel for 3 x 3 matrices); it draws the same
    normal samples, so the noise is gsplat's up to fp32 rounding.
    """
    means = params["means"]
    opacities = torch.sigmoid(params["opacities"].flatten())
    covars = _covariances(params["quats"], torch.exp(params["scales"]))
    gate = 1 / (1 + torch.exp(-100 * ((1 - opacities) - 0.995)))
    noise = torch.randn_like(means) * gate[:, None] * scaler  # [N, 3]
    means.add_((covars * noise[:, None, :]).sum(-1))


class LeanMCMCStrategy(MCMCStrategy):
    """gsplat's ``MCMCStrategy`` (relocate dead Gaussians, add new ones up to the cap, then noise) with the
    noise of :func:`inject_position_noise`."""

    def step_post_backward(self, params, optimizers, state: dict[str, Any], step: int, info: dict[str, Any],
                           lr: float) -> None:
        state["binoms"] = state["binoms"].to(params["means"].device)
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            self._relocate_gs(params, optimizers, state["binoms"])
            self._add_new_gs(params, optimizers, state["binoms"])
            torch.cuda.empty_cache()
        inject_position_noise(params, lr * self.noise_lr)
