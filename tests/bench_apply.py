"""Benchmark: `apply` of 100 subscriptions next to a plain sequential loop of `create` calls.

Both run against their own sandbox tenant on 127.0.0.1, whose endpoint validation reaches a local
receiver that answers after 50 ms (as a real endpoint over the network would). The tenants and
the receiver run in child processes, as a real tenant and endpoint run elsewhere: this process
holds only the client's work. Run it directly:

    python tests/bench_apply.py [--count 100] [--delay 0.05] [--concurrency 4]

Target: apply at least 3× faster than the loop.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from inspera_cli.cli import app
from inspera_cli.client import InsperaClient
from inspera_cli.sandbox import DEFAULT_EVENTS, Sandbox, SandboxConfig

CLIENT_ID, API_KEY, SECRET = "bench", "bench-key", "bench-secret"


def slow_receiver(delay: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(delay)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(host="127.0.0.1", port=0, client_id=CLIENT_ID, api_key=API_KEY)).start()


def serve_receiver(delay: float, queue: Any, stop: Any) -> None:
    """A child process: the endpoint that answers validation after ``delay`` seconds."""
    receiver = slow_receiver(delay)
    queue.put(f"http://127.0.0.1:{receiver.server_address[1]}")
    stop.wait()
    receiver.shutdown()
    receiver.server_close()


def serve_tenants(queue: Any, stop: Any) -> None:
    """A child process: two sandbox tenants, one for each contender; reports their counts at the end."""
    loop_tenant, apply_tenant = sandbox(), sandbox()
    queue.put((loop_tenant.url, apply_tenant.url))
    stop.wait()
    queue.put((len(loop_tenant.subscriptions()), len(apply_tenant.subscriptions())))
    loop_tenant.shutdown()
    apply_tenant.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.05, help="receiver's answer delay, seconds")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    receiver_queue, tenants_queue = context.Queue(), context.Queue()
    children = [
        context.Process(target=serve_receiver, args=(args.delay, receiver_queue, stop), daemon=True),
        context.Process(target=serve_tenants, args=(tenants_queue, stop), daemon=True),
    ]
    for child in children:
        child.start()
    base = receiver_queue.get(timeout=30)
    loop_url, apply_url = tenants_queue.get(timeout=30)
    events = [name for name, _ in DEFAULT_EVENTS]
    pairs = [(events[i % len(events)], f"{base}/bench/{i}") for i in range(args.count)]

    with tempfile.TemporaryDirectory() as tmp:
        # Token cache in a throwaway place, never the user's.
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")
        os.environ["HOOK_SECRET"] = SECRET
        path = Path(tmp) / "hooks.toml"
        path.write_text(
            "".join(
                f'[[subscription]]\nevent = "{e}"\nendpoint = "{u}"\nsecret_env = "HOOK_SECRET"\n\n'
                for e, u in pairs
            )
        )

        started = time.perf_counter()
        with InsperaClient(loop_url, CLIENT_ID, API_KEY) as client:
            for event, endpoint in pairs:
                client.create(event, endpoint, SECRET)
        loop_time = time.perf_counter() - started

        env = {"INSPERA_URL": apply_url, "INSPERA_CLIENT_ID": CLIENT_ID, "INSPERA_API_KEY": API_KEY}
        command = ["apply", "-f", str(path), "--json", "--concurrency", str(args.concurrency)]
        started = time.perf_counter()
        result = CliRunner().invoke(app, command, env=env, catch_exceptions=False)
        apply_time = time.perf_counter() - started
        assert result.exit_code == 0, result.stderr

    stop.set()
    counts = tenants_queue.get(timeout=30)
    for child in children:
        child.join(timeout=10)
    assert counts == (args.count, args.count), counts
    print(f"{args.count} subscriptions, validation target answering after {args.delay * 1000:.0f} ms")
    print(f"sequential create loop:          {loop_time:6.2f} s")
    print(f"apply (concurrency {args.concurrency:>2}):         {apply_time:6.2f} s")
    print(f"ratio:                           {loop_time / apply_time:6.2f}×  (target ≥ 3×)")


if __name__ == "__main__":
    main()
