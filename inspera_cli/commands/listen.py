"""`inspera-hooks listen`: a local receiver that verifies, shows, forwards and records events."""

from __future__ import annotations

import functools
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inspera_cli import output
from inspera_cli.commands.common import (
    SecretEnvOption,
    SecretOption,
    resolve_secret,
    state,
)
from inspera_cli.completers import complete_event_list
from inspera_cli.errors import APIError, InsperaError, UsageError

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient, Subscription
    from inspera_cli.listener import Listener, ListenerConfig, ListenerStats
    from inspera_cli.tunnel import Tunnel

AUDIENCE_NOTE = (
    "Inspera sends an event only to users who are contributors on the test, have write access to "
    "the content, or are User Administrators -- and never for actions that same user triggered."
)
_SIGNATURE_STYLES = {
    "valid": "green",
    "unchecked": "yellow",
    "invalid": "bold red",
    "missing": "bold red",
}
# With --tunnel, how long a create refused because validation failed is tried again: quick tunnels
# print their URL seconds before they carry traffic. A refused create created nothing, so this is
# the one POST that is retried.
TUNNEL_VALIDATION_RETRY = 20.0
RETRY_PAUSE = 1.0
# Refusals that are not a failed endpoint validation, so waiting for the tunnel cannot help.
_NOT_VALIDATION = frozenset({401, 403, 404, 405, 409, 429})
# Hosts a tunnel to 127.0.0.1 reaches.
_TUNNEL_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0"})


class TunnelProgram(StrEnum):
    cloudflared = "cloudflared"
    ngrok = "ngrok"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as it does for Ctrl-C."""


def _split(values: list[str] | None) -> list[str]:
    """Names from repeated options that may also be comma-separated: `--events a,b --events c`."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def _check_url(url: str, option: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{option} {url}: not an http:// or https:// URL")
    return url


def parse_forward(values: list[str] | None) -> dict[str | None, str]:
    """`--forward-to URL` (the default route) and `--forward-to EVENT=URL` (one event's route)."""
    routes: dict[str | None, str] = {}
    for value in values or []:
        name, sep, url = value.partition("=")
        key: str | None
        if sep and "://" not in name:
            key, url = name.strip(), url.strip()
            if not key:
                raise UsageError(f"--forward-to {value}: give EVENT=URL or a plain URL")
        else:
            key, url = None, value.strip()
        if key in routes:
            what = f"event {key}" if key else "the default route (a plain URL)"
            raise UsageError(f"--forward-to: {what} is given twice")
        routes[key] = _check_url(url, "--forward-to")
    return routes


def subscribe(
    client: InsperaClient,
    events: list[str],
    endpoint: str,
    secret: str,
    created: list[Subscription],
    *,
    retry_for: float = 0.0,
) -> None:
    """Create one subscription per event for ``endpoint``, appending each to ``created`` as soon
    as it exists, so that cleanup deletes whatever was made even if a later create fails.

    With ``retry_for`` (a tunnel that may not carry traffic yet), a create refused because the
    endpoint's validation failed is tried again until that many seconds have passed."""
    deadline = time.monotonic() + retry_for
    waiting = False
    for event in events:
        while True:
            try:
                subscription = _create(client, event, endpoint, secret)
                break
            except APIError as exc:
                if not retry_for or not _validation_refused(exc):
                    raise
                if time.monotonic() + RETRY_PAUSE > deadline:
                    raise APIError(f"{exc} (still refused after {retry_for:g} s)", exc.status) from None
                if not waiting:
                    waiting = True
                    output.info(
                        f"{exc}\nWaiting for the tunnel to carry traffic… "
                        f"(trying again for up to {retry_for:g} s)"
                    )
            time.sleep(RETRY_PAUSE)
        created.append(subscription)
        output.info(f"Subscribed: {event} -> {endpoint} (id {subscription.subscription_id})")


def _create(client: InsperaClient, event: str, endpoint: str, secret: str) -> Subscription:
    try:
        with output.spinner(f"Creating the {event} subscription (Inspera validates {endpoint})"):
            return client.create(event, endpoint, secret)
    except (KeyboardInterrupt, Terminated):
        output.warn(
            f"interrupted while creating the {event} subscription: if Inspera made it, "
            f"delete it (inspera-hooks list --event {event})"
        )
        raise


def _validation_refused(exc: APIError) -> bool:
    return exc.status is not None and 400 <= exc.status < 500 and exc.status not in _NOT_VALIDATION


def unsubscribe(client: InsperaClient, created: list[Subscription]) -> None:
    """Delete what ``subscribe`` made; a failure is reported with the command to finish the job."""
    while created:
        subscription = created.pop()
        sid = subscription.subscription_id
        try:
            client.delete(sid, missing_ok=True)
        except InsperaError as exc:
            output.warn(f"could not delete subscription {sid}: {exc} -- run: inspera-hooks delete {sid}")
        else:
            output.info(f"Deleted subscription {sid} ({subscription.event})")


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM raises Terminated (Ctrl-C raises KeyboardInterrupt); restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _shielded() -> Iterator[None]:
    """While cleaning up, a second Ctrl-C or SIGTERM does not cut the cleanup short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: object) -> None:
        output.info("Stopping: deleting subscriptions and closing connections...")

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@functools.lru_cache(maxsize=4)
def _local_second(utc_second: str) -> str:
    try:
        return datetime.fromisoformat(utc_second + "+00:00").astimezone().strftime("%H:%M:%S")
    except ValueError:
        return utc_second


def _local_time(received_at: str) -> str:
    return _local_second(received_at[:19])


def _status_style(status: int | None) -> str:
    return "green" if status is not None and 200 <= status < 300 else "bold red"


def request_line(item: dict[str, Any]) -> list[tuple[str, str | None]]:
    """The human view of one request: (text, style) pieces of one line."""
    when = (_local_time(item["receivedAt"]) + "  ", "dim")
    status = item["status"]
    answer = (f"-> {status}", _status_style(status))
    if item["kind"] != "event":
        return [when, (f"{item['method']} {item['path']}".ljust(40), "dim"), answer,
                (f"  {item['note']}", "dim")]
    if item["verification"]:
        name = ("verification".ljust(28), "cyan")
    elif item["event"] is None:
        name = ("(not an event)".ljust(28), "magenta")
    else:
        name = (item["event"].ljust(28), "bold")
    object_id = item["contextObjectId"]
    delivery = item["delivery"]
    # Rejected requests (and unread bodies) are not counted as deliveries: no number to show.
    counted = item["signature"] in ("valid", "unchecked") and status != 413
    pieces = [
        when,
        name,
        (f"{'-' if object_id is None else object_id:>10}  ", None),
        (item["signature"].ljust(10), _SIGNATURE_STYLES.get(item["signature"])),
        ((f"retry #{delivery}" if delivery > 1 else "#1" if counted else "-").ljust(10),
         "yellow" if delivery > 1 else "dim"),
        answer,
    ]
    forward = item["forward"]
    if forward is not None:
        if forward["status"] is None:
            pieces.append((f"  app failed: {forward['error']} ({forward['latencyMs']:.0f} ms)", "bold red"))
        else:
            pieces.append((f"  app {forward['status']} in {forward['latencyMs']:.0f} ms",
                           _status_style(forward["status"])))
    if item["verification"] and item["note"] is None:
        pieces.append(("  endpoint validation", "dim"))
    if item["note"]:
        pieces.append((f"  {item['note']}", "yellow" if status < 300 else "red"))
    if item["event"] is None and item["raw"]:
        raw = item["raw"]
        pieces.append((f"  raw: {raw[:80]!r}{'...' if len(raw) > 80 else ''}", "dim"))
    return pieces


def _printer(json_mode: bool) -> Callable[[dict[str, Any]], None]:
    from inspera_cli.listener import JSON_FIELDS

    broken = False

    def print_item(item: dict[str, Any]) -> None:
        nonlocal broken
        if broken or not item["shown"]:
            return
        try:
            if not json_mode:
                output.print_segments(request_line(item))
            elif item["kind"] == "event":
                output.print_json_line({key: item[key] for key in JSON_FIELDS})
        except BrokenPipeError:
            # `listen | head`: the reader left. Keep answering, recording and forwarding.
            broken = True
            _stdout_to_devnull()

    return print_item


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _summary(stats: ListenerStats, seconds: float, record: Path | None) -> str:
    parts = [f"{stats.events} webhook request{'s' if stats.events != 1 else ''}",
             f"{stats.accepted} accepted"]
    for count, label in (
        (stats.verifications, "verifications"),
        (stats.retries, "retries"),
        (stats.rejected, "rejected (401)"),
        (stats.filtered, "filtered out"),
        (stats.too_large, "too large (413)"),
        (stats.forward_failures, "failed forwards"),
    ):
        if count:
            parts.append(f"{count} {label}")
    text = f"Stopped after {seconds:.1f} s: " + ", ".join(parts) + "."
    if record is not None:
        text += f" Recorded {stats.recorded} to {record}."
    return text


def serve(
    ctx: typer.Context,
    config: ListenerConfig,
    *,
    json_mode: bool = False,
    subscribe_events: list[str] | None = None,
    public_url: str | None = None,
    tunnel: str | None = None,
    exit_after: int | None = None,
    timeout: float | None = None,
) -> None:
    """Run the listener until --exit-after / --timeout / Ctrl-C / SIGTERM; subscriptions made
    for ``public_url`` are deleted, and the ``tunnel`` program (whose URL plus the path is then
    the public URL) is stopped, on every way out."""
    from urllib.parse import urlsplit

    from inspera_cli.listener import Listener

    listener: Listener = Listener(config, on_request=_printer(json_mode))
    created: list[Subscription] = []
    running: Tunnel | None = None
    started = time.monotonic()
    reached = True
    with _stop_signals():
        try:
            listener.start()
            output.info(f"Ready: {listener.url}")
            output.info(AUDIENCE_NOTE)
            if tunnel:
                running = _start_tunnel(tunnel, listener.port)
                public_url = running.public_url + urlsplit(listener.url).path
                output.info(f"Public URL: {public_url}")
            if subscribe_events and public_url:
                subscribe(state(ctx).client(), subscribe_events, public_url, config.secret or "",
                          created, retry_for=TUNNEL_VALIDATION_RETRY if tunnel else 0.0)
            reached = _wait(listener, exit_after, timeout)
        except (KeyboardInterrupt, Terminated):
            pass
        finally:
            with _shielded():
                if created:
                    unsubscribe(state(ctx).client(), created)
                if running is not None:
                    running.stop()
                listener.shutdown()
                if listener.url:
                    record = Path(config.record) if config.record is not None else None
                    output.info(_summary(listener.stats(), time.monotonic() - started, record))
    if not reached:
        raise InsperaError(
            f"only {listener.stats().accepted} of {exit_after} events were accepted "
            f"within {timeout:g} s"
        )


def _start_tunnel(program: str, port: int) -> Tunnel:
    from inspera_cli import tunnel

    with output.spinner(f"Starting {program} for port {port}"):
        # Read at call time, so that tests can shorten it.
        return tunnel.Tunnel.start(program, port, timeout=tunnel.START_TIMEOUT)


def _wait(listener: Listener, exit_after: int | None, timeout: float | None) -> bool:
    """Block until --exit-after events came (True) or --timeout passed (True unless
    --exit-after was not reached). Polls in short slices so signals are handled promptly."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = 3600.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return exit_after is None
        step = min(0.5, remaining)
        if exit_after is not None:
            if listener.wait_accepted(exit_after, step):
                return True
        else:
            time.sleep(step)


def listen(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port", metavar="PORT", min=0, max=65535, help="Port to listen on; 0 picks a free one."
        ),
    ] = 8000,
    path: Annotated[
        str, typer.Option("--path", metavar="PATH", help="URL path that takes the webhooks.")
    ] = "/",
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    skip_verify: Annotated[
        bool, typer.Option("--skip-verify", help="Accept every request without checking signatures.")
    ] = False,
    events: Annotated[
        list[str] | None,
        typer.Option("--events", metavar="A,B", help="Show and forward only these events (others get 200).",
                     autocompletion=complete_event_list),
    ] = None,
    forward_to: Annotated[
        list[str] | None,
        typer.Option(
            "--forward-to",
            metavar="[EVENT=]URL",
            help="POST each event to your app and relay its answer; EVENT=URL routes one event "
            "type (repeatable), a plain URL is the default route.",
        ),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option("--record", metavar="FILE.jsonl", dir_okay=False,
                     help="Append every verified request to this file (fsynced before answering)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per request, one per line, on stdout.")
    ] = False,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert", metavar="FILE", exists=True, dir_okay=False,
            help="Serve HTTPS with this certificate (PEM).",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            "--tls-key", metavar="FILE", exists=True, dir_okay=False,
            help="The certificate's private key (PEM).",
        ),
    ] = None,
    max_body: Annotated[
        int, typer.Option("--max-body", min=1, metavar="BYTES", help="Larger bodies are answered 413.")
    ] = 1 << 20,
    subscribe_to: Annotated[
        list[str] | None,
        typer.Option("--subscribe", metavar="EVENT",
                     help="Subscribe to these events at --public-url (or --tunnel) while listening; "
                     "deleted again on exit (repeatable or comma-separated).",
                     autocompletion=complete_event_list),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url", metavar="URL",
                     help="The public HTTPS URL (a tunnel) that reaches this listener, for --subscribe."),
    ] = None,
    tunnel: Annotated[
        TunnelProgram | None,
        typer.Option("--tunnel", help="Start this tunnel program and use its public URL plus --path "
                     "as --public-url; stopped again on exit."),
    ] = None,
    exit_after: Annotated[
        int | None, typer.Option("--exit-after", min=1, metavar="N", help="Exit 0 after N accepted events.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.001, metavar="SECONDS",
                     help="Stop after this long (exit 1 if --exit-after was not reached)."),
    ] = None,
) -> None:
    """Run a local receiver: answer Inspera's validation, verify signatures, show, forward and record events.

    Prints one line per request (--json: one JSON object per line) and a summary on exit.

    Example: inspera-hooks listen --secret-env INSPERA_HOOK_SECRET --forward-to http://localhost:3000/hooks
    """
    from inspera_cli.listener import ListenerConfig

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    subscribe_events = _split(subscribe_to)
    if tunnel and public_url:
        raise UsageError("--tunnel and --public-url are exclusive: --tunnel makes the public URL")
    if tunnel and tls_cert:
        raise UsageError("--tunnel forwards plain HTTP: drop --tls-cert (the tunnel serves HTTPS)")
    if tunnel and host not in _TUNNEL_HOSTS:
        raise UsageError(f"--tunnel forwards to 127.0.0.1: listen there (or on 0.0.0.0), not --host {host}")
    if subscribe_events and not (public_url or tunnel):
        raise UsageError(
            "--subscribe needs --public-url URL (the HTTPS address of a tunnel to this listener) "
            "or --tunnel cloudflared|ngrok"
        )
    if public_url and not subscribe_events:
        raise UsageError("--public-url is only used with --subscribe EVENT")
    if public_url:
        _check_url(public_url, "--public-url")
    event_filter = _split(events)
    config = ListenerConfig(
        host=host,
        port=port,
        path=path,
        secret=resolve_secret(secret_env, secret),
        skip_verify=skip_verify,
        events=event_filter or None,
        forward=parse_forward(forward_to),
        record=record,
        max_body=max_body,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    if subscribe_events and config.secret is None:
        import secrets

        config.secret = secrets.token_hex(32)  # fresh, used for the subscriptions and never shown
    if config.secret is None and not skip_verify:
        output.warn("no secret given: signatures are not checked (pass --secret-env VAR)")
    serve(
        ctx,
        config,
        json_mode=json_output,
        subscribe_events=subscribe_events,
        public_url=public_url,
        tunnel=tunnel.value if tunnel else None,
        exit_after=exit_after,
        timeout=timeout,
    )


def register(app: typer.Typer) -> None:
    app.command("listen")(listen)
