"""Throughput and tail latency of `inspera-hooks listen`, side by side with other receivers.

    python tests/bench_listen.py [--duration S] [--repeat N] [--generator wrk|python] [--events N]

In one go, each at 32 and 256 keep-alive connections on 127.0.0.1, with signed Inspera events:

- `listen --secret-env ...` (human lines to a pipe that is read, as in a terminal)
- `listen --secret-env ... --record FILE`
- `listen --secret-env ... --inspect` with the page open: a client reading `/api/stream` (the
  server-sent events the page gets) for the whole run
- a bare `http.server.ThreadingHTTPServer` that only answers 200
- a uvicorn[standard] + starlette app that verifies the HMAC-SHA1 signature (`pip install -e '.[bench]'`;
  skipped with a note when not installed)

Load comes from wrk when it is on PATH (C, one thread: one core for the generator, the other for
the receiver on a 2-core machine), else from a Python asyncio generator; the output says which.
Then it checks, with a fixed number of distinct events, that every event `listen --record`
acknowledged is recorded exactly once. Prints req/s, p99 and the ratios the issue sets goals for:

    listen >= 1.0 x uvicorn+starlette at 32 connections; listen p99 <= 100 ms at 256;
    --record >= 0.8 x listen without it; --inspect with the page open >= 0.9 x listen;
    every acknowledged event recorded exactly once.

Compare ratios within one run: other work on the machine moves absolute numbers. Not a pytest test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from inspera_cli.signing import sign

SECRET = "bench-secret-0123456789abcdef"
CONNECTIONS = (32, 256)

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
server.request_queue_size = 1024
print(f"Ready: http://127.0.0.1:{server.server_address[1]}/", file=sys.stderr, flush=True)
server.serve_forever()
"""

STARLETTE_APP = r"""
import hashlib, hmac, os, socket, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

KEY = os.environ["BENCH_SECRET"].encode()

async def hook(request):
    body = await request.body()
    given = request.headers.get("x-inspera-signature", "").lower()
    if not hmac.compare_digest(given, hmac.new(KEY, body, hashlib.sha1).hexdigest()):
        return PlainTextResponse("invalid signature\n", status_code=401)
    return PlainTextResponse("OK\n")

app = Starlette(routes=[Route("/", hook, methods=["POST"])])
sock = socket.socket()
# Accepted sockets inherit TCP_NODELAY on Linux. Without it, uvicorn's head and body writes meet
# Nagle and delayed ACKs: 40 ms per answer on a keep-alive connection.
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(1024)
print(f"Ready: http://127.0.0.1:{sock.getsockname()[1]}/", file=sys.stderr, flush=True)
uvicorn.run(app, fd=sock.fileno(), log_level="warning", access_log=False, loop="uvloop",
            http="httptools", backlog=1024)
"""


# A page left open: reads the inspector's event stream to the end, then says how many rows it got.
STREAM_READER = r"""
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{sys.argv[1]}\r\n\r\n".encode())
tail, rows, gaps = b"", 0, 0
while data := sock.recv(1 << 16):
    data = tail + data
    rows += data.count(b"event: request\n")
    gaps += data.count(b"event: gap\n")
    tail = data[-32:]
    rows -= tail.count(b"event: request\n")
    gaps -= tail.count(b"event: gap\n")
rows += tail.count(b"event: request\n")
gaps += tail.count(b"event: gap\n")
print(f"{rows} rows, {gaps} gaps", flush=True)
"""


def signed_request(port: int, object_id: int) -> bytes:
    body = json.dumps(
        {"contextObjectId": object_id, "event": "confirm_final_grades", "timestamp": "2024-05-01T12:00:00Z"}
    ).encode()
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-Inspera-Signature: {sign(body, SECRET)}\r\nUser-Agent: Apache-HttpClient/4.5\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- servers ---------------------------------------------------------------------------------------


class Server:
    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        # Read what the server prints, as a terminal would (a pipe nobody reads would fill up).
        self.out = threading.Thread(target=lambda s=self.proc.stdout: [None for _ in s], daemon=True)
        self.out.start()
        self.port = self.inspect_port = 0
        for line in self.proc.stderr:
            if line.startswith("Ready:"):
                self.port = port_of(line)
                if "--inspect" not in args:
                    break
            elif line.startswith("Inspect:"):
                self.inspect_port = port_of(line)
                break
        if not self.port:
            raise SystemExit(f"server did not start: {args}")
        self.page: subprocess.Popen[str] | None = None
        if self.inspect_port:
            self.page = subprocess.Popen([sys.executable, "-c", STREAM_READER, str(self.inspect_port)],
                                         stdout=subprocess.PIPE, text=True)
        self.err = threading.Thread(target=lambda s=self.proc.stderr: [None for _ in s], daemon=True)
        self.err.start()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.page is not None:
            got, _ = self.page.communicate(timeout=30)
            print(f"    the open page was sent {got.strip()}")


def port_of(line: str) -> int:
    return int(line.split()[1].rstrip("/").rsplit(":", 1)[1].split("/")[0])


# -- load generators -------------------------------------------------------------------------------


def lua_string(data: bytes) -> str:
    text = data.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r", "\\r").replace("\n", "\\n") + '"'


def wrk(port: int, connections: int, duration: float, first_id: int, tmp: Path) -> tuple[float, float]:
    """req/s and p99 (ms) from wrk, cycling through 20,000 distinct signed events."""
    script = tmp / "requests.lua"
    pool = ",\n".join(lua_string(signed_request(port, first_id + i)) for i in range(20_000))
    script.write_text(
        f"local pool = {{\n{pool}\n}}\nlocal n = 0\n"
        "function request()\n  n = n + 1\n  return pool[(n % #pool) + 1]\nend\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    if "Non-2xx" in out:
        print(f"    note: {re.search(r'Non-2xx.*', out).group(0)}")  # type: ignore[union-attr]
    return rate, p99


class _Connection(asyncio.Protocol):
    """One keep-alive connection sending its next request as soon as the last is answered."""

    def __init__(self, work: list[bytes], results: list[tuple[int, float]], done: asyncio.Future,
                 until: float) -> None:
        self.work, self.results, self.done, self.until = work, results, done, until
        self.buffer = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send_next(self) -> None:
        assert self.transport is not None
        if not self.work or time.perf_counter() > self.until:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.work.pop())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].decode("latin-1")
            length = int(re.search(r"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.results.append((int(head.split(" ", 2)[1]), time.perf_counter() - self.sent_at))
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def drive(port: int, requests: list[bytes], connections: int, duration: float
                ) -> tuple[float, list[tuple[int, float]]]:
    loop = asyncio.get_running_loop()
    results: list[tuple[int, float]] = []
    protocols, futures = [], []
    until = time.perf_counter() + 3600
    for i in range(connections):
        share = requests[i::connections][::-1]  # pop() from the end sends them in order
        done = loop.create_future()
        _, protocol = await loop.create_connection(
            lambda s=share, d=done: _Connection(s, results, d, until), "127.0.0.1", port
        )
        protocols.append(protocol)
        futures.append(done)
    start = time.perf_counter()  # connect first, then start the clock
    for protocol in protocols:
        protocol.until = start + duration
        protocol.send_next()
    await asyncio.gather(*futures)
    return time.perf_counter() - start, results


def python_load(port: int, connections: int, duration: float, first_id: int) -> tuple[float, float]:
    requests = [signed_request(port, first_id + i) for i in range(int(60_000 * duration))]
    elapsed, results = asyncio.run(drive(port, requests, connections, duration))
    latencies = sorted(latency for _, latency in results)
    return len(results) / elapsed, latencies[int(0.99 * (len(latencies) - 1))] * 1000


# -- the run ------------------------------------------------------------------------------------------


def servers(tmp: Path) -> dict[str, list[str]]:
    listen = [sys.executable, "-m", "inspera_cli", "listen", "--port", "0", "--secret-env", "BENCH_SECRET"]
    found = {
        "listen": listen,
        "listen --record": [*listen, "--record", str(tmp / "events.jsonl")],
        "listen --inspect": [*listen, "--inspect", "--inspect-port", "0"],
        "ThreadingHTTPServer": [sys.executable, "-c", BARE_SERVER],
    }
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        print("note: uvicorn/starlette not installed (pip install -e '.[bench]'): that column is skipped")
    else:
        found["uvicorn+starlette"] = [sys.executable, "-c", STARLETTE_APP]
    return found


Figures = dict[tuple[str, int], tuple[float, float]]


def measure(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> Figures:
    figures: Figures = {}
    first_id = 0
    for name, argv in servers(tmp).items():
        for connections in CONNECTIONS:
            (tmp / "events.jsonl").unlink(missing_ok=True)
            server = Server(argv, env)
            try:
                first_id += 1_000_000
                if args.generator == "wrk":
                    figure = wrk(server.port, connections, args.duration, first_id, tmp)
                else:
                    figure = python_load(server.port, connections, args.duration, first_id)
                figures[name, connections] = figure
            finally:
                server.stop()
            rate, p99 = figures[name, connections]
            print(f"{name:>20} @ {connections:>3} connections: {rate:8.0f} req/s  p99 {p99:8.2f} ms",
                  flush=True)
    return figures


def exactly_once(tmp: Path, env: dict[str, str], count: int) -> bool:
    """`listen --record` under load with distinct events: each 200 recorded exactly once."""
    record = tmp / "once.jsonl"
    listen = [sys.executable, "-m", "inspera_cli", "listen", "--port", "0", "--secret-env", "BENCH_SECRET",
              "--record", str(record)]
    server = Server(listen, env)
    try:
        requests = [signed_request(server.port, i) for i in range(count)]
        _, results = asyncio.run(drive(server.port, requests, 64, 3600))
    finally:
        server.stop()
    statuses = Counter(status for status, _ in results)
    ids = Counter(json.loads(line)["contextObjectId"] for line in record.open())
    once = set(ids) == set(range(count)) and all(n == 1 for n in ids.values())
    print(f"exactly once: {count} distinct events over 64 connections, answers {dict(statuses)}, "
          f"{sum(ids.values())} record lines, each event once: {once}")
    return once and statuses == Counter({200: count})


def report(figures: Figures) -> bool:
    def rate(name: str, connections: int) -> float:
        return figures[name, connections][0]

    goals = []
    if ("uvicorn+starlette", 32) in figures:
        ratio = rate("listen", 32) / rate("uvicorn+starlette", 32)
        goals.append((f"listen / uvicorn+starlette @32: {ratio:.2f}", ratio >= 1.0, ">= 1.0"))
    p99 = figures["listen", 256][1]
    goals.append((f"listen p99 @256: {p99:.1f} ms", p99 <= 100, "<= 100 ms"))
    for connections in CONNECTIONS:
        ratio = rate("listen --record", connections) / rate("listen", connections)
        goals.append((f"listen --record / listen @{connections}: {ratio:.2f}", ratio >= 0.8, ">= 0.8"))
        ratio = rate("listen --inspect", connections) / rate("listen", connections)
        goals.append((f"listen --inspect (page open) / listen @{connections}: {ratio:.2f}", ratio >= 0.9,
                      ">= 0.9"))
        ratio = rate("listen", connections) / rate("ThreadingHTTPServer", connections)
        print(f"listen / ThreadingHTTPServer @{connections}: {ratio:.2f}")
    for text, met, goal in goals:
        print(f"{text}  (goal {goal}: {'met' if met else 'NOT met'})")
    return all(met for _, met, _ in goals)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=1, help="runs of the whole table")
    parser.add_argument("--generator", choices=["wrk", "python"],
                        default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--events", type=int, default=20_000,
                        help="distinct events for the exactly-once check")
    args = parser.parse_args()
    env = {**os.environ, "BENCH_SECRET": SECRET}
    print(f"load generator: {args.generator}" + ("" if shutil.which("wrk") else " (wrk is not on PATH)"))
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(1, args.repeat + 1):
            print(f"-- run {run} of {args.repeat}: {args.duration:g} s per measurement")
            ok = report(measure(args, Path(tmp), env)) and ok
        ok = exactly_once(Path(tmp), env, args.events) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
