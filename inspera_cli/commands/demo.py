"""`demo`: the whole webhook lifecycle on an embedded sandbox, in one process, in seconds."""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from inspera_cli import output
from inspera_cli.errors import InsperaError

EVENT = "confirm_final_grades"
OBJECT_ID = 35199862


def _step(number: int, text: str) -> None:
    output.console(stderr=False).print(f"\n[bold cyan]{number}.[/] [bold]{text}[/]")


def _say(text: str) -> None:
    output.console(stderr=False).print(f"   {text}", highlight=False)


def demo(
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="SECONDS", help="How long to wait for the event.", min=1)
    ] = 10.0,
) -> None:
    """Run the whole story on an embedded sandbox: events, create, fire, receive, list, delete.

    Needs no account, no network and no setup: a sandbox tenant and a listener start on free
    ports of 127.0.0.1 inside this process, and the real client code talks to them.

    Example: inspera-hooks demo

    Exit codes: 0 the event arrived verified, 1 something in the chain failed.
    """
    from inspera_cli.auth import TokenCache
    from inspera_cli.client import InsperaClient
    from inspera_cli.commands.rendering import request_line
    from inspera_cli.config import Settings
    from inspera_cli.listener import Listener, ListenerConfig, Report
    from inspera_cli.sandbox import Sandbox, SandboxConfig

    secret = secrets.token_hex(32)
    arrived = threading.Event()

    def on_report(report: Report) -> None:
        output.print_segments([("   ", None), ("listener: ", "dim"), *request_line(report)])
        if report.accepted:
            arrived.set()

    sandbox = Sandbox(SandboxConfig(port=0, api_key=secrets.token_hex(16), retry_delay=0.2))
    listener = Listener(ListenerConfig(port=0, path="/inspera", secret=secret), on_report=on_report)
    with tempfile.TemporaryDirectory(prefix="inspera-hooks-demo-") as tmp:
        sandbox.start()
        listener.start()
        try:
            output.console(stderr=False).print(
                "[bold]inspera-hooks demo[/]: a sandbox Inspera tenant and a local receiver, "
                "both on 127.0.0.1, no account needed."
            )
            _say(f"sandbox tenant  {sandbox.url}")
            _say(f"listener        {listener.url}  (verifies X-Inspera-Signature with a fresh secret)")
            settings = Settings(
                url=sandbox.url, client_id=sandbox.config.client_id, api_key=sandbox.config.api_key
            )
            client = InsperaClient.from_settings(settings, TokenCache(Path(tmp) / "tokens.json"))
            _run(client, sandbox, listener.url, secret, arrived, timeout)
        finally:
            listener.shutdown(grace=2.0)
            sandbox.shutdown()


def _run(
    client: Any, sandbox: Any, endpoint: str, secret: str, arrived: threading.Event, timeout: float
) -> None:
    _step(1, "inspera-hooks events — which event types can we subscribe to?")
    names = [e.event for e in client.events()]
    _say(", ".join(names))

    _step(2, f"inspera-hooks create --event {EVENT} --endpoint {endpoint}")
    _say("Inspera validates the endpoint first with a signed 'verification' POST:")
    sub = client.create(EVENT, endpoint, secret)
    _say(f"[green]created[/] subscription {sub.subscription_id}: {sub.event} → {sub.endpoint}")

    _step(3, f"the tenant fires {EVENT} (contextObjectId {OBJECT_ID}), as when grades are confirmed")
    started = time.monotonic()
    sandbox.fire(EVENT, OBJECT_ID)
    if not arrived.wait(timeout):
        raise InsperaError(f"the event did not reach the listener within {timeout:g} s")
    _say(f"[green]✓ delivered and verified[/] in {(time.monotonic() - started) * 1000:.0f} ms")

    _step(4, "inspera-hooks list")
    for s in client.subscriptions():
        _say(f"{s.subscription_id}  {s.event}  {s.endpoint}  {s.last_modified or ''}")

    _step(5, f"inspera-hooks delete {sub.subscription_id}")
    client.delete(sub.subscription_id)
    left = [s for s in client.subscriptions() if s.subscription_id == sub.subscription_id]
    if left:
        raise InsperaError(f"subscription {sub.subscription_id} is still listed after delete")
    _say("[green]deleted[/]; no subscriptions left")

    output.console(stderr=False).print(
        "\n[bold green]Done.[/] Next: [bold]inspera-hooks sandbox serve[/] for a tenant that stays up, "
        "[bold]inspera-hooks listen --secret-env VAR[/] to watch events, "
        "[bold]inspera-hooks trigger EVENT --to URL[/] to test your own receiver."
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
