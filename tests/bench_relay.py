"""How `inspera-hooks relay` holds up: accept rate, backlog drain, a 60-second outage, SIGKILLs.

    python tests/bench_relay.py [--duration S] [--repeat N] [--outage S] [--backlog N] [--kills N]
                                [--before DIR] [--phases accept,drain,outage,crash]

In one run:

1. accept rate: `relay` (its app up and taking every event) beside `listen --record` on the same
   machine, with the shared load generator (tests/load_harness.py: wrk with one thread, else a
   Python one), at 32 and 256 connections. Goal: relay >= 0.8 x listen --record. Each server's
   CPU time per request (all its threads, from /proc) is printed too, and for the relay the events
   still waiting for delivery when the load stopped and how long they took to drain (the app is
   up throughout: a relay that accepted faster by leaving delivery for later shows it here). With
   --before DIR, the package in DIR (e.g. a worktree of main) is measured right after ours.
2. drain: a backlog of N events (10,000) already in the queue, delivered to an app that answers at
   once. Goal: >= 500 events/s.
3. outage: events keep coming (Inspera-like: each sent until answered 200) while the app is down for
   60 s; after it returns, every acknowledged event is delivered, each X-Inspera-Delivery-Id seen at
   least once and counted once.
4. crash loop: SIGKILL at random moments while events come and the app goes up and down (the long
   form of the suite's test).

Compare ratios within one run: other work on the machine moves absolute numbers. Not a pytest test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import load_harness  # noqa: E402
from load_harness import SECRET, Server, load, settle  # noqa: E402

from inspera_cli.relay.queue import NewEvent, SQLiteQueue  # noqa: E402
from tests import relay_harness  # noqa: E402
from tests.receiver import free_port  # noqa: E402
from tests.relay_harness import crash_loop, event_body, signed_post  # noqa: E402

BEFORE = "(before)"
PHASES = ("accept", "drain", "outage", "crash")

# An app that answers 200 at once and appends "delivery-id contextObjectId" per POST to a file
# (kept across its restarts), in a process of its own.
COUNTING_APP = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = open(sys.argv[2], "a", buffering=1)
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            object_id = json.loads(body)["contextObjectId"]
        except ValueError:
            object_id = None
        with lock:
            log.write(f"{self.headers.get('X-Inspera-Delivery-Id')} {object_id}\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer.allow_reuse_address = True
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.request_queue_size = 1024
print(f"Ready: http://127.0.0.1:{server.server_address[1]}/", file=sys.stderr, flush=True)
server.serve_forever()
"""


def relay_argv(queue: Path, app_port: int, *more: str) -> list[str]:
    return [sys.executable, "-m", "inspera_cli", "relay", "--port", "0", "--admin-port", "0",
            "--secret-env", "BENCH_SECRET", "--forward-to", f"http://127.0.0.1:{app_port}/",
            "--queue", str(queue), "--log-format", "json", *more]


def app_server(port: int, log: Path, env: dict[str, str]) -> Server:
    return Server([sys.executable, "-c", COUNTING_APP, str(port), str(log)], env)


def pending(queue: Path) -> int:
    opened = SQLiteQueue(queue)
    try:
        return opened.pending_count()
    finally:
        opened.close()


def wait_drained(queue: Path, timeout: float) -> float:
    """Seconds until nothing is pending (or the timeout)."""
    started = time.monotonic()
    while pending(queue) and time.monotonic() - started < timeout:
        time.sleep(0.1)
    return time.monotonic() - started


# -- 1. accept rate -------------------------------------------------------------------------------------


def accept_rates(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> bool:
    print(f"-- accept rate: {args.duration:g} s per measurement, load from {args.generator}, "
          f"{args.repeat} round(s) alternating listen --record and relay"
          + (f" (and each from {args.before} after it)" if args.before else ""))
    app_port = free_port()
    app = app_server(app_port, tmp / "accept-app.log", env)
    runs = [("", env, None)]
    if args.before:  # `-m` imports from the cwd first
        runs.append((f" {BEFORE}", {**env, "PYTHONPATH": args.before}, args.before))
    ratios: dict[tuple[str, int], list[float]] = {}
    costs: dict[tuple[str, int], list[float]] = {}
    first_id = 0
    try:
        for _ in range(args.repeat):
            for connections in (32, 256):
                for suffix, server_env, cwd in runs:
                    rates = {}
                    for name in ("listen --record", "relay"):
                        first_id += 1_000_000
                        rates[name], cost = accept_once(args, tmp, app_port, name + suffix, connections,
                                                        server_env, cwd, first_id)
                        if cost is not None:
                            costs.setdefault((name + suffix, connections), []).append(cost)
                    ratio = rates["relay"] / rates["listen --record"]
                    ratios.setdefault((suffix, connections), []).append(ratio)
    finally:
        app.stop()
    ok = True
    for (suffix, connections), values in ratios.items():
        median = statistics.median(values)
        met = median >= 0.8
        ok = ok and (met or bool(suffix))
        runs_text = f" (rounds: {', '.join(f'{v:.2f}' for v in sorted(values))})" if len(values) > 1 else ""
        verdict = f"goal >= 0.8: {'met' if met else 'NOT met'}" if not suffix else "the tree before"
        print(f"relay / listen --record{suffix} @{connections}: median {median:.2f}{runs_text}  ({verdict})")
    for (name, connections), values in costs.items():
        print(f"{name:>26} @ {connections:>3}: median {statistics.median(values):6.1f} us CPU/request")
    return ok


def accept_once(args: argparse.Namespace, tmp: Path, app_port: int, label: str, connections: int,
                env: dict[str, str], cwd: str | None, first_id: int) -> tuple[float, float | None]:
    """One measurement: req/s and the server's CPU us per request. For the relay, also how many
    events were still waiting for delivery when the load stopped, and how long they took."""
    settle(*tmp.glob("accept*.sqlite*"), tmp / "accept.jsonl")
    relay = label.startswith("relay")
    listen = [sys.executable, "-m", "inspera_cli", "listen", "--port", "0", "--secret-env", "BENCH_SECRET"]
    argv = (relay_argv(tmp / "accept.sqlite", app_port) if relay
            else [*listen, "--record", str(tmp / "accept.jsonl")])
    server = Server(argv, env, cwd)
    backlog = ""
    try:
        cpu_before = server.cpu_seconds()
        rate, p99 = load(args.generator, server.port, connections, args.duration, first_id, tmp)
        cpu_after = server.cpu_seconds()
        if relay:
            waiting = pending(tmp / "accept.sqlite")
            backlog = (f"  {waiting} waiting at the end, delivered "
                       f"{wait_drained(tmp / 'accept.sqlite', 300):.1f} s later")
    finally:
        server.stop()
    cost = (None if cpu_before is None or cpu_after is None
            else (cpu_after - cpu_before) / (rate * args.duration) * 1e6)
    shown = "" if cost is None else f"  {cost:6.1f} us CPU/request"
    print(f"{label:>26} @ {connections:>3} connections: {rate:8.0f} req/s  p99 {p99:8.2f} ms{shown}{backlog}",
          flush=True)
    return rate, cost


# -- 2. drain -------------------------------------------------------------------------------------------


def drain(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> bool:
    print(f"-- drain: a backlog of {args.backlog} events to an app that answers at once")
    queue = tmp / "drain.sqlite"
    app_port = free_port()
    backlog = SQLiteQueue(queue, create=True)
    now = time.time()
    url = f"http://127.0.0.1:{app_port}/"
    backlog.enqueue([NewEvent(event_body(n), url, "confirm_final_grades", n, "application/json", "0" * 40)
                     for n in range(args.backlog)], now=now, dedupe_since=now)
    backlog.close()
    log = tmp / "drain-app.log"
    app = app_server(app_port, log, env)
    try:
        relay = Server(relay_argv(queue, app_port), env)
        try:
            seconds = wait_drained(queue, 300)
        finally:
            relay.stop()
    finally:
        app.stop()
    ids = Counter(line.split()[0] for line in log.read_text().splitlines())
    rate = args.backlog / seconds
    met = rate >= 500 and len(ids) == args.backlog
    print(f"drained {len(ids)} of {args.backlog} in {seconds:.1f} s: {rate:.0f} events/s, "
          f"{sum(ids.values()) - len(ids)} sent twice  (goal >= 500/s: {'met' if met else 'NOT met'})")
    return met


# -- 3. outage ------------------------------------------------------------------------------------------


class SteadySender:
    """Sends distinct signed events at ``rate`` per second, each until answered 200 (Inspera with
    unlimited retries, so that every event counts)."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.acknowledged: list[int] = []
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> SteadySender:
        ticker = threading.Thread(target=self._tick, daemon=True)
        ticker.start()
        self._threads.append(ticker)
        return self

    def _tick(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            due = started + self.sent / self.rate
            time.sleep(max(0.0, due - time.monotonic()))
            n = self.sent
            self.sent += 1
            worker = threading.Thread(target=self._send, args=(n,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _send(self, n: int) -> None:
        body = event_body(n)
        while signed_post(self.port, body, timeout=10) != 200:
            time.sleep(0.2)
        with self._lock:
            self.acknowledged.append(n)

    def stop(self) -> None:
        self._stop.set()
        # The ticker first: it may start one more sender after the stop, which a snapshot of
        # the threads taken earlier would miss -- its event then acknowledged after the drain
        # was checked, and counted missing though it waits in the queue.
        self._threads[0].join(60)
        for thread in self._threads[1:]:
            thread.join(60)


def outage(args: argparse.Namespace, tmp: Path, env: dict[str, str]) -> bool:
    rate = 50.0
    print(f"-- outage: {rate:g} events/s; the app is down for {args.outage:g} s in the middle")
    queue = tmp / "outage.sqlite"
    app_port = free_port()
    log = tmp / "outage-app.log"
    app = app_server(app_port, log, env)
    relay = Server(relay_argv(queue, app_port), env)
    try:
        sender = SteadySender(relay.port, rate).start()
        time.sleep(5)
        app.stop()
        down_at = time.monotonic()
        time.sleep(args.outage)
        queued = pending(queue)
        app = app_server(app_port, log, env)
        print(f"app back after {time.monotonic() - down_at:.0f} s; {queued} events waiting", flush=True)
        back_at = time.monotonic()
        time.sleep(5)
        sender.stop()
        wait_drained(queue, 900)
        drained = time.monotonic() - back_at
    finally:
        relay.stop()
        app.stop()
    lines = [line.split() for line in log.read_text().splitlines()]
    per_id = Counter(delivery_id for delivery_id, _ in lines)
    ids_per_event: dict[str, set[str]] = {}
    for delivery_id, object_id in lines:
        ids_per_event.setdefault(object_id, set()).add(delivery_id)
    acknowledged = {str(n) for n in sender.acknowledged}
    missing = acknowledged - set(ids_per_event)
    split = [event for event, ids in ids_per_event.items() if len(ids) > 1]
    ok = not missing and not split
    print(f"{len(acknowledged)} events acknowledged, {len(ids_per_event)} delivered under {len(per_id)} ids "
          f"({sum(per_id.values()) - len(per_id)} POSTs of an id seen before); all delivered "
          f"{drained:.0f} s after the app returned; missing {len(missing)}, events under two ids "
          f"{len(split)}  ({'met' if ok else 'NOT met'})")
    return ok


# -- 4. crash loop --------------------------------------------------------------------------------------


def crashes(args: argparse.Namespace, tmp: Path) -> bool:
    print(f"-- crash loop: {args.kills} SIGKILLs while 2,000 events come and the app goes up and down")
    report = crash_loop(tmp, events=2000, kills=args.kills, seed=3, drain_timeout=300)
    ok = report.missing == 0 and report.split == 0 and not report.unexplained
    print(f"{len(report.kills)} kills; {report.acknowledged} acknowledged, {report.delivered_ids} delivered; "
          f"taken twice (a kill fell between the app's 2xx and the commit): {len(report.duplicates)}; "
          f"missing {report.missing}; unexplained duplicates {len(report.unexplained)}  "
          f"({'met' if ok else 'NOT met'})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per accept measurement")
    parser.add_argument("--generator", choices=["wrk", "python"],
                        default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the accept-rate pair; the ratio's median is judged")
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the app is down")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--before", metavar="DIR", default=None,
                        help="also measure the accept rates of the package in DIR (on PYTHONPATH), e.g. a "
                             "worktree of main, right after ours: before and after, one run")
    parser.add_argument("--phases", type=lambda text: text.split(","), default=list(PHASES),
                        metavar="NAME,NAME", help=f"run only these ({','.join(PHASES)})")
    args = parser.parse_args()
    # Every event distinct for the whole measurement (wrk cycles through its pool): a repeated
    # one is a duplicate to the relay, answered without a write.
    load_harness.WRK_POOL = max(load_harness.WRK_POOL, int(20_000 * args.duration))
    env = {**os.environ, "BENCH_SECRET": SECRET}
    relay_harness.SECRET = SECRET  # the outage's sender signs as the relay verifies
    with tempfile.TemporaryDirectory() as tmp:
        phases = {"accept": lambda: accept_rates(args, Path(tmp), env),
                  "drain": lambda: drain(args, Path(tmp), env),
                  "outage": lambda: outage(args, Path(tmp), env), "crash": lambda: crashes(args, Path(tmp))}
        results = [run() for name, run in phases.items() if name in args.phases]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
