"""Training on several processes, one per GPU, launched by ``torchrun``: data parallel, the field replicated.

::

    torchrun --nproc-per-node 2 -m featurefield.cli train splat SCENE --teacher sam

Every rank (process) holds the whole field and every training image (or streams them from the caches on
disk, ``--data.residency stream``, rank 0 choosing where for all). Each step, each rank trains on a batch
of its own (the Gaussian field: one view; the NeRF: ``rays_per_batch`` rays), the gradients are averaged over
the ranks and every rank takes the same optimizer step, so the fields stay identical. One step of N ranks
thus sees N views, as in gsplat's multi-GPU training (``examples/simple_trainer.py``, where
``--steps_scaler 1/N`` shortens the run to match): here ``--steps S`` on N ranks *is* ``ceil(S / N)``
steps (:func:`run_steps`), the views a one-GPU run of S steps sees, and every schedule counted in steps
(learning-rate decay, densification, SH degrees) is laid out over those steps by the field, as for any
shorter run. A run's steps are fixed when it starts (``config.json``: ``steps``, and ``ranks``, what it
started on); resumed on another number of ranks it keeps its steps and schedules, each step then seeing
as many views as there are ranks.

What makes N processes act as one:

* **batches**: one batch generator, in the same state on every rank; each step every rank draws the batches
  of all ranks in turn and trains on its own (:meth:`~featurefield.fields.base.FeatureField.sample_rank_batch`),
  so the ranks see different views (consecutive entries of one shuffled order), the checkpoint holds one
  generator state, and a run resumes on any number of ranks. Randomness inside a rank's own step (the
  NeRF's stratified jitter) uses the global RNG, seeded per rank from the run's seed (rank 0 keeps the
  one-GPU stream; the others' are derived from the seed, their rank and the step they start at).
* **gradients**: averaged after ``backward`` by one all-reduce of all gradients flattened
  (:meth:`DataParallel.average_gradients`), not torch's ``DistributedDataParallel``: the Gaussian field
  replaces its parameter tensors whenever Gaussians are added or removed (DDP binds parameters and
  gradient buckets once), both fields train through ``training_loss`` and their own optimizers rather than a
  ``forward``, and the NeRF's proposal networks skip their update on some steps (DDP would need
  ``find_unused_parameters`` and its graph walk every step). One code path serves both fields; the cost
  is that the all-reduce does not overlap the backward pass.
* **densification**: gsplat's strategy runs on every rank on identical inputs. Its running statistics
  (DefaultStrategy's ``grad2d`` and ``count`` summed, ``radii`` maxed) are all-reduced as they are
  accumulated, so they cover the views of all ranks, and its random choices (the samples of split
  Gaussians, MCMC's relocation and noise) are drawn under a seed derived from the run's seed and the step,
  the same on every rank (:meth:`DataParallel.shared_randomness`). Every rank thus grows, prunes and moves
  the same Gaussians without shipping them. Running the strategy on rank 0 and broadcasting its result
  was the alternative: it must ship every parameter *and* its Adam moments after each refinement and
  rebuild the others' optimizer state, for each strategy; here the per-step cost is two all-reduces of
  one float per Gaussian. A guard compares the ranks' parameter counts every step, so should the ranks
  ever part, training stops with a one-line error instead of hanging in a mismatched all-reduce.
* **Adam**: with N views a step, Adam's settings follow gsplat's multi-GPU rule (the square-root scaling
  rule of Malladi et al.): learning rates times sqrt(N), eps divided by sqrt(N), betas ``1 - N (1 - beta)``
  (``TrainConfig.scale_adam``). Checkpoints hold the one-rank settings, rescaled on resume for the ranks
  present.
* **writes**: rank 0 alone writes the run (config, checkpoints, ``metrics.jsonl``, evaluations, the lock);
  the others wait for it, and an error of the writer is raised on every rank (:func:`agree`), so no rank
  reads a half-written checkpoint and no rank hangs. The CLI prints one line: rank 0's, or the line of a
  rank whose own step failed (:func:`rank_specific`).
* **feature cache**: filled once: each rank extracts a shard of the views, rank 0 gathers them into the set
  every rank then reads (:func:`fill_feature_cache`, as ``featurefield features`` under torchrun).

Backends: NCCL between GPUs (with ``NCCL_NVLS_ENABLE=0`` unless set: NVLink multicast off), plus a gloo
group for the small host-side agreements; gloo alone on the CPU, which is how the tests run two ranks.

**gsplat's distributed rasterization** (``rasterization(..., distributed=True)``, after Grendel, "On Scaling
Up 3D Gaussian Splatting Training") shards the *Gaussians* instead: each rank holds 1/N of them, projects
its shard for the cameras of every rank, and an all-to-all hands each rank the projected Gaussians its own
images need; gradients flow back through the exchange, and simple_trainer runs the strategy per rank on its
shard. That pays when the Gaussians do not fit one GPU; a lego-sized scene (300k Gaussians, 1.4 GB of
training memory) fits many times over, and replication needs no exchange per step. It would plug in here
as: :meth:`GaussianField.create` keeping every N-th initial Gaussian (``[rank::world]``), ``rasterize_gsplat``
passing ``distributed=True`` (every rank rendering the same number of cameras; no ``absgrad``),
:meth:`DataParallel.average_gradients` averaging only the shared parameters (decoders, spill and background
maps, appearance, poses) since each rank's Gaussian gradients are already complete, the strategy running per
rank without the statistics all-reduce, and checkpoints gathering the shards into one rank-independent set.
It is not built: gsplat's distributed path is CUDA-only and could not be checked without GPUs.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from featurefield.errors import FeatureFieldError
from featurefield.io import resolve_device

T = TypeVar("T")

#: environment defaults for NCCL, set before the process group starts (an explicit setting wins)
NCCL_DEFAULTS = {"NCCL_NVLS_ENABLE": "0"}
#: how long a rank waits in a collective (rank 0's final evaluation of a large test set included)
TIMEOUT = datetime.timedelta(hours=2)

_control: Any = None  # the gloo group of host-side agreements when the main backend is NCCL


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its machine (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched() -> Ranks:
    """The ranks torchrun's environment gives this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
    one rank outside it."""
    rank = int(os.environ.get("RANK", "0"))
    return Ranks(rank, int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", str(rank))))


def current() -> Ranks:
    """The ranks of the process group this process has joined (:func:`joined`); one rank when none."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), launched().local_rank)


def rank_device(device: str | torch.device = "auto") -> torch.device:
    """The device of this rank: as :func:`~featurefield.io.resolve_device`, with a bare ``cuda`` read as
    ``cuda:LOCAL_RANK`` when several ranks share a machine."""
    ranks = launched()
    dev = resolve_device(device, ranks.local_rank)
    if dev.type == "cuda" and dev.index is None and ranks.distributed:
        dev = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
    return dev


def run_steps(steps: int, ranks: int) -> int:
    """Optimizer steps of a run of ``steps`` one-view steps on ``ranks`` ranks: each takes ``ranks`` views."""
    return max(1, math.ceil(int(steps) / max(1, int(ranks))))


@contextmanager
def joined(device: str | torch.device = "auto") -> Iterator[Ranks]:
    """Join torchrun's process group for the block (NCCL for CUDA with a gloo group beside it, gloo on the CPU)
    and leave it after; a no-op outside torchrun, or when the caller has already joined one."""
    global _control
    ranks = launched()
    if not ranks.distributed or dist.is_initialized():
        yield current()
        return
    dev = rank_device(device)
    if dev.type == "cuda":
        for key, value in NCCL_DEFAULTS.items():
            os.environ.setdefault(key, value)
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=TIMEOUT)
    except (ValueError, RuntimeError) as err:  # WORLD_SIZE set by hand, or a rendezvous that failed
        raise FeatureFieldError(f"cannot join the other ranks ({err}); launch with torchrun --nproc-per-node N, "
                                "or unset WORLD_SIZE to run one process") from err
    try:
        _control = dist.new_group(backend="gloo", timeout=TIMEOUT) if dev.type == "cuda" else None
        yield current()
    finally:
        _control = None
        dist.destroy_process_group()


def _host_group():
    """The group for host-side agreements (gloo): the default group on the CPU, the gloo one beside NCCL."""
    return _control


def barrier() -> None:
    """Wait for every rank (nothing with one)."""
    if current().distributed:
        dist.barrier(group=_host_group())


def rank_specific(err: BaseException) -> BaseException:
    """Mark an error as this rank's alone (its own step failed, e.g. out of its GPU's memory): the CLI prints it
    on every rank that raises it, where an error all ranks raise alike is printed by rank 0 only."""
    err.rank_specific = True  # type: ignore[attr-defined]
    return err


def agree(fn: Callable[[], T], *, main_only: bool = False) -> T | None:
    """Run ``fn`` on every rank (or on rank 0 alone, ``main_only``); return when all are done, raising on
    every rank the first error any raised, so that all ranks go on, or stop, together.

    A :class:`FeatureFieldError` is raised everywhere with its message; another exception keeps its traceback
    on its own rank while the others raise a one-line error naming it. With one rank: just ``fn()``.
    Returns:
        ``fn()``'s result on the ranks that ran it, else None.
    """
    ranks = current()
    if not ranks.distributed:
        return fn()
    result, failure, error = None, None, None
    if ranks.main or not main_only:
        try:
            result = fn()
        except FeatureFieldError as err:
            failure, error = str(err), err
        except BaseException as err:  # a bug, an interrupt: its traceback stays on this rank
            failure, error = f"rank {ranks.rank} failed ({type(err).__name__}: {err}); see its message", err
    failures: list[str | None] = [None] * ranks.world
    dist.all_gather_object(failures, failure, group=_host_group())
    if error is not None:
        raise error
    first = next((f for f in failures if f is not None), None)
    if first is not None:
        raise FeatureFieldError(first)
    return result


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0, its result (a small picklable value) handed to every rank; its error raised on
    every rank as by :func:`agree`."""
    result = agree(fn, main_only=True)
    if not current().distributed:
        return result
    box = [result]
    dist.broadcast_object_list(box, src=0, group=_host_group())
    return box[0]


@contextmanager
def main_lock(run_dir: str | Path) -> Iterator[None]:
    """The run folder's lock (:func:`featurefield.runlock.run_lock`) held by rank 0 for the block; every rank
    raises if it cannot be taken."""
    from featurefield.runlock import run_lock

    with ExitStack() as stack:
        agree(lambda: stack.enter_context(run_lock(run_dir)), main_only=True)
        yield


def fill_feature_cache(store, scene, teacher, views: list[int], *, device: torch.device | str | None = None,
                       batch_size: int = 8, progress: bool = True) -> int:
    """With several ranks, fill the feature cache of ``views`` once: rank ``r`` extracts every N-th view from
    the r-th on its own device, then rank 0 gathers the shards into the one set of ``views`` (rows copied, not
    recomputed) and drops them. Nothing is done when the set is cached already, or with one rank.

    Returns:
        how many views this rank extracted.
    """
    ranks = current()
    if not ranks.distributed or on_main(lambda: store.is_cached(scene, teacher, views)):
        return 0
    shards = [views[r::ranks.world] for r in range(ranks.world)]
    mine = shards[ranks.rank]

    def extract() -> None:
        if mine:
            store.load_or_extract(scene, teacher, mine, device=device, batch_size=batch_size, progress=progress and ranks.main)

    def gather() -> None:
        store.load_or_extract(scene, teacher, views, device=device, batch_size=batch_size, progress=False)
        for shard in shards:
            if shard and shard != views:
                store.discard(scene, teacher, shard)

    agree(extract)
    agree(gather, main_only=True)
    return len(mine)


def _seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (stable across processes and Python versions)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


class DataParallel:
    """The collectives of one data-parallel training step on ``ranks`` (see the module doc); with one rank
    every method leaves the step as it is, so one code path trains on one process or many.

    Args:
        ranks: this process's place (:func:`current`).
        seed: the run's seed (per-rank streams and the strategy's shared randomness derive from it).
        scale_adam: follow gsplat's multi-GPU rule for Adam's settings (see the module doc).
    """

    def __init__(self, ranks: Ranks = Ranks(), seed: int = 0, scale_adam: bool = True) -> None:
        self.ranks = ranks
        self.seed = int(seed)
        self.scale_adam = bool(scale_adam)
        self._adam: dict[tuple[str, int], tuple[float, tuple[float, ...]]] = {}  # one-rank eps, betas per group
        self._scaled_schedulers: set[str] = set()

    @property
    def distributed(self) -> bool:
        return self.ranks.distributed

    # ------------------------------------------------------------------ the start of a session
    def start(self, fld, start: int) -> None:
        """Before the first step of a session: check the ranks hold fields of one size, make them equal (rank
        0's), seed each rank's own randomness, scale Adam for the ranks, and let the field share the statistics
        it gathers from its batches."""
        if not self.distributed:
            return
        self._agreed_stop(False, fld, start)
        with torch.no_grad():
            for value in fld.state_dict().values():
                if torch.is_tensor(value) and value.numel():
                    self._broadcast_(value)
        if not self.ranks.main:  # rank 0 keeps the stream a one-GPU run has (or the checkpoint's)
            torch.manual_seed(_seed(self.seed, "rank", self.ranks.rank, start))
        if self.scale_adam:
            self._scale_adam(fld)
        fld.share_statistics(self.all_reduce_)

    def _broadcast_(self, value: Tensor) -> None:
        if value.is_contiguous():
            dist.broadcast(value, src=0)
        else:
            tmp = value.contiguous()
            dist.broadcast(tmp, src=0)
            value.copy_(tmp)

    # ------------------------------------------------------------------ Adam for N views a step
    def _scale_adam(self, fld) -> None:
        k = self.ranks.world
        root = math.sqrt(k)
        for name, opt in fld.optimizers().items():
            for i, group in enumerate(opt.param_groups):
                if "betas" not in group:
                    continue
                self._adam[(name, i)] = (group["eps"], tuple(group["betas"]))
                group["lr"] *= root
                if "initial_lr" in group:
                    group["initial_lr"] *= root
                group["eps"] /= root
                group["betas"] = tuple(max(0.0, 1.0 - k * (1.0 - b)) for b in group["betas"])
        for name, sch in fld.schedulers().items():
            groups = getattr(getattr(sch, "optimizer", None), "param_groups", [])
            if hasattr(sch, "base_lrs") and groups and all("betas" in g for g in groups):
                sch.base_lrs = [b * root for b in sch.base_lrs]
                sch._last_lr = [b * root for b in sch._last_lr]
                self._scaled_schedulers.add(name)

    def checkpoint_states(self, fld) -> tuple[dict, dict]:
        """The optimizers' and schedulers' state dicts as one rank would hold them (Adam unscaled), so a
        checkpoint does not depend on how many ranks wrote it."""
        optimizers = {k: o.state_dict() for k, o in fld.optimizers().items()}
        schedulers = {k: s.state_dict() for k, s in fld.schedulers().items()}
        if not self._adam:
            return optimizers, schedulers
        root = math.sqrt(self.ranks.world)
        for name, state in optimizers.items():
            groups = []
            for i, group in enumerate(state["param_groups"]):
                group = dict(group)
                if (name, i) in self._adam:
                    group["eps"], group["betas"] = self._adam[(name, i)]
                    group["lr"] /= root
                    if "initial_lr" in group:
                        group["initial_lr"] /= root
                groups.append(group)
            optimizers[name] = {**state, "param_groups": groups}
        for name in self._scaled_schedulers:
            state = schedulers[name]
            schedulers[name] = {**state, "base_lrs": [b / root for b in state["base_lrs"]],
                                "_last_lr": [b / root for b in state["_last_lr"]]}
        return optimizers, schedulers

    # ------------------------------------------------------------------ one step
    def sample_batch(self, fld, data, step: int, generator: torch.Generator) -> Any:
        """This rank's batch of the step (the field's own draw with one rank)."""
        if not self.distributed:
            return fld.sample_batch(data, step, generator)
        return fld.sample_rank_batch(data, step, generator, self.ranks.rank, self.ranks.world)

    def average_gradients(self, module: nn.Module) -> None:
        """Average every parameter's gradient over the ranks, in one all-reduce.

        A parameter without a gradient on a rank counts as zero there; it gets the average wherever any rank
        had one (every rank then steps it alike), and stays without where none had.
        """
        if not self.distributed:
            return
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            return
        dev = params[0].device
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
        flat = torch.cat([(p.grad.reshape(-1).float() if p.grad is not None
                           else torch.zeros(p.numel(), dtype=torch.float32, device=dev)) for p in params] + [present])
        dist.all_reduce(flat)
        flat /= self.ranks.world
        chunks = flat.split([p.numel() for p in params] + [len(params)])
        had = chunks[-1] > 0
        for i, (p, g) in enumerate(zip(params, chunks)):
            if p.grad is not None or bool(had[i]):
                p.grad = g.view_as(p).to(p.dtype)

    def mean_losses(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        """The step's losses and metrics averaged over the ranks (detached), what the progress line and
        ``metrics.jsonl`` report; the same on every rank, so a non-finite loss stops every rank alike."""
        if not self.distributed:
            return losses
        keys = sorted(losses)
        dev = losses["loss"].device
        values = torch.stack([torch.as_tensor(losses[k], device=dev).detach().float().reshape(()) for k in keys])
        dist.all_reduce(values)
        values /= self.ranks.world
        return dict(zip(keys, values.unbind()))

    def all_reduce_(self, tensor: Tensor, op: str = "sum") -> None:
        """Sum (``"sum"``) or max (``"max"``) ``tensor`` over the ranks, in place (a field's batch statistics)."""
        if self.distributed:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])

    def shared_randomness(self, step: int, device: torch.device | str):
        """A block whose random draws are the same on every rank (seeded from the run's seed and ``step``) and
        leave each rank's own stream where it was; nothing with one rank."""
        if not self.distributed:
            return nullcontext()
        return _seeded(_seed(self.seed, "shared", step), torch.device(device))

    def should_stop(self, requested: bool, fld, step: int) -> bool:
        """Whether any rank was asked to stop (a signal), agreed by all after each step so they stop at the same
        one; also checks that the ranks' fields still have one size."""
        if not self.distributed:
            return bool(requested)
        return self._agreed_stop(requested, fld, step)

    def _agreed_stop(self, requested: bool, fld, step: int) -> bool:
        n = sum(p.numel() for p in fld.parameters())
        flags = torch.tensor([int(bool(requested)), n, -n], dtype=torch.int64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=_host_group())
        if int(flags[1]) != -int(flags[2]):
            raise FeatureFieldError(
                f"the ranks' fields went apart at step {step} ({-int(flags[2]):,} to {int(flags[1]):,} parameters); "
                "the last checkpoint is intact: continue with --resume, or on one GPU")
        return bool(flags[0])


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
