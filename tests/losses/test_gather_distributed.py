"""The gathered InfoNCE on 2 processes (gloo) equals one process holding the whole batch: value and gradients, with
one softmax per direction (groups) and rows sharing a query or a positive kept out of each other's denominators (keys
gathered across ranks with the rows).

Each rank embeds its half of the batch with the same small model; parameter gradients are averaged across ranks as
DDP and DeepSpeed do, then compared with the single-process step.
"""

import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from maple.losses.gather import gather_features
from maple.losses.infonce import infonce_loss

WORLD_SIZE, N, K, D_IN, D = 2, 6, 2, 5, 4
# Over the global batch: directions, and keys with a shared query (rows 1, 4) and a shared positive (rows 0, 5)
# that lie on different ranks, so only the gathered keys can mask them.
GROUPS = torch.tensor([0, 1, 0, 1, 1, 0])
QUERY_KEYS = torch.tensor([10, 11, 12, 13, 11, 15])
CANDIDATE_KEYS = torch.tensor([20, 21, 22, 23, 24, 20])


def _setup():
    """The model, the temperature and the full batch; identical in every process."""
    torch.manual_seed(0)
    model = torch.nn.Linear(D_IN, D).double()
    logit_scale = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    batch = [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((N, D_IN), (N, D_IN), (N, K, D_IN))]
    return model, logit_scale, batch


def _step(model, logit_scale, query, candidate, hard, local_loss, rows=slice(None)):
    loss = infonce_loss(model(query), model(candidate), logit_scale, hard_negatives=model(hard), local_loss=local_loss,
                        groups=GROUPS[rows], query_keys=QUERY_KEYS[rows], candidate_keys=CANDIDATE_KEYS[rows])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in (*model.parameters(), logit_scale)]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=30)
    )
    try:
        n = N // WORLD_SIZE
        rows = slice(rank * n, (rank + 1) * n)
        results = {}
        _, _, (query, _, _) = _setup()
        results["gathered"], results["offset"] = gather_features(query[rows])
        results["gathered_without_grad"], _ = gather_features(query[rows], gather_with_grad=False)
        # a transposed (non-contiguous) upstream gradient: each rank's rows must get the sum of both ranks' gradients
        local = query[rows].clone().requires_grad_()
        weights = torch.arange(N * D_IN, dtype=torch.float64).reshape(D_IN, N).T
        (gather_features(local)[0] * weights).sum().backward()
        results["local_grad"] = local.grad
        for local_loss in (False, True):
            model, logit_scale, (query, candidate, hard) = _setup()
            loss, grads = _step(model, logit_scale, query[rows], candidate[rows], hard[rows], local_loss, rows)
            for grad in grads:  # what DDP / DeepSpeed do to parameter gradients
                dist.all_reduce(grad)
                grad /= WORLD_SIZE
            mean_loss = loss.clone()
            dist.all_reduce(mean_loss)
            results[local_loss] = {"loss": loss, "mean_loss": mean_loss / WORLD_SIZE, "grads": grads}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("gather")
    context = mp.start_processes(
        _worker, args=(_free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 60
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError("the 2-process gloo workers did not finish within 60 s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process() -> dict:
    results = {}
    for local_loss in (False, True):
        model, logit_scale, (query, candidate, hard) = _setup()
        loss, grads = _step(model, logit_scale, query, candidate, hard, local_loss)
        results[local_loss] = {"loss": loss, "grads": grads}
    return results


def test_gather_features_is_the_identity_without_a_process_group():
    features = torch.randn(3, 4)
    gathered, offset = gather_features(features)
    assert gathered is features and offset == 0


def test_gather_features_concatenates_ranks_in_order_with_the_local_offset(ranks):
    _, _, (query, _, _) = _setup()
    for rank, result in enumerate(ranks):
        assert torch.equal(result["gathered"], query)
        assert result["offset"] == rank * (N // WORLD_SIZE)


def test_gather_features_without_grad_gathers_the_same_rows(ranks):
    for result in ranks:
        torch.testing.assert_close(result["gathered_without_grad"], result["gathered"], atol=0, rtol=0)


def test_gather_features_backward_sums_every_ranks_gradient_even_when_non_contiguous(ranks):
    weights = torch.arange(N * D_IN, dtype=torch.float64).reshape(D_IN, N).T
    n = N // WORLD_SIZE
    for rank, result in enumerate(ranks):
        torch.testing.assert_close(
            result["local_grad"], WORLD_SIZE * weights[rank * n : (rank + 1) * n], atol=0, rtol=0
        )


def test_gathered_infonce_value_equals_single_process_on_every_rank(ranks, single_process):
    for result in ranks:
        assert result[False]["loss"].item() == pytest.approx(single_process[False]["loss"].item(), abs=1e-9)


def test_local_loss_infonce_averaged_over_ranks_equals_single_process(ranks, single_process):
    assert ranks[0][True]["mean_loss"].item() == pytest.approx(single_process[True]["loss"].item(), abs=1e-9)


@pytest.mark.parametrize("local_loss", [False, True], ids=["global_loss", "local_loss"])
def test_gathered_infonce_rank_averaged_gradients_equal_single_process(ranks, single_process, local_loss):
    for result in ranks:
        for got, want in zip(result[local_loss]["grads"], single_process[local_loss]["grads"], strict=True):
            torch.testing.assert_close(got, want, atol=1e-9, rtol=0)
