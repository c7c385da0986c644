"""What `listen --inspect` keeps per request: its rows are bounded by their bodies, not by what the
receiver parsed out of them, and a kept live row still shows everything a detail needs."""

from __future__ import annotations

import gc
import http.client
import json
import sys
import time
import tracemalloc

from inspera_cli.signing import sign
from tests.inspecting import SECRET, call, inspecting


def _post(port: int, bodies: list[bytes]) -> list[int]:
    """POST each body, signed, over one keep-alive connection; the statuses."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    statuses = []
    try:
        for body in bodies:
            connection.request("POST", "/", body, {"Content-Type": "application/json",
                                                   "X-Inspera-Signature": sign(body, SECRET)})
            answer = connection.getresponse()
            answer.read()
            statuses.append(answer.status)
    finally:
        connection.close()
    return statuses


def test_a_kept_row_holds_its_body_once_not_its_parsed_payload_as_well() -> None:
    # A 1 MiB JSON body whose payload is one long string: a row that kept the receiver's parsed
    # payload held every body twice (1,000 such rows: 165 MiB resident where 104 MiB now).
    pad = "p" * ((1 << 20) - 200)
    bodies = [json.dumps({"contextObjectId": n, "event": "confirm_final_grades",
                          "timestamp": "2024-05-01T12:00:00Z", "pad": pad}).encode() for n in range(80)]
    with inspecting(keep=1000) as (listener, inspector):
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            assert _post(listener.port, bodies) == [200] * len(bodies)
            deadline = time.monotonic() + 5
            while inspector.store.last_id < len(bodies) and time.monotonic() < deadline:
                time.sleep(0.02)
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        kept = len(inspector.store)
        detail = call(inspector, "GET", f"/api/requests/{inspector.store.last_id}").json
    assert 32 <= kept < len(bodies)  # the 64 MiB bound on bodies, not the count, dropped the oldest
    bodies_kept = kept * len(bodies[0])
    assert held < bodies_kept * 1.2, f"{held >> 20} MiB held for {bodies_kept >> 20} MiB of bodies"
    assert detail["format"] == "json" and detail["payload"]["pad"] == pad  # parsed again when asked
    assert detail["payload"]["contextObjectId"] == len(bodies) - 1


def test_a_live_row_keeps_every_header_and_the_answer_as_they_went() -> None:
    body = json.dumps({"contextObjectId": 7, "event": "confirm_final_grades"}).encode()
    with inspecting() as (listener, inspector):
        connection = http.client.HTTPConnection("127.0.0.1", listener.port, timeout=10)
        connection.putrequest("POST", "/", skip_accept_encoding=True)
        for name, value in (("Content-Type", "application/json"), ("X-Repeated", "one"),
                            ("X-Inspera-Signature", sign(body, SECRET)), ("X-Repeated", "two"),
                            ("Content-Length", str(len(body)))):
            connection.putheader(name, value)
        connection.endheaders(body)
        assert connection.getresponse().status == 200
        connection.close()
        deadline = time.monotonic() + 5
        while inspector.store.last_id < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        detail = call(inspector, "GET", "/api/requests/1").json
    names = [name for name, _ in detail["requestHeaders"]]
    assert names == ["Host", "Content-Type", "X-Repeated", "X-Inspera-Signature", "X-Repeated",
                     "Content-Length"]
    assert [value for name, value in detail["requestHeaders"] if name == "X-Repeated"] == ["one", "two"]
    assert detail["headers"]["X-Repeated"] == "one, two"
    assert detail["answer"]["status"] == 200 and detail["answer"]["body"] == "OK\n"
    assert ["Content-Type", "text/plain; charset=utf-8"] in detail["answer"]["headers"]
    assert detail["signature"] == "valid" and detail["payload"] == {"contextObjectId": 7,
                                                                   "event": "confirm_final_grades"}


def test_kept_live_rows_drop_out_of_the_garbage_collectors_sight() -> None:
    """A kept row is a plain tuple of strings, numbers, bytes and tuples of them: the cyclic GC
    untracks it at its first collections, so a thousand kept rows are not traversed again at every
    collection as they age (kept as a NamedTuple, or holding enum members, a row stayed tracked:
    that was most of --inspect's cost in collections). Seen from outside: no tuple the GC tracks
    holds a kept row's body."""
    bodies = [json.dumps({"contextObjectId": n, "event": "confirm_final_grades"}).encode() for n in range(5)]
    with inspecting() as (listener, inspector):
        assert _post(listener.port, bodies) == [200] * len(bodies)
        deadline = time.monotonic() + 5
        while inspector.store.last_id < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(3):  # a row's inner tuples first, then the row
            gc.collect()
        kept = [inspector.store.get(n).body for n in range(1, len(bodies) + 1)]  # type: ignore[union-attr]
        holders = [r for body in kept for r in gc.get_referrers(body) if isinstance(r, tuple)]
        detail = call(inspector, "GET", "/api/requests/3").json
        listed = call(inspector, "GET", "/api/requests?signature=valid").json["requests"]
    assert kept == bodies
    assert holders == []
    assert detail["signature"] == "valid" and detail["payload"]["contextObjectId"] == 2
    assert [row["contextObjectId"] for row in listed] == [4, 3, 2, 1, 0]


def test_a_kept_live_row_is_three_objects_not_one_per_header() -> None:
    """Rows are kept long after the request: every object a row holds is freed a thousand requests
    later, out of the CPU's cache (keeping the parser's pair of strings per header, some 26 memory
    blocks a row, cost the loop about 2 µs a request in freeing alone; nine blocks, 7 µs with the
    rest under wrk). Now three: the row, one string of the request's own strings, the body. The
    measure also counts the block a request that any listener keeps without --inspect: the digest
    of its body, remembered to number retries (up to 200,000 of them)."""
    bodies = [json.dumps({"contextObjectId": n, "event": "confirm_final_grades"}).encode()
              for n in range(500)]
    with inspecting(keep=1000) as (listener, inspector):
        assert _post(listener.port, bodies[:100]) == [200] * 100  # connections, caches: warm
        deadline = time.monotonic() + 5
        while inspector.store.last_id < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        gc.collect()
        before = sys.getallocatedblocks()
        assert _post(listener.port, bodies[100:]) == [200] * 400
        while inspector.store.last_id < 500 and time.monotonic() < deadline + 5:
            time.sleep(0.02)
        gc.collect()
        per_row = (sys.getallocatedblocks() - before) / 400
        detail = call(inspector, "GET", "/api/requests/500").json
    assert per_row < 4.5, f"{per_row:.1f} memory blocks kept per row (3 are the row's)"
    assert [name for name, _ in detail["requestHeaders"]] == [
        "Host", "Accept-Encoding", "Content-Length", "Content-Type", "X-Inspera-Signature"]
