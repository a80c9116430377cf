"""Dynamic batching for the model replicas: concurrent calls share one model call, formed when the model is free.

Why not `@serve.batch`: Ray Serve 2.60's batch loop forms a batch from whatever arrived within `batch_wait_timeout_s`
and queues it behind the running one (`max_concurrent_batches`), then forms the next at once. While the model is busy,
requests are cut into many small batches that wait in line, instead of one large batch taken when the model frees
up. Measured with the `base` embedder and 32 closed-loop clients on 2 cores: batches of 1.8 inputs, 34 requests/s;
with this batcher, docs/benchmarks/serving.md. No Ray here; the replicas in serve/app.py own one each.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """`await batcher(item)` -> that item's result of `run(batch)`, one `run` at a time.

    A batch is formed when `run` is free: everything queued since the last one, in arrival order, up to `max_size`
    (counted by `size_of`; an item larger than `max_size` alone is a batch of its own). When the queue was empty, the
    first arrival waits up to `wait_s` for company, so that light load costs at most `wait_s` of latency and heavy load
    none (the queue fills while the previous batch runs). `run` returns one result per item, in order; if it raises,
    every item of that batch gets the exception (make `run` isolate its items where one must not fail the others).
    """

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]], max_size: int, wait_s: float,
                 size_of: Callable[[Item], int] = lambda item: 1):
        if max_size < 1 or wait_s < 0:
            raise ValueError(f"Batcher needs max_size >= 1 and wait_s >= 0; got {max_size} and {wait_s}")
        self.run, self.max_size, self.wait_s, self.size_of = run, max_size, wait_s, size_of
        self._queue: deque[tuple[Item, asyncio.Future]] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    async def __call__(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._serve())
        future = loop.create_future()
        self._queue.append((item, future))
        self._arrived.set()
        return await future

    def _take(self) -> list[tuple[Item, asyncio.Future]]:
        batch, size = [], 0
        while self._queue:
            n = self.size_of(self._queue[0][0])
            if batch and size + n > self.max_size:
                break
            batch.append(self._queue.popleft())
            size += n
        return batch

    def _queued_size(self) -> int:
        return sum(self.size_of(item) for item, _ in self._queue)

    async def _serve(self) -> None:
        idle = True  # the worker starts on the first arrival
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
                idle = True
            if idle:
                await self._gather_company()
            idle = False
            batch = [(item, future) for item, future in self._take() if not future.cancelled()]
            if not batch:
                continue
            try:
                results = await self.run([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # noqa: BLE001 - handed to the callers of this batch, the worker goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    async def _gather_company(self) -> None:
        """The first item after an idle spell waits up to `wait_s` for others, or until a batch is full."""
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while self._queued_size() < self.max_size:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return
