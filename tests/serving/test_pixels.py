"""The decoded-pixel budget of a replica (maple.serving.pixels): requests wait for their share, never overdraw it,
and give it back whatever happens."""

from __future__ import annotations

import asyncio

import pytest

from maple.serving.errors import ApiError
from maple.serving.pixels import PixelBudget


def test_a_request_waits_until_the_pixels_it_needs_are_released():
    async def run():
        budget, order = PixelBudget(capacity=100, wait_s=5), []
        first_holds, release_first = asyncio.Event(), asyncio.Event()

        async def first():
            async with budget.reserve(60):
                order.append(("first holds", budget.held))
                first_holds.set()
                await release_first.wait()
            order.append(("first released", budget.held))

        async def second():
            await first_holds.wait()
            waiting = asyncio.ensure_future(_hold(budget, 60, order))
            await asyncio.sleep(0)  # let it reach the wait; 60 + 60 > 100
            order.append(("second waiting", waiting.done()))
            release_first.set()
            await waiting

        await asyncio.gather(first(), second())
        return order, budget.held

    order, held = asyncio.run(run())
    assert order == [("first holds", 60), ("second waiting", False), ("first released", 0),
                     ("second holds", 60)]
    assert held == 0


async def _hold(budget, pixels, order):
    async with budget.reserve(pixels):
        order.append(("second holds", budget.held))


def test_more_pixels_than_the_replica_holds_is_413_at_once():
    async def run():
        async with PixelBudget(capacity=100, wait_s=5).reserve(101):
            pass

    with pytest.raises(ApiError) as info:
        asyncio.run(run())
    assert (info.value.status, info.value.code) == (413, "too_many_pixels")


def test_a_request_that_waits_too_long_is_503_and_holds_nothing():
    async def run():
        budget = PixelBudget(capacity=100, wait_s=0.05)
        async with budget.reserve(80):
            with pytest.raises(ApiError) as info:
                async with budget.reserve(30):
                    pass
            assert budget.held == 80
        return info.value, budget.held

    error, held = asyncio.run(run())
    assert (error.status, error.code, held) == (503, "server_busy", 0)


def test_pixels_are_given_back_when_the_request_fails():
    async def run():
        budget = PixelBudget(capacity=100, wait_s=1)
        with pytest.raises(RuntimeError):
            async with budget.reserve(70):
                raise RuntimeError("the model failed")
        return budget.held

    assert asyncio.run(run()) == 0
