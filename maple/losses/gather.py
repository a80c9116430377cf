"""The one gather helper: embeddings from every rank, so a contrastive loss sees the global batch.

After open_clip's `gather_features` (src/open_clip/loss.py). The loss body reads the same on one process and on many:
it calls `gather_features` and builds its labels from the returned offset.
"""

import torch
import torch.distributed as dist


def distributed_world() -> tuple[int, int]:
    """`(rank, world_size)`; `(0, 1)` when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for this rank's rows (a reduce-scatter).

    Not `torch.distributed.nn.functional.all_gather`: on gloo its backward scatters into `empty_like(grad)` buffers,
    which keep a non-contiguous gradient's strides, and gloo's scatter ignores strides (pytorch/pytorch#24836,
    #192920), so the gradient of e.g. an einsum comes back scrambled (measured with torch 2.13). Here the gradient is
    made contiguous before any collective touches it.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor) -> torch.Tensor:
        rank, world_size = dist.get_rank(), dist.get_world_size()
        features = features.contiguous()
        parts = [torch.empty_like(features, memory_format=torch.contiguous_format) for _ in range(world_size)]
        dist.all_gather(parts, features)
        ctx.rank, ctx.rows = rank, features.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # a private, contiguous buffer for the collective
        if dist.get_backend() in ("nccl", "xccl"):
            local = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(local, grad)
            return local
        dist.all_reduce(grad)  # gloo has no reduce-scatter: sum everything, keep this rank's rows
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_features(features: torch.Tensor, *, gather_with_grad: bool = True) -> tuple[torch.Tensor, int]:
    """All-gather `features` along dim 0 from every rank, in rank order.

    features: (n, ...) this rank's shard; every rank must hold the same shape (drop the last uneven batch).
    Returns `(global_features, offset)`: global_features (world_size·n, ...), and offset = rank·n, the row of this
    rank's first sample in the global batch (labels of local rows are `arange(n) + offset`). With world size 1 or
    torch.distributed not initialised: `(features, 0)`, the identity.

    gather_with_grad=True (default): the backward of the gather reduce-scatters (sums) every rank's gradient back to
    the shard's owner, so each rank's loss over the global batch sends its gradient to every shard. Once parameter
    gradients are averaged across ranks (DDP, DeepSpeed), they equal the gradient of the same loss computed on one
    process holding the whole batch.

    gather_with_grad=False is open_clip's cheaper mode: the other ranks' rows are constants and only the local rows
    (put back in place) carry gradient, so the cross-rank gradient terms are dropped; the loss value is unchanged.
    """
    rank, world_size = distributed_world()
    if world_size == 1:
        return features, 0
    n = features.shape[0]
    if gather_with_grad:
        gathered = _AllGatherWithGrad.apply(features)
    else:
        parts = [torch.empty_like(features, memory_format=torch.contiguous_format) for _ in range(world_size)]
        dist.all_gather(parts, features.detach().contiguous())
        parts[rank] = features  # the local rows keep their graph
        gathered = torch.cat(parts, dim=0)
    return gathered, rank * n


def gather_labels(labels: torch.Tensor) -> torch.Tensor:
    """All-gather integer labels (n,) from every rank in rank order, without gradient: (world_size·n,). The identity
    on one process. The row order matches `gather_features`, so labels and features stay aligned."""
    _, world_size = distributed_world()
    if world_size == 1:
        return labels
    parts = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts, dim=0)
