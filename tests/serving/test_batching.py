"""maple.serving.batching.Batcher: batches form when the model is free, hold what queued meanwhile, and keep each
caller's result (and failure) its own."""

from __future__ import annotations

import asyncio

import pytest

from maple.serving.batching import Batcher


def run(coro):
    return asyncio.run(coro)


def test_calls_that_queue_while_the_model_runs_form_one_batch():
    """The defect of `@serve.batch` it replaces: while a batch runs, arrivals must wait for one batch, not be cut
    into many small ones on a timer."""
    batches: list[list[int]] = []
    released = asyncio.Event()  # the first batch runs until every later call has arrived (no timer to race)

    async def model(items):
        batches.append(list(items))
        await released.wait()
        return [i * 10 for i in items]

    async def main():
        batcher = Batcher(model, max_size=32, wait_s=0.001)
        first = asyncio.create_task(batcher(0))
        while not batches:  # the first batch is running
            await asyncio.sleep(0.001)
        rest = []
        for i in range(1, 21):
            rest.append(asyncio.create_task(batcher(i)))
            await asyncio.sleep(0.001)  # arrivals spread over 20 ms or more, longer than wait_s
        released.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(main())
    assert first == 0 and rest == [i * 10 for i in range(1, 21)]
    assert batches == [[0], list(range(1, 21))]


def test_a_batch_holds_at_most_max_size_counted_by_size_of_in_arrival_order():
    batches = []

    async def model(chunks):
        batches.append([len(c) for c in chunks])
        await asyncio.sleep(0.01)
        return [sum(c) for c in chunks]

    async def main():
        batcher = Batcher(model, max_size=5, wait_s=0.05, size_of=len)
        chunks = [[1, 2], [3, 4, 5], [6], [7, 8, 9, 10, 11, 12], [13]]
        return await asyncio.gather(*(batcher(c) for c in chunks))

    assert run(main()) == [3, 12, 6, 57, 13]
    # 2 + 3 fill the first batch; a chunk larger than max_size runs alone
    assert batches == [[2, 3], [1], [6], [1]]


def test_a_lone_call_waits_at_most_wait_s():
    async def model(items):
        return items

    async def main():
        batcher = Batcher(model, max_size=32, wait_s=0.02)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher("x")
        return loop.time() - start

    assert 0.015 <= run(main()) < 0.2


def test_a_failing_batch_fails_its_callers_only_and_the_next_batch_runs():
    async def model(items):
        if "bad" in items:
            raise ValueError("model broke")
        await asyncio.sleep(0.01)
        return [s.upper() for s in items]

    async def main():
        batcher = Batcher(model, max_size=2, wait_s=0.01)
        return await asyncio.gather(batcher("bad"), batcher("ok"), batcher("fine"), return_exceptions=True)

    broken, same_batch, later = run(main())
    assert isinstance(broken, ValueError) and isinstance(same_batch, ValueError) and later == "FINE"


def test_a_wrong_number_of_results_is_an_error_not_a_silent_mismatch():
    async def model(items):
        return items[:-1]

    async def main():
        batcher = Batcher(model, max_size=4, wait_s=0.01)
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) and "2 items" in str(r) for r in run(main()))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_size >= 1"):
        Batcher(lambda items: items, max_size=0, wait_s=0.01)
