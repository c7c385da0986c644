"""While events flood in, each delivery lane keeps one POST in flight (acknowledging comes first);
otherwise --concurrency; either way every event is delivered."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from inspera_cli.relay.delivery import BURST_EVENTS, BURST_WINDOW, DeliveryEngine
from inspera_cli.relay.observe import Metrics
from inspera_cli.relay.queue import NewEvent, SQLiteQueue
from inspera_cli.relay.schedule import RetryPolicy, SystemClock
from inspera_cli.relay.worker import QueueWorker
from tests.relay_harness import AppStub, event_body

pytestmark = pytest.mark.timeout(60)
DELAY = 0.2  # the app's answer time: sequential POSTs are at least this far apart
EVENTS = 8


async def deliver_all(path: Path, app: AppStub, *, flood: bool) -> float:
    """Seconds to deliver EVENTS queued events with --concurrency 4, events flooding in or not."""
    queue = SQLiteQueue(path, create=True)
    now = time.time()
    queue.enqueue([NewEvent(event_body(n), app.url, "e", n) for n in range(EVENTS)], now=now, dedupe_since=0)
    worker = QueueWorker(queue, asyncio.get_running_loop(), lambda q, events: [])
    engine = DeliveryEngine(worker, [app.url], concurrency=4, retry=RetryPolicy(), clock=SystemClock(),
                            metrics=Metrics())
    running = asyncio.create_task(engine.run())
    started = time.monotonic()
    try:
        while len(app.taken()) < EVENTS:
            if flood:  # what RelayPolicy's commits tell the engine: BURST_EVENTS per window
                for _ in range(BURST_EVENTS):
                    engine.received(app.url)
            await asyncio.sleep(BURST_WINDOW / 2)
            assert time.monotonic() - started < 30, "not delivered"
        return time.monotonic() - started
    finally:
        engine.stop_starting()
        await engine.finish(5)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        worker.close()
        queue.close()


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


