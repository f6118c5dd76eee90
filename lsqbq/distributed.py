"""Multi-process training through ``torchrun``: process-group setup and a CPU-capable synchronised BN.

``torchrun --nproc_per_node N -m lsqbq.train --config FILE`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init` then joins the group (NCCL on CUDA, gloo on CPU). The global batch ``data.batch_size`` is split
evenly, DistributedDataParallel averages gradients, and BN layers are replaced by :class:`SyncBatchNorm2d`
so that a run on N processes computes the same batch statistics as one process with the same global batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistInfo", "init", "shutdown", "all_reduce_sum", "SyncBatchNorm2d", "convert_sync_bn"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init(use_cuda: bool) -> DistInfo:
    """Join the process group described by torchrun's environment (a no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local_rank)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum over ranks (in place); the identity without a process group."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the global batch of all ranks (any backend).

    Math: per channel c, with n = total elements over ranks, mean_c = sum(x)/n, var_c = sum(x^2)/n - mean_c^2
    (biased, used to normalise; the running variance gets the unbiased n/(n-1) version). The sums are
    all-reduced with the differentiable ``torch.distributed.nn.functional.all_reduce``, so the backward pass
    also sums the statistics' gradients over ranks. Cost: one all-reduce of 2C+1 numbers per layer and step.
    Without a process group (or in eval mode) it is exactly ``nn.BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)),
                           xf.new_tensor([x.numel() / C])])           # (2C + 1,)
        total = all_reduce(local)                                      # summed over ranks
        n = total[-1]
        mean = total[:C] / n
        var = (total[C:2 * C] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
                self.num_batches_tracked += 1
        y = (xf - mean.view(1, C, 1, 1)) * torch.rsqrt(var.view(1, C, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return y.to(x.dtype)


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by :class:`SyncBatchNorm2d` (sharing its state)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(child.buffers()).device)
            setattr(module, name, new)
        else:
            convert_sync_bn(child)
    return module
