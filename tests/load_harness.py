"""What the bench scripts (tests/bench_*.py) share: signed requests, receivers run as subprocesses,
and the load generators that drive them (wrk with one thread, else a Python asyncio generator).

Not a pytest test module; the bench scripts import it from their own directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from inspera_cli.signing import sign

SECRET = "bench-secret-0123456789abcdef"
WRK_POOL = 20_000  # distinct signed events wrk cycles through


def signed_request(port: int, object_id: int) -> bytes:
    """A whole HTTP/1.1 request: a signed `confirm_final_grades` event for ``object_id``."""
    body = json.dumps(
        {"contextObjectId": object_id, "event": "confirm_final_grades", "timestamp": "2024-05-01T12:00:00Z"}
    ).encode()
    head = (
        f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"X-Inspera-Signature: {sign(body, SECRET)}\r\nUser-Agent: Apache-HttpClient/4.5\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def build_requests(count: int, port: int, first_id: int) -> list[bytes]:
    """``count`` distinct signed requests, object ids from ``first_id`` on."""
    return [signed_request(port, first_id + i) for i in range(count)]


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` percentile of durations in seconds, in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def port_of(line: str) -> int:
    """The port in a `Ready: http://127.0.0.1:PORT/...` (or `Inspect: ...`) line."""
    return int(line.split()[1].rstrip("/").rsplit(":", 1)[1].split("/")[0])


def stop_server(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def settle(*files: Path) -> None:
    """Before measuring the next server: the last one's files gone and their writeback done, so
    that the disk work of a run that records (or queues) does not land on the next measurement."""
    for file in files:
        file.unlink(missing_ok=True)
    os.sync()
    time.sleep(1)


# -- receivers ---------------------------------------------------------------------------------------


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


class Server:
    """A receiver in a subprocess, started when its `Ready:` line comes (and `Inspect:` with
    ``--inspect``: then a client keeps the page's event stream open). Its stdout is read as a
    terminal would read it; ``lines`` counts the lines (one per request for `listen`)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                                     cwd=cwd)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        self.lines = 0
        threading.Thread(target=self._count, args=(self.proc.stdout.fileno(),), daemon=True).start()
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
        threading.Thread(target=lambda s=self.proc.stderr: [None for _ in s], daemon=True).start()

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system, all threads) the server has used so far; None off Linux."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _count(self, fd: int) -> None:
        while chunk := os.read(fd, 1 << 16):
            self.lines += chunk.count(b"\n")

    def stop(self) -> None:
        stop_server(self.proc)
        if self.page is not None:
            got, _ = self.page.communicate(timeout=30)
            print(f"    the open page was sent {got.strip()}")


# -- load generators -------------------------------------------------------------------------------


def lua_string(data: bytes) -> str:
    text = data.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r", "\\r").replace("\n", "\\n") + '"'


def wrk_script(port: int, first_id: int, path: Path) -> Path:
    """A wrk script at ``path`` cycling through WRK_POOL distinct signed events for ``port``."""
    pool = ",\n".join(lua_string(signed_request(port, first_id + i)) for i in range(WRK_POOL))
    path.write_text(
        f"local pool = {{\n{pool}\n}}\nlocal n = 0\n"
        "function request()\n  n = n + 1\n  return pool[(n % #pool) + 1]\nend\n"
    )
    return path


def wrk(port: int, connections: int, duration: float, first_id: int, tmp: Path,
        script: Path | None = None) -> tuple[float, float]:
    """req/s and p99 (ms) from wrk with one thread, cycling through WRK_POOL distinct signed events
    (``script``: one wrk_script made before, for this port)."""
    if script is None:
        script = wrk_script(port, first_id, tmp / "requests.lua")
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

    def __init__(self, work: list[bytes], results: list[tuple[int, float]], done: asyncio.Future[None],
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


async def drive(port: int, requests: list[bytes], connections: int, duration: float = 3600.0
                ) -> tuple[float, list[tuple[int, float]]]:
    """Send ``requests`` over ``connections`` keep-alive connections (each sends its next when the
    last is answered) until they are all answered or ``duration`` has passed. Returns the seconds
    taken and (status, latency in s) per answer. The clock starts once every connection is made."""
    loop = asyncio.get_running_loop()
    results: list[tuple[int, float]] = []
    protocols, futures = [], []
    until = time.perf_counter() + 3600
    for i in range(connections):
        share = requests[i::connections][::-1]  # pop() from the end sends them in order
        done: asyncio.Future[None] = loop.create_future()
        _, protocol = await loop.create_connection(
            lambda s=share, d=done: _Connection(s, results, d, until), "127.0.0.1", port
        )
        protocols.append(protocol)
        futures.append(done)
    start = time.perf_counter()
    for protocol in protocols:
        protocol.until = start + duration
        protocol.send_next()
    await asyncio.gather(*futures)
    return time.perf_counter() - start, results


def python_load(port: int, connections: int, duration: float, first_id: int) -> tuple[float, float]:
    """req/s and p99 (ms) from the Python generator, for when wrk is not installed."""
    requests = build_requests(int(60_000 * duration), port, first_id)
    elapsed, results = asyncio.run(drive(port, requests, connections, duration))
    return len(results) / elapsed, percentile([latency for _, latency in results], 0.99)


def load(generator: str, port: int, connections: int, duration: float, first_id: int,
         tmp: Path) -> tuple[float, float]:
    """req/s and p99 (ms) from ``generator`` ("wrk" or "python")."""
    if generator == "wrk":
        return wrk(port, connections, duration, first_id, tmp)
    return python_load(port, connections, duration, first_id)
