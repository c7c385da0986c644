"""`inspera-hooks relay`: receive -> durable queue -> deliver, and `relay status|events|retry|purge`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inspera_cli import interrupts, output
from inspera_cli.commands.common import (
    JsonOption,
    SecretEnvOption,
    SecretOption,
    listen_address,
    resolve_secret,
    warn_unknown_events,
)
from inspera_cli.commands.listen import parse_forward
from inspera_cli.errors import UsageError

if TYPE_CHECKING:
    from inspera_cli.relay.observe import Change
    from inspera_cli.relay.queue import SQLiteQueue
    from inspera_cli.relay.service import Relay, RelayConfig


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class EventState(StrEnum):
    pending = "pending"
    delivered = "delivered"
    dead = "dead"


QueueOption = Annotated[
    Path | None,
    typer.Option("--queue", metavar="FILE", dir_okay=False,
                 help="The queue (SQLite). Default: relay.sqlite in the user data directory."),
]


def _duration(value: str, option: str) -> float:
    from inspera_cli.relay.schedule import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _queue_path(given: Path | None, ctx: typer.Context) -> Path:
    """--queue of the subcommand, else of `relay` itself (`relay --queue X status`), else the default."""
    from inspera_cli.relay.queue import default_queue_path

    parent = ctx.parent.params.get("queue") if ctx.parent is not None else None
    return given or parent or default_queue_path()


@contextmanager
def _open_queue(path: Path) -> Iterator[SQLiteQueue]:
    """The queue, for a subcommand: SQLite's errors become one line naming the file."""
    import sqlite3

    from inspera_cli.relay.queue import QueueError, SQLiteQueue

    queue = SQLiteQueue(path)
    try:
        yield queue
    except sqlite3.Error as exc:
        raise QueueError(f"cannot use the relay queue {path}: {exc}") from exc
    finally:
        queue.close()


# -- the relay itself -------------------------------------------------------------------------------


class _ChangeLog:
    """The log lines on stdout, from the feed's thread: each run of changes it hands over is
    written in one piece and flushed once (one write for many lines under load)."""

    def __init__(self, log_format: LogFormat) -> None:
        self.log_format = log_format
        self.broken = False
        self._ascii_only = output.stdout_ascii_only()
        self._lines: list[str] = []  # JSON lines of the run being handed over

    def print(self, change: Change) -> None:
        if self.log_format is LogFormat.json:
            self._lines.append(change.json_line(ensure_ascii=self._ascii_only))
        else:
            self._guarded(lambda: output.print_segments(change_line(change), flush=False))

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            text = "\n".join(lines) + "\n"
            self._guarded(lambda: output.write_stdout(text))
        self._guarded(output.flush_stdout)

    def _guarded(self, write: Callable[[], None]) -> None:
        if self.broken:
            return
        try:
            write()
        except BrokenPipeError:  # the reader left: keep relaying
            self.broken = True
            output.discard_stdout()


_STYLES = {"received": "cyan", "duplicate": "dim", "delivered": "green", "retrying": "yellow", "dead": "red"}


def change_line(change: Change) -> list[tuple[str, str | None]]:
    """One text log line: time, state, id, event, contextObjectId, then what happened."""
    from inspera_cli.relay.observe import ChangeKind
    from inspera_cli.relay.schedule import format_duration

    clock = time.strftime("%H:%M:%S", time.localtime(change.at))
    object_id = "-" if change.context_object_id is None else str(change.context_object_id)
    head = f"{clock}  "
    rest = f"  {change.id}  {change.event or '-'}  {object_id}"
    kind = change.kind
    if kind is ChangeKind.RECEIVED:
        detail = f"queued for {change.url}"
    elif kind is ChangeKind.DUPLICATE:
        detail = "the same body again (Inspera's retry): already queued"
    elif kind is ChangeKind.DELIVERED:
        detail = f"attempt {change.attempt}: {change.status} in {(change.seconds or 0) * 1000:.1f} ms"
    elif kind is ChangeKind.RETRYING:
        wait = format_duration(max(0.0, (change.next_attempt_at or change.at) - change.at))
        detail = f"attempt {change.attempt}: {change.error}; next attempt in {wait}"
    else:
        detail = (f"attempt {change.attempt}: {change.error}; given up after --max-age "
                  f"(inspera-hooks relay retry {change.id})")
    return [(head, None), (f"{kind.value:<9}", _STYLES[kind.value]), (f"{rest}  {detail}", None)]


def _announce(relay: Relay, queue: Path, secret_env: str | None, verifying: bool) -> None:
    cfg = relay.config
    output.info(f"Ready: {relay.url}")
    if verifying:
        output.info(f"Verifying signatures with the secret in {secret_env}." if secret_env
                    else "Verifying signatures.")
    routes = dict(cfg.routes)
    default = routes.pop(None, None)
    for event, url in routes.items():
        output.info(f"Delivering {event} to {url}")
    if default is not None:
        output.info(f"Delivering {'every other event' if routes else 'every event'} to {default}")
    output.info(f"Queue: {queue}")
    if relay.upgraded_from is not None:
        output.info(f"Upgraded the queue from version {relay.upgraded_from}: an older inspera-hooks "
                    "refuses it now.")
    if relay.rerouted:
        output.info(f"Re-routed {relay.rerouted} queued events to the routes above.")
    output.info(f"Admin: {relay.admin_url}health and {relay.admin_url}metrics")


def run_relay(
    ctx: typer.Context,
    forward_to: Annotated[
        list[str] | None,
        typer.Option("--forward-to", metavar="[EVENT=]URL",
                     help="Your app: a plain URL is the default route (required), EVENT=URL routes one "
                     "event type (repeatable)."),
    ] = None,
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    queue: QueueOption = None,
    host: Annotated[
        str, typer.Option("--host", metavar="HOST", help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="PORT", min=0, max=65535, help="Port for Inspera; 0 picks one.")
    ] = 8000,
    path: Annotated[
        str, typer.Option("--path", metavar="PATH", help="URL path that takes the webhooks.")
    ] = "/",
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", metavar="FILE", exists=True, dir_okay=False,
                     help="Serve HTTPS with this certificate (PEM)."),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", metavar="FILE", exists=True, dir_okay=False,
                     help="The certificate's private key (PEM)."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", metavar="N", min=1, max=256,
                          help="Deliveries in flight to each app at once.")
    ] = 4,
    max_age: Annotated[
        str, typer.Option("--max-age", metavar="DURATION",
                          help="Keep retrying an event this long (30s, 10m, 72h, 7d), then it is dead.")
    ] = "72h",
    max_backoff: Annotated[
        str, typer.Option("--max-backoff", metavar="DURATION", help="Longest wait between two attempts.")
    ] = "10m",
    admin_port: Annotated[
        int, typer.Option("--admin-port", metavar="PORT", min=0, max=65535,
                          help="Port on 127.0.0.1 for GET /health and /metrics; 0 picks one.")
    ] = 8001,
    log_format: Annotated[
        LogFormat | None,
        typer.Option("--log-format", metavar="FORMAT", help="text or json: one line per state change on "
                     "stdout; default: json when stdout is not a terminal."),
    ] = None,
) -> None:
    """Receive Inspera's webhooks into a durable queue and deliver them to your app until it takes them.

    Without a subcommand it runs the relay: each signed event is committed to the queue before it
    is answered 200, then POSTed to your app (original body and signature, plus X-Inspera-Delivery-Id
    and X-Inspera-Attempt) and retried with backoff until --max-age. The subcommands (status,
    events, retry, purge) inspect and repair the queue, also while a relay runs on it.

    Example: inspera-hooks relay --secret-env INSPERA_HOOK_SECRET --forward-to http://127.0.0.1:5000/hooks
    """
    if ctx.invoked_subcommand is not None:
        return
    from inspera_cli.relay.service import RelayConfig

    routes = parse_forward(forward_to)
    warn_unknown_events(ctx, [name for name in routes if name is not None])
    if None not in routes:
        raise UsageError("relay needs --forward-to URL: the app that takes every event without a route "
                         "of its own (add --forward-to EVENT=URL for others)")
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    config = RelayConfig(
        routes=routes, queue=_queue_path(queue, ctx), host=listen_address(host), port=port, path=path,
        secret=resolve_secret(secret_env, secret), tls_cert=tls_cert, tls_key=tls_key,
        concurrency=concurrency, max_age=_duration(max_age, "--max-age"),
        max_backoff=_duration(max_backoff, "--max-backoff"), admin_port=admin_port,
    )
    if config.secret is None:
        output.warn("no secret given: signatures are not checked, and anyone who can reach this port "
                    "can queue events for your app (pass --secret-env VAR)")
    chosen = log_format or (LogFormat.text if output.is_terminal() else LogFormat.json)
    _serve(config, chosen, secret_env)


def _serve(config: RelayConfig, log_format: LogFormat, secret_env: str | None) -> None:
    from inspera_cli.listener.feed import Feed
    from inspera_cli.relay.service import Relay

    log = _ChangeLog(log_format)
    lines: Feed[Change] = Feed(log.print, idle=log.flush, name="relay-log")
    relay = Relay(config, on_change=lines.put)
    started = time.monotonic()
    try:
        relay.start()
        _collect_rarely()
        _announce(relay, Path(config.queue), secret_env, config.secret is not None)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass  # Ctrl-C and SIGTERM are how the relay is meant to stop
    finally:
        with interrupts.cleanup("finishing deliveries in flight (up to 10 s)"):
            ran = bool(relay.url)
            relay.stop()
            lines.close()
            if ran:
                metrics = relay.metrics
                output.info(f"Stopped after {time.monotonic() - started:.1f} s: {metrics.received} received, "
                            f"{metrics.delivered} delivered, {metrics.dead} dead. Events still pending are "
                            "delivered after the next start.")


def _collect_rarely() -> None:
    """Each event makes a few objects the cycle collector tracks, so under load its youngest
    generation was collected every ~150 events, each time walking every request in flight; the
    relay's own objects are freed by reference counting. What the start made (modules, the
    parser) stays for the whole run: frozen, no collection walks it again."""
    import gc

    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


GC_THRESHOLD = 20_000  # allocations between collections of the youngest generation (Python: 700)


# -- subcommands --------------------------------------------------------------------------------------


def status(ctx: typer.Context, queue: QueueOption = None, json_output: JsonOption = False) -> None:
    """Show how many events are pending, delivered and dead, per route.

    Example: inspera-hooks relay status --json
    """
    path = _queue_path(queue, ctx)
    with _open_queue(path) as opened:
        stats = opened.stats(now=time.time())
    if json_output:
        output.print_json(stats.to_json())
        return
    oldest = stats.oldest_pending_seconds
    from inspera_cli.relay.schedule import format_duration

    output.info(f"Queue: {path}")
    print(f"pending {stats.pending}, delivered {stats.delivered}, dead {stats.dead}"
          + (f"; the oldest pending event is {format_duration(oldest)} old" if oldest is not None else ""))
    if stats.routes:
        rows = [route.to_json() for route in stats.routes]
        output.render(rows, [("url", "Route"), ("pending", "Pending"), ("dead", "Dead"),
                             ("lastError", "Last error")], json_mode=False)


def events(
    ctx: typer.Context,
    queue: QueueOption = None,
    state: Annotated[
        EventState | None,
        typer.Option("--state", metavar="STATE", help="Only events in this state: pending, delivered, dead."),
    ] = None,
    event: Annotated[
        str | None, typer.Option("--event", metavar="EVENT", help="Only this event type.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", metavar="N", min=1, help="At most N events, newest first.")
    ] = 100,
    json_output: JsonOption = False,
) -> None:
    """List queued events, newest first: state, attempts, next attempt and last error.

    Example: inspera-hooks relay events --state dead
    """
    from inspera_cli.relay.queue import State

    with _open_queue(_queue_path(queue, ctx)) as opened:
        found = opened.events(state=State(state.value) if state else None, event=event, limit=limit)
    rows = [info.to_json() for info in found]
    columns = [("id", "Id"), ("event", "Event"), ("contextObjectId", "Object"), ("receivedAt", "Received"),
               ("state", "State"), ("attempts", "Attempts"), ("nextAttemptAt", "Next attempt"),
               ("lastError", "Last error")]
    output.render(rows, columns, json_mode=json_output)


def retry(
    ctx: typer.Context,
    ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ID]...", help="Event ids (or unique prefixes).")
    ] = None,
    queue: QueueOption = None,
    dead: Annotated[bool, typer.Option("--dead", help="Every dead event.")] = False,
) -> None:
    """Make events pending and due now, with a fresh --max-age: dead ones, or any by id.

    A running relay picks them up within a second; otherwise the next start delivers them.

    Example: inspera-hooks relay retry --dead
    """
    if bool(ids) == dead:
        raise UsageError("give event ids or --dead (not both)")
    with _open_queue(_queue_path(queue, ctx)) as opened:
        if dead:
            count = opened.retry_dead(now=time.time())
            output.info(f"{count} dead event{'s are' if count != 1 else ' is'} pending again.")
        else:
            done = opened.retry(ids or [], now=time.time())
            output.info(f"{len(done)} event{'s are' if len(done) != 1 else ' is'} pending again: "
                        + ", ".join(done))


def purge(
    ctx: typer.Context,
    queue: QueueOption = None,
    delivered: Annotated[
        bool, typer.Option("--delivered", help="Remove delivered events (required).")
    ] = False,
    older_than: Annotated[
        str | None, typer.Option("--older-than", metavar="DURATION",
                                 help="Only those delivered longer ago than this (e.g. 7d).")
    ] = None,
) -> None:
    """Remove delivered events older than a duration; pending and dead events are never removed.

    Example: inspera-hooks relay purge --delivered --older-than 7d
    """
    if not delivered:
        raise UsageError("purge removes delivered events only: pass --delivered --older-than DURATION")
    if older_than is None:
        raise UsageError("purge needs --older-than DURATION (e.g. 7d)")
    seconds = _duration(older_than, "--older-than")
    path = _queue_path(queue, ctx)
    with _open_queue(path) as opened:
        removed = opened.purge_delivered(before=time.time() - seconds)
    output.info(f"Removed {removed} delivered event{'s' if removed != 1 else ''} older than {older_than} "
                f"from {path}.")


relay_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    subcommand_metavar="[COMMAND [ARGS]...]",
    context_settings={"help_option_names": ["-h", "--help"]},
)
relay_app.callback()(run_relay)
relay_app.command("status")(status)
relay_app.command("events")(events)
relay_app.command("retry")(retry)
relay_app.command("purge")(purge)


def register(app: typer.Typer) -> None:
    app.add_typer(relay_app, name="relay")

