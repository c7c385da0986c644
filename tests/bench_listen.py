"""Throughput and tail latency of `inspera-hooks listen`, side by side with other receivers.

    python tests/bench_listen.py [--duration S] [--repeat N] [--generator wrk|python] [--events N]
                                 [--only NAME,NAME] [--connections N,N] [--before DIR]
                                 [--side-by-side N]

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

Each `listen` server also shows the share of requests it printed a line for: under overload the
display drops lines (and counts them) rather than slow the answers, and how many it drops depends
on how often its thread gets the GIL, so two listen servers may not do the same display work.

Each server's CPU time per request is printed too (Linux: /proc), with the ratios it alone would
give: the work a request costs. It moves with the machine's other load too (caches, contention:
+-15 % between rounds on a crowded 2-core machine), less than req/s does.

Compare ratios within one run: other work on the machine moves absolute numbers. With --repeat N
the whole table is measured N times, the servers one after the other in each run, and the goals
are judged on each ratio's median over the runs.

A few per cent is beyond what three rounds can settle on a shared machine, whose speed drifts over
seconds. `--side-by-side N` (wrk only) starts the chosen servers (and their `--before` twins) once,
all of them, then N times sends each its `--duration` of load in turn (1 s is enough), the order
reversed every other round: the ratios are judged on the medians of N paired rounds, the servers'
CPU a request beside them. No server is restarted between rounds, so a `--inspect` keeps its full
store, as a page left open would. Not a pytest test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

from load_harness import SECRET, Server, build_requests, drive, load, settle, wrk, wrk_script

CONNECTIONS = (32, 256)
BEFORE = "(before)"

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
Costs = dict[tuple[str, int], float | None]


def measure(args: argparse.Namespace, chosen: dict[str, list[str]], tmp: Path,
            env: dict[str, str], costs: dict[tuple[str, int], float | None]) -> Figures:
    """One run: every chosen server at each connection count, one after the other (with
    ``--before``, each `listen` server's "(before)" twin right after it)."""
    figures: Figures = {}
    first_id = 0
    before = {**env, "PYTHONPATH": args.before} if args.before else None
    for connections in args.connections:
        for name, argv in chosen.items():
            runs: list[tuple[str, dict[str, str], str | None]] = [(name, env, None)]
            if before is not None and name.startswith("listen"):
                runs.append((f"{name} {BEFORE}", before, args.before))  # `-m` imports from the cwd first
            for label, server_env, cwd in runs:
                settle(tmp / "events.jsonl")
                server = Server(argv, server_env, cwd)
                try:
                    first_id += 1_000_000
                    before_cpu = server.cpu_seconds()
                    rate, p99 = load(args.generator, server.port, connections, args.duration, first_id, tmp)
                    after_cpu = server.cpu_seconds()
                finally:
                    server.stop()
                cpu = (None if before_cpu is None or after_cpu is None
                       else (after_cpu - before_cpu) / (rate * args.duration) * 1e6)
                figures[label, connections] = (rate, p99)
                costs[label, connections] = cpu
                shown = "" if cpu is None else f"  {cpu:6.1f} us CPU/request"
                if label.startswith("listen"):
                    shown += f"  {displayed(server.lines, rate * args.duration)}"
                print(f"{label:>29} @ {connections:>3} connections: {rate:8.0f} req/s  p99 {p99:8.2f} ms"
                      f"{shown}", flush=True)
    return figures


def side_by_side(args: argparse.Namespace, chosen: dict[str, list[str]], tmp: Path,
                 env: dict[str, str]) -> tuple[list[Figures], list[Costs]]:
    """--side-by-side N: every server up at once, each loaded in turn; one Figures a round."""
    runs: list[Figures] = [{} for _ in range(args.side_by_side)]
    costs: list[Costs] = [{} for _ in range(args.side_by_side)]
    before = {**env, "PYTHONPATH": args.before} if args.before else None
    for connections in args.connections:
        started: dict[str, tuple[Server, Path]] = {}
        try:
            for number, (name, argv) in enumerate(chosen.items()):
                twins = [(name, env, None)]
                if before is not None and name.startswith("listen"):
                    twins.append((f"{name} {BEFORE}", before, args.before))
                for label, server_env, cwd in twins:
                    server = Server(argv, server_env, cwd)
                    started[label] = server, wrk_script(server.port, (len(started) + 1) * 1_000_000,
                                                        tmp / f"requests-{number}-{len(started)}.lua")
            for server, script in started.values():  # warm: caches, connections, a full store
                wrk(server.port, connections, args.duration, 0, tmp, script)
            labels = list(started)
            for round_ in range(args.side_by_side):
                for label in labels if round_ % 2 == 0 else labels[::-1]:
                    server, script = started[label]
                    before_cpu = server.cpu_seconds()
                    rate, p99 = wrk(server.port, connections, args.duration, 0, tmp, script)
                    after_cpu = server.cpu_seconds()
                    runs[round_][label, connections] = (rate, p99)
                    costs[round_][label, connections] = (
                        None if before_cpu is None or after_cpu is None
                        else (after_cpu - before_cpu) / (rate * args.duration) * 1e6)
            for label in labels:
                rates = [run[label, connections][0] for run in runs]
                cpus = [cost[label, connections] for cost in costs]
                cpu = statistics.median(c for c in cpus if c is not None) if None not in cpus else None
                shown = "" if cpu is None else f"  {cpu:6.1f} us CPU/request"
                print(f"{label:>29} @ {connections:>3} connections: median {statistics.median(rates):8.0f} "
                      f"req/s over {args.side_by_side} rounds{shown}", flush=True)
        finally:
            for server, _ in started.values():
                server.stop()
    return runs, costs


def displayed(lines: int, requests: float) -> str:
    """The share of requests `listen` printed a line for. Under overload the display drops lines
    (counted in its summary) rather than slow the answers: a server that prints fewer lines did
    less work, so ratios between listen servers are read beside this."""
    return f"{min(lines / requests, 1.0):4.0%} shown" if requests else ""


def exactly_once(tmp: Path, env: dict[str, str], count: int) -> bool:
    """`listen --record` under load with distinct events: each 200 recorded exactly once."""
    record = tmp / "once.jsonl"
    listen = [sys.executable, "-m", "inspera_cli", "listen", "--port", "0", "--secret-env", "BENCH_SECRET",
              "--record", str(record)]
    server = Server(listen, env)
    try:
        _, results = asyncio.run(drive(server.port, build_requests(count, server.port, 0), 64))
    finally:
        server.stop()
    statuses = Counter(status for status, _ in results)
    ids = Counter(json.loads(line)["contextObjectId"] for line in record.open())
    once = set(ids) == set(range(count)) and all(n == 1 for n in ids.values())
    print(f"exactly once: {count} distinct events over 64 connections, answers {dict(statuses)}, "
          f"{sum(ids.values())} record lines, each event once: {once}")
    return once and statuses == Counter({200: count})


# (what, against, goal, at): the ratio what/against must be >= goal at the connection counts in
# ``at`` (every count when None); a goal of None: printed only.
RATIOS: list[tuple[str, str, float | None, tuple[int, ...] | None]] = [
    ("listen", "uvicorn+starlette", 1.0, (32,)),
    ("listen --record", "listen", 0.8, None),
    ("listen --inspect", "listen", 0.9, None),
    ("listen", "ThreadingHTTPServer", None, None),
]


def ratios(figures: Figures) -> dict[tuple[str, str, int], float]:
    """Each ratio of RATIOS whose two servers were measured, at each connection count (and the
    same between the "(before)" twins)."""
    found = {}
    for what, against, _, _ in RATIOS:
        for suffix in ("", f" {BEFORE}"):
            ours = what + suffix
            theirs = against + suffix if against.startswith("listen") else against
            for (name, connections), (rate, _) in figures.items():
                if name == ours and (theirs, connections) in figures:
                    found[ours, theirs, connections] = rate / figures[theirs, connections][0]
    return found



def report(runs: list[Figures], costs: list[Costs]) -> bool:
    """The ratios of each run, then their medians over the runs against the goals. Beside each,
    the same ratio of the servers' CPU time per request (against's / what's): the rate the work
    alone would allow (less noisy than req/s, not free of noise)."""
    per_run = [ratios(figures) for figures in runs]
    goals = {(what, against): (goal, at) for what, against, goal, at in RATIOS}
    ok = True
    for key in sorted(per_run[0], key=lambda k: (k[2], k[0].endswith(BEFORE), k[0], k[1])):
        what, against, connections = key
        values = sorted(run[key] for run in per_run)
        median = statistics.median(values)
        goal, at = goals.get((what, against), (None, None))
        verdict = ""
        if goal is not None and (at is None or connections in at):
            met = median >= goal
            ok = ok and met
            verdict = f"  (goal >= {goal}: {'met' if met else 'NOT met'})"
        spread = f" (runs: {', '.join(f'{v:.2f}' for v in values)})" if 1 < len(values) <= 5 else ""
        if len(values) > 5:
            low, _, high = statistics.quantiles(values, n=4)
            spread = f" (middle half of {len(values)} rounds: {low:.2f}-{high:.2f})"
        work = [cost[against, connections] / cost[what, connections] for cost in costs  # type: ignore[operator]
                if cost.get((what, connections)) and cost.get((against, connections))]
        by_cpu = f"; by CPU per request: {statistics.median(work):.2f}" if work else ""
        print(f"{what} / {against} @{connections}: median {median:.2f}{spread}{by_cpu}{verdict}")
    p99s = sorted(figures["listen", 256][1] for figures in runs if ("listen", 256) in figures)
    if p99s:
        p99 = statistics.median(p99s)
        met = p99 <= 100
        ok = ok and met
        print(f"listen p99 @256: median {p99:.1f} ms  (goal <= 100 ms: {'met' if met else 'NOT met'})")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the whole table; the ratios' medians over the runs are judged")
    parser.add_argument("--only", type=lambda text: text.split(","), default=None, metavar="NAME,NAME",
                        help="measure only these servers (e.g. 'listen,listen --record')")
    parser.add_argument("--before", metavar="DIR", default=None,
                        help="also run each listen server from the package in DIR (on PYTHONPATH), "
                             "e.g. an older commit's tree, right after ours: before and after, one run")
    parser.add_argument("--connections", type=lambda text: [int(n) for n in text.split(",")],
                        default=list(CONNECTIONS), metavar="N,N", help="connection counts (32,256)")
    parser.add_argument("--generator", choices=["wrk", "python"],
                        default="wrk" if shutil.which("wrk") else "python")
    parser.add_argument("--events", type=int, default=20_000,
                        help="distinct events for the exactly-once check")
    parser.add_argument("--side-by-side", type=int, default=0, metavar="N",
                        help="start the servers once and load each in turn, N rounds (see above)")
    args = parser.parse_args()
    if args.side_by_side and args.generator != "wrk":
        parser.error("--side-by-side needs wrk on PATH")
    env = {**os.environ, "BENCH_SECRET": SECRET}
    print(f"load generator: {args.generator}" + ("" if shutil.which("wrk") else " (wrk is not on PATH)"))
    with tempfile.TemporaryDirectory() as tmp:
        chosen = servers(Path(tmp))
        if args.only is not None:
            unknown = set(args.only) - set(chosen)
            if unknown:
                parser.error(f"no such server: {', '.join(sorted(unknown))} "
                             f"(choose from {', '.join(chosen)})")
            chosen = {name: argv for name, argv in chosen.items() if name in args.only}
        runs: list[Figures] = []
        costs: list[Costs] = []
        if args.side_by_side:
            print(f"-- side by side: {args.side_by_side} rounds of {args.duration:g} s per server")
            runs, costs = side_by_side(args, chosen, Path(tmp), env)
        for run in range(1, args.repeat + 1 if not args.side_by_side else 1):
            print(f"-- run {run} of {args.repeat}: {args.duration:g} s per measurement")
            costs.append({})
            runs.append(measure(args, chosen, Path(tmp), env, costs[-1]))
        print(f"-- ratios ({os.cpu_count()} cores, load from {args.generator})")
        ok = report(runs, costs)
        if "listen --record" in chosen:
            ok = exactly_once(Path(tmp), env, args.events) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
