"""The sandbox as a busy tenant: deliveries/s, /_sandbox/fire latency, and memory over long bursts.

    python tests/bench_sandbox.py [DELIVERIES] [LONG]      (defaults: 30000 200000)

Every program is a subprocess on 127.0.0.1 (`sandbox serve`, `listen --secret-env`), in one run:

1. direct: the shared load generator (load_harness.drive) drives `listen --secret-env` with
   DELIVERIES signed events over 32 keep-alive connections -- what the listener alone can take;
2. sandbox: `sandbox fire EVENT --count DELIVERIES` to one subscription at a fresh `listen
   --exit-after DELIVERIES`; the clock runs from the fire command's start until listen exits
   (its start-up included). The ratio sandbox/direct is printed; the target is >= 3,000/s;
3. /_sandbox/fire latency: 2,000 sequential fires (count 1) over one keep-alive connection;
4. memory: the RSS of `sandbox serve` sampled through a burst of LONG deliveries, with its growth
   per delivery once the history (--keep, 10,000) is full, extrapolated to 1,000,000. Pass
   LONG=1000000 to measure that directly (some five minutes).

Not a pytest test.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load_harness import SECRET, Server, build_requests, drive, percentile, stop_server

from inspera_cli.client import InsperaClient

EVENT = "confirm_final_grades"
CLI = [sys.executable, "-m", "inspera_cli"]
ENV = {**os.environ, "BENCH_SECRET": SECRET}
FIRES = 2_000


def listener(*args: str) -> Server:
    """`listen --secret-env` in a subprocess; ``lines`` counts what it prints (one line a request)."""
    return Server([*CLI, "listen", "--port", "0", "--secret-env", "BENCH_SECRET", *args], ENV)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Sandbox:
    """`sandbox serve` in a subprocess; its log goes to a file, read only for the Ready line."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [*CLI, "sandbox", "serve", "--port", "0"], stdout=subprocess.DEVNULL,
            stderr=log.open("wb"), env=ENV,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("Ready: "):
                    self.url = line.removeprefix("Ready: ").strip()
                    self.client = InsperaClient(url=self.url, client_id="sandbox", api_key="sandbox-key")
                    return
            time.sleep(0.05)
        raise SystemExit("sandbox serve did not start")

    def subscribe_only(self, port: int) -> None:
        """One subscription, to this listener: the others are deleted."""
        for sub in self.client.subscriptions():
            self.client.delete(sub.subscription_id)
        self.client.create(EVENT, f"http://127.0.0.1:{port}/", SECRET)

    def fire(self, count: int) -> None:
        subprocess.run(
            [*CLI, "sandbox", "fire", EVENT, "--count", str(count), "--json"],
            env={**ENV, "INSPERA_URL": self.url}, stdout=subprocess.DEVNULL, check=True,
        )

    def wait_idle(self) -> None:
        """Until the history's newest attempt has stayed the same for a second."""
        last = None
        while (newest := (self.deliveries() or [None])[-1]) != last:
            last = newest
            time.sleep(1)

    def deliveries(self) -> list[dict[str, object]]:
        connection = http.client.HTTPConnection(self.url.removeprefix("http://"), timeout=60)
        connection.request("GET", "/_sandbox/deliveries")
        items: list[dict[str, object]] = json.loads(connection.getresponse().read())["deliveries"]
        connection.close()
        return items

    def stop(self) -> None:
        self.client.close()
        stop_server(self.proc)


def direct_rate(count: int) -> float:
    receiver = listener()
    try:
        port = receiver.port
        elapsed, results = asyncio.run(drive(port, build_requests(count, port, 0), 32))
    finally:
        receiver.stop()
    assert all(status == 200 for status, _ in results), "listen refused some direct requests"
    return len(results) / elapsed


def sandbox_rate(sandbox: Sandbox, count: int) -> float:
    receiver = listener("--exit-after", str(count))
    sandbox.subscribe_only(receiver.port)
    started = time.perf_counter()
    sandbox.fire(count)
    fired = time.perf_counter()
    if receiver.proc.wait(timeout=600) != 0:
        raise SystemExit("listen did not accept every delivery")
    receiver.stop()
    elapsed = time.perf_counter() - started
    print(f"  (the fire command itself took {(fired - started) * 1000:.0f} ms)")
    return count / elapsed


def fire_latency(sandbox: Sandbox, port: int) -> list[float]:
    sandbox.subscribe_only(port)
    connection = http.client.HTTPConnection(sandbox.url.removeprefix("http://"), timeout=30)
    body = json.dumps({"event": EVENT}).encode()
    latencies = []
    for _ in range(FIRES):
        started = time.perf_counter()
        connection.request("POST", "/_sandbox/fire", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        latencies.append(time.perf_counter() - started)
        assert answer.status == 200
    connection.close()
    return latencies


def memory(sandbox: Sandbox, receiver: Server, count: int) -> list[tuple[int, int]]:
    """(deliveries the listener printed, RSS in KiB) samples through a burst of ``count``."""
    first = receiver.lines
    samples = [(0, rss_kb(sandbox.proc.pid))]
    sandbox.fire(count)
    deadline = time.monotonic() + 3600
    while receiver.lines - first < count and time.monotonic() < deadline:
        time.sleep(1)
        samples.append((receiver.lines - first, rss_kb(sandbox.proc.pid)))
    samples.append((receiver.lines - first, rss_kb(sandbox.proc.pid)))
    return samples


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    long = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    print(f"sandbox serve -> listen --secret-env, 127.0.0.1, {os.cpu_count()} cores")
    direct = direct_rate(count)
    print(f"   direct: {direct:8.0f} req/s        (load_harness.drive, 32 connections)")
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Sandbox(Path(tmp) / "sandbox.log")
        try:
            rate = sandbox_rate(sandbox, count)
            print(f"  sandbox: {rate:8.0f} deliveries/s (sandbox fire --count {count}; target >= 3000)")
            print(f"    ratio: {rate / direct:.2f}  (sandbox / direct)")

            receiver = listener()
            try:
                latencies = fire_latency(sandbox, receiver.port)
                print(
                    f"     fire: p50 {percentile(latencies, 0.5):.2f} ms  p99 "
                    f"{percentile(latencies, 0.99):.2f} ms  (POST /_sandbox/fire, {FIRES} in a row)"
                )
                sandbox.wait_idle()
                samples = memory(sandbox, receiver, long)
            finally:
                receiver.stop()
            report_memory(samples, long)
            kept = sandbox.deliveries()
            print(f"  history: {len(kept)} attempts kept, all 200: {all(d['status'] == 200 for d in kept)}")
        finally:
            sandbox.stop()
    return 0 if rate >= 3000 else 1


def report_memory(samples: list[tuple[int, int]], long: int) -> None:
    done = samples[-1][0]
    before, after = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    print(
        f"      RSS: {before / 1024:.1f} MiB before {done} deliveries, {after / 1024:.1f} MiB after "
        f"(peak {peak / 1024:.1f} MiB)"
    )
    # Growth from a tenth of the way in (the history long full) to the end, extrapolated.
    settled = next(s for s in samples if s[0] >= done // 10)
    if done > settled[0]:
        per_delivery = (after - settled[1]) * 1024 / (done - settled[0])
        print(
            f"           from {settled[0]} to {done} deliveries: {(after - settled[1]) / 1024:+.1f} MiB, "
            f"{per_delivery:+.2f} bytes/delivery -> {per_delivery * 1_000_000 / 2**20:+.1f} MiB per 1,000,000"
        )
    if done < long:
        print(f"           (only {done} of {long} deliveries were seen)")


if __name__ == "__main__":
    sys.exit(main())
