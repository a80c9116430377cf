"""The decoded-pixel budget of one ingress replica: requests hold the pixels of their images while they are decoded
and embedded, and wait for their share when the replica is full. No Ray here.

Why pixels and not bytes: a 4000x4000 PNG of one colour is a 75 KB data URL that decodes to 48 MB of RGB, so 256 of
them fit in a 32 MB body and would decode to ~13 GB. The per-request limit (`max_request_pixels`, from the headers,
before decoding) refuses such a request outright; this budget bounds what many admissible requests decode at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from maple.serving.errors import ApiError


class PixelBudget:
    """At most `capacity` decoded pixels held at once by the requests of this replica (one event loop)."""

    def __init__(self, capacity: int, wait_s: float):
        self.capacity, self.wait_s = capacity, wait_s
        self.held = 0
        self._released = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, pixels: int) -> AsyncIterator[None]:
        """Hold `pixels` for the block; wait while the replica holds too many; 503 after `wait_s`."""
        if pixels > self.capacity:  # the config nests request <= replica limits; this guards a direct caller
            raise ApiError(413, f"the request's images hold {pixels} pixels, more than this replica decodes at once "
                                f"({self.capacity}, serve.max_replica_pixels)", "too_many_pixels", "input")
        if pixels <= 0:
            yield
            return
        async with self._released:
            if self.held + pixels > self.capacity:
                try:
                    await asyncio.wait_for(self._released.wait_for(lambda: self.held + pixels <= self.capacity),
                                           self.wait_s)
                except TimeoutError:
                    raise ApiError(503, f"the server is busy decoding other images ({self.held} of "
                                        f"{self.capacity} pixels held for {self.wait_s:.0f} s); retry later",
                                   "server_busy") from None
            self.held += pixels
        try:
            yield
        finally:
            async with self._released:
                self.held -= pixels
                self._released.notify_all()
