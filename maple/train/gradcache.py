"""GradCache: a large contrastive batch in the memory of a small one.

Gao, Zhang, Han, Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(arXiv 2101.06983). A contrastive loss couples every sample of the batch, so it cannot be split into independent
micro-batches; but its gradient factors through the embeddings: dL/dθ = Σ_i (dL/dz_i)(dz_i/dθ). So:

1. embed every chunk without a graph (no_grad), saving the RNG state before each chunk;
2. compute the loss on the full batch with the embeddings as leaf tensors, backward: the gradient cache dL/dz;
3. re-embed each chunk with a graph, under the saved RNG state (the same dropout masks), and backpropagate the
   cached gradient through it: backward of Σ z·(dL/dz).

Peak memory is one chunk's activations plus the batch's embeddings; the parameter gradients equal those of the
step that holds the whole batch's graph at once (with the same chunking of randomness).

    streams = [(model.encode_text, chunk_batch(texts, 32)), (model.encode_image, chunk_batch(images, 32))]
    out = gradcache_step(streams, lambda q, p: loss_fn(q, p))
    optimizer.step()
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import accumulate
from typing import Any

import torch

Encode = Callable[[Any], torch.Tensor]
LossFn = Callable[..., torch.Tensor | Mapping[str, torch.Tensor]]


class _RngState:
    """The CPU (and, when CUDA is in use, every GPU's) RNG state at one point, to replay a forward pass exactly."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )

    @contextmanager
    def replay(self) -> Iterator[None]:
        # fork_rng puts the global RNG back on exit: the replays leave it where the first pass left it, as the
        # full-batch step would
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def chunk_batch(batch: Any, chunk_size: int) -> list[Any]:
    """Split a batch along dim 0 into chunks of at most `chunk_size` rows: a tensor, a mapping of tensors (e.g. a
    tokenizer's BatchEncoding; each chunk is a plain dict, non-tensor values shared by every chunk) or a list."""
    if chunk_size < 1:
        raise ValueError(f"chunk_batch: chunk_size must be ≥ 1 (train.gradcache_chunk); got {chunk_size}")
    if isinstance(batch, torch.Tensor):
        return list(batch.split(chunk_size))
    if isinstance(batch, Mapping):
        sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor)}
        if len(sizes) != 1:
            raise ValueError(f"chunk_batch: the tensors of a mapping batch must share dim 0; got sizes {sorted(sizes)}")
        (n,) = sizes
        return [
            {k: v[i : i + chunk_size] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for i in range(0, n, chunk_size)
        ]
    if isinstance(batch, Sequence):
        return [batch[i : i + chunk_size] for i in range(0, len(batch), chunk_size)]
    raise TypeError(
        f"chunk_batch: cannot split a {type(batch).__name__}; pass a tensor, a mapping of tensors or a list"
    )


def _default_backward(tensor: torch.Tensor, is_last: bool) -> None:
    tensor.backward()


def gradcache_step(
    streams: Sequence[tuple[Encode, Sequence[Any]]],
    loss_fn: LossFn,
    *,
    backward: Callable[[torch.Tensor, bool], None] = _default_backward,
) -> dict[str, torch.Tensor]:
    """One GradCache forward/backward; accumulates parameter gradients (the caller steps the optimizer).

    streams: one `(encode, chunks)` per input (query, positive, hard negatives, ...): `encode(chunk)` returns that
        chunk's embeddings (n_chunk, ...); a stream's chunk embeddings are concatenated along dim 0. Every encoder
        must have trainable parameters; embed a frozen tower under no_grad yourself and close over it in loss_fn.
    loss_fn: called as `loss_fn(*embeddings)`, one full-batch tensor per stream, in order; returns the loss or a
        dict with "loss" (e.g. `MapleLoss`'s output). Parameters of the loss itself (the temperature) get their
        gradient from the loss backward.
    backward: `backward(scalar, is_last)` runs every backward: the loss first, then one surrogate per chunk;
        is_last is True only for the final one (where DDP should all-reduce or DeepSpeed close the accumulation
        boundary). Default: `scalar.backward()`.
    Returns the loss terms, detached: `{"loss": ..., ...}`.
    """
    # 1. embed without a graph, remembering the RNG state each chunk started from
    rng_states: list[list[_RngState]] = []
    row_offsets: list[list[int]] = []  # first row of each chunk in its stream's full-batch embeddings
    embeddings: list[torch.Tensor] = []
    with torch.no_grad():
        for encode, chunks in streams:
            if len(chunks) == 0:
                raise ValueError("gradcache_step: a stream has no chunks")
            states, parts = [], []
            for chunk in chunks:
                states.append(_RngState())
                parts.append(encode(chunk))
            rng_states.append(states)
            row_offsets.append([0, *accumulate(p.shape[0] for p in parts[:-1])])
            embeddings.append(torch.cat(parts, dim=0))
            del parts

    # 2. the full-batch loss on leaf embeddings: its backward fills the gradient cache dL/dz
    leaves = [e.detach().requires_grad_() for e in embeddings]
    out = loss_fn(*leaves)
    terms = {"loss": out} if isinstance(out, torch.Tensor) else dict(out)
    if "loss" not in terms:
        raise ValueError(f"gradcache_step: loss_fn returned a dict without 'loss' (keys: {sorted(terms)})")
    backward(terms["loss"], False)

    # 3. replay each chunk with a graph under its saved RNG state and push the cached gradient through it
    replays = [
        (s, c) for s, (_, chunks) in enumerate(streams) for c in range(len(chunks)) if leaves[s].grad is not None
    ]
    if not replays:
        raise ValueError("gradcache_step: the loss does not depend on any stream's embeddings")
    for done, (s, c) in enumerate(replays, start=1):
        encode, chunks = streams[s]
        with rng_states[s][c].replay():
            z = encode(chunks[c])
        if not z.requires_grad:
            raise ValueError(
                f"gradcache_step: stream {s}'s encoder produced no gradient (frozen?); embed a frozen tower under "
                f"no_grad outside gradcache_step and close over it in loss_fn"
            )
        start = row_offsets[s][c]
        cached = leaves[s].grad[start : start + z.shape[0]]
        backward((z * cached.to(z.dtype)).sum(), done == len(replays))
    return {k: v.detach() for k, v in terms.items()}
