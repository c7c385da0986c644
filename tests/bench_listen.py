"""Throughput of `inspera-hooks listen --record` against a bare ThreadingHTTPServer.

    python tests/bench_listen.py [EVENTS] [CONNECTIONS]      (defaults: 20000 32)

Drives the same load -- signed events over concurrent HTTP/1.1 keep-alive connections on
127.0.0.1 -- first at a bare `http.server.ThreadingHTTPServer` that only answers 200, then at
`inspera-hooks listen --secret-env ... --record FILE` (a subprocess, human output piped), and
prints both throughputs, their ratio and p50/p99 latencies. Then it checks that every event was
answered 200 and recorded exactly once. The target is a ratio of at least 0.8. Not a pytest test.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from inspera_cli.signing import sign

SECRET = "bench-secret-0123456789abcdef"

BARE_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body, sent apart, wait for delayed ACKs

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"OK\n")

    def log_message(self, *args):  # a fair baseline: no per-request logging
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(f"Ready: http://127.0.0.1:{server.server_address[1]}/", file=sys.stderr, flush=True)
server.serve_forever()
"""


def build_requests(count: int, port: int, first_id: int) -> list[bytes]:
    requests = []
    for i in range(count):
        body = json.dumps(
            {
                "contextObjectId": first_id + i,
                "event": "confirm_final_grades",
                "timestamp": "2024-05-01T12:00:00Z",
            }
        ).encode()
        head = (
            f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"X-Inspera-Signature: {sign(body, SECRET)}\r\nUser-Agent: Apache-HttpClient/4.5\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode() + body)
    return requests


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as the last is answered."""

    def __init__(self, work: list[bytes], results: list[tuple[int, float]], done: asyncio.Future):
        self.work, self.results, self.done = work, results, done
        self.buffer = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send_next(self) -> None:
        assert self.transport is not None
        if not self.work:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.work.pop())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            status = int(head.split(" ", 2)[1])
            self.results.append((status, time.perf_counter() - self.sent_at))
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self.work:
                self.done.set_exception(ConnectionError(f"connection lost: {exc}"))
            else:
                self.done.set_result(None)


async def drive(port: int, requests: list[bytes], connections: int) -> tuple[float, list]:
    loop = asyncio.get_running_loop()
    shares = [requests[i::connections] for i in range(connections)]
    results: list[tuple[int, float]] = []
    futures = []
    connections_made = []
    for share in shares:
        share.reverse()  # pop() from the end sends them in order
        done = loop.create_future()
        futures.append(done)
        _, protocol = await loop.create_connection(
            lambda share=share, done=done: _Connection(share, results, done), "127.0.0.1", port
        )
        connections_made.append(protocol)
    # Connect first, then start the clock: steady-state throughput, not accept-queue luck.
    start = time.perf_counter()
    for protocol in connections_made:
        protocol.send_next()
    await asyncio.gather(*futures)
    return time.perf_counter() - start, results


def start_server(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("Ready:"):
            port = int(line.split()[1].rstrip("/").rsplit(":", 1)[1].split("/")[0])
            return proc, port
    raise SystemExit(f"server did not start: {args}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def run(label: str, args: list[str], env: dict[str, str], count: int, connections: int,
        first_id: int) -> tuple[float, list[tuple[int, float]]]:
    proc, port = start_server(args, env)
    try:
        requests = build_requests(count, port, first_id)
        elapsed, results = asyncio.run(drive(port, requests, connections))
    finally:
        stop_server(proc)
    rate = len(results) / elapsed
    latencies = [latency for _, latency in results]
    print(
        f"{label:>9}: {rate:8.0f} req/s  ({len(results)} in {elapsed:.2f} s)  "
        f"p50 {percentile(latencies, 0.50):.2f} ms  p99 {percentile(latencies, 0.99):.2f} ms"
    )
    return rate, results


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    connections = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    env = {**os.environ, "BENCH_SECRET": SECRET}
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "events.jsonl"
        print(f"{count} signed events over {connections} keep-alive connections, 127.0.0.1")
        bare_rate, _ = run("bare", [sys.executable, "-c", BARE_SERVER], env, count, connections, 0)
        listen = [sys.executable, "-m", "inspera_cli", "listen", "--port", "0",
                  "--secret-env", "BENCH_SECRET", "--record", str(record)]
        listen_rate, results = run("listen", listen, env, count, connections, 1_000_000)
        print(f"    ratio: {listen_rate / bare_rate:.2f}  (listen / bare; target >= 0.8)")

        statuses = Counter(status for status, _ in results)
        ids = Counter(json.loads(line)["contextObjectId"] for line in record.open())
        expected = set(range(1_000_000, 1_000_000 + count))
        once = set(ids) == expected and all(n == 1 for n in ids.values())
        print(f" answers: {dict(statuses)}")
        print(f"recorded: {sum(ids.values())} lines, every event exactly once: {once}")
        ok = once and statuses == Counter({200: count}) and listen_rate >= 0.8 * bare_rate
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
