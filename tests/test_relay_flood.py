"""While events flood in, each delivery lane keeps one POST in flight and starts one at most every
FLOOD_PACE (acknowledging comes first); otherwise --concurrency; either way every event is
delivered, and full concurrency returns once the flood is over."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inspera_cli.relay.delivery import BURST_EVENTS, BURST_WINDOW, FLOOD_PACE, DeliveryEngine
from inspera_cli.relay.observe import Metrics
from inspera_cli.relay.queue import NewEvent, SQLiteQueue
from inspera_cli.relay.schedule import RetryPolicy, SystemClock
from inspera_cli.relay.worker import QueueWorker
from tests.relay_harness import AppStub, event_body

pytestmark = pytest.mark.timeout(60)
DELAY = 0.2  # the app's answer time: sequential POSTs are at least this far apart
EVENTS = 8


@contextlib.asynccontextmanager
async def delivering(path: Path, app: AppStub, events: int, *, flooded: bool = False
                     ) -> AsyncIterator[DeliveryEngine]:
    """A delivery engine (--concurrency 4) running on ``events`` queued events for ``app``; with
    ``flooded``, told of a flood before it starts."""
    queue = SQLiteQueue(path, create=True)
    now = time.time()
    queue.enqueue([NewEvent(event_body(n), app.url, "e", n) for n in range(events)], now=now, dedupe_since=0)
    worker = QueueWorker(queue, asyncio.get_running_loop(), lambda q, events: [])
    engine = DeliveryEngine(worker, [app.url], concurrency=4, retry=RetryPolicy(), clock=SystemClock(),
                            metrics=Metrics())
    if flooded:
        for _ in range(BURST_EVENTS):
            engine.received(app.url)
    running = asyncio.create_task(engine.run())
    try:
        yield engine
    finally:
        engine.stop_starting()
        await engine.finish(5)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        worker.close()
        queue.close()


async def deliver_all(path: Path, app: AppStub, *, flood: bool, events: int = EVENTS) -> float:
    """Seconds to deliver ``events`` queued events with --concurrency 4, events flooding in or not."""
    async with delivering(path, app, events) as engine:
        started = time.monotonic()
        while len(app.taken()) < events:
            if flood:  # what RelayPolicy's commits tell the engine: BURST_EVENTS per window
                for _ in range(BURST_EVENTS):
                    engine.received(app.url)
            await asyncio.sleep(BURST_WINDOW / 2)
            assert time.monotonic() - started < 30, "not delivered"
        return time.monotonic() - started


@pytest.mark.parametrize("flood", [True, False], ids=["flood", "calm"])
def test_a_flood_leaves_one_delivery_in_flight_per_lane(tmp_path: Path, flood: bool) -> None:
    app = AppStub(delay=DELAY).start()
    try:
        seconds = asyncio.run(deliver_all(tmp_path / "q.sqlite", app, flood=flood))
    finally:
        app.stop()
    assert sorted(d.delivery_id for d in app.taken()) == sorted({d.delivery_id for d in app.taken()})
    if flood:
        assert seconds >= EVENTS * DELAY  # one at a time
    else:
        assert seconds < EVENTS * DELAY * 0.75  # four at a time: about a quarter of that




@pytest.mark.parametrize("flood", [True, False], ids=["flood", "calm"])
def test_a_flood_paces_the_deliveries_of_a_fast_app(tmp_path: Path, flood: bool) -> None:
    """An app that answers at once: in a flood its deliveries still start FLOOD_PACE apart (a
    trickle); when calm, four go at once."""
    app = AppStub().start()
    try:
        asyncio.run(deliver_all(tmp_path / "q.sqlite", app, flood=flood, events=12))
    finally:
        app.stop()
    taken = app.taken()
    assert len({d.delivery_id for d in taken}) == 12
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(taken)]
    if flood:  # a late answer may shorten one gap, not the whole run
        assert sum(gaps) >= 11 * FLOOD_PACE * 0.8, gaps
    else:
        assert min(gaps) < FLOOD_PACE / 2, gaps


def test_full_concurrency_returns_after_a_flood(tmp_path: Path) -> None:
    """Events flood in for a while, then stop: the rest go four at a time again (the pace timer
    does not leave the lane at one)."""

    async def scenario() -> list[float]:
        async with delivering(tmp_path / "q.sqlite", app, 40, flooded=True):
            started = time.monotonic()
            while len(app.taken()) < 40:
                await asyncio.sleep(0.01)
                assert time.monotonic() - started < 20, "not delivered"
            return [d.at - started for d in app.taken()]

    app = AppStub(delay=0.05).start()
    try:
        answered = asyncio.run(scenario())
    finally:
        app.stop()
    # One at a time while the flood lasts (BURST_WINDOW), then four at a time: 40 answers of an
    # app taking 50 ms each come in well under the 2 s that one at a time would take.
    assert answered[-1] < 40 * 0.05 * 0.6, answered
