"""`inspera-hooks listen`: a local receiver that verifies, shows, forwards and records events."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inspera_cli import interrupts, output
from inspera_cli.commands.candidates import complete_event_list
from inspera_cli.commands.common import (
    SecretEnvOption,
    SecretOption,
    listen_address,
    resolve_secret,
    split_names,
    state,
    warn_unknown_events,
)
from inspera_cli.errors import InsperaError, UsageError
from inspera_cli.public_session import Reporter

if TYPE_CHECKING:
    from inspera_cli.api_models import Subscription
    from inspera_cli.listener import Listener, ListenerConfig, ListenerStats
    from inspera_cli.listener.report import Report

AUDIENCE_NOTE = (
    "Inspera sends an event only to users who are contributors on the test, have write access to "
    "the content, or are User Administrators -- and never for actions that same user triggered."
)
# What the listener may not see of an app's failure: 502 when the app does not answer in time.
_APP_DEADLINE = "unreachable, or slower than 9 s: 502"
# Hosts a tunnel to 127.0.0.1 reaches.
_TUNNEL_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0"})


class TunnelProgram(StrEnum):
    cloudflared = "cloudflared"
    ngrok = "ngrok"


def parse_forward(values: list[str] | None) -> dict[str | None, str]:
    """`--forward-to URL` (the default route) and `--forward-to EVENT=URL` (one event's route)."""
    from inspera_cli.network import check_http_url

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
        # No user:pass@: the app would not get it (no Basic auth is sent), only logs and pages.
        check_http_url(url, "--forward-to", allow_userinfo=False)
        routes[key] = url
    return routes


class _Printer:
    """What `listen` shows of each request: a line (--json: an object), made on the receiver's
    loop (``render``), taken by the report thread (``__call__``) and written in one piece per batch
    (``flush``)."""

    def __init__(self, json_mode: bool) -> None:
        # Here, not at the top: TAB after `li` builds this command too, and needs neither.
        from inspera_cli.commands.rendering import request_line
        from inspera_cli.listener.report import RequestKind

        self._request_line = request_line
        self._event = RequestKind.EVENT
        self._json_mode = json_mode
        self._broken = False
        self._lines: list[str] = []

    def render(self, report: Report) -> str | None:
        if self._broken or not report.shown:
            return None
        if not self._json_mode:
            return output.segment_line(self._request_line(report))
        if report.kind is self._event:
            return output.json_line(report.to_json())
        return None

    def __call__(self, line: str) -> None:
        self._lines.append(line)

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if self._broken or not lines:
            return
        try:
            output.write_stdout("".join(lines))
            output.flush_stdout()
        except BrokenPipeError:
            # `listen | head`: the reader left. Keep answering, recording and forwarding.
            self._broken = True
            output.discard_stdout()


def banner(config: ListenerConfig, *, secret_from: str, exit_after: int | None,
           max_time: float | None) -> list[str]:
    """What the listener does, in a line each, shown under `Ready:`."""
    if config.skip_verify:
        lines = ["Not verifying signatures (--skip-verify): every request is accepted"]
    elif config.secret is None:
        lines = ["Not verifying signatures: no secret given (pass --secret-env VAR)"]
    else:
        lines = [f"Verifying X-Inspera-Signature with {secret_from}"]
    if config.events:
        lines.append(f"Showing and forwarding only {', '.join(config.events)} (other events get 200)")
    routes = dict(config.forward)
    default = routes.pop(None, None)
    lines += [f"Forwarding {event} to {url}" for event, url in routes.items()]
    if default is not None:
        lines.append(f"Forwarding {'every other event' if routes else 'every event'} to {default}")
    if config.record is not None:
        lines.append(f"Recording every verified request to {config.record}")
    if exit_after is not None:
        within = f" (exit 1 if they have not come within {max_time:g} s)" if max_time else ""
        lines.append(f"Exiting after {output.counted(exit_after, 'accepted event')}{within}")
    elif max_time is not None:
        lines.append(f"Stopping after {max_time:g} s")
    return lines


def summary(stats: ListenerStats, seconds: float, record: Path | None) -> str:
    """The line `listen` ends with: what came, and who refused what (the listener or the app)."""
    app_unreachable = stats.forward_failures - stats.app_refusals
    parts = [output.counted(stats.events, "webhook request"), f"{stats.accepted} accepted"]
    for count, text in (
        (stats.verifications, output.counted(stats.verifications, "verification")),
        (stats.retries, output.counted(stats.retries, "retry", "retries")),
        (stats.rejected, f"{stats.rejected} refused by listen (signature: 401)"),
        (stats.app_refusals, f"{stats.app_refusals} refused by the app (its status relayed)"),
        (app_unreachable, f"{app_unreachable} not answered by the app ({_APP_DEADLINE})"),
        (stats.filtered, f"{stats.filtered} filtered out (--events)"),
        (stats.too_large, f"{stats.too_large} too large (413)"),
        (stats.bad_requests, f"{stats.bad_requests} malformed (400/501)"),
        (stats.timed_out, f"{output.counted(stats.timed_out, 'connection')} timed out"),
        (stats.refused_connections,
         f"{output.counted(stats.refused_connections, 'connection')} refused (--max-connections)"),
        (stats.dropped_lines, f"{output.counted(stats.dropped_lines, 'line')} not shown (stdout not read)"),
    ):
        if count:
            parts.append(text)
    text = f"Stopped after {seconds:.1f} s: " + ", ".join(parts) + "."
    if record is not None:
        text += f" Recorded {output.counted(stats.recorded, 'request')} to {record}."
    if not stats.accepted:
        text += f"\nNo event was accepted. {AUDIENCE_NOTE}"
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
    max_time: float | None = None,
    generated_secret: bool = False,
    secret_from: str = "the secret given",
    inspect: tuple[int, int] | None = None,
) -> None:
    """Run the listener until --exit-after / --max-time / Ctrl-C / SIGTERM; subscriptions made
    for ``public_url`` are deleted, and the ``tunnel`` program (whose URL plus the path is then
    the public URL) is stopped, on every way out (``public_session.Session``). ``secret_from`` says
    where the secret came from, for the lines under `Ready:`; ``inspect`` (port, keep) serves
    the inspector page beside it."""
    from inspera_cli.commands import inspect as inspect_command
    from inspera_cli.listener import Listener

    printer = _Printer(json_mode)
    listener: Listener = Listener(config, on_report=printer, after_reports=printer.flush,
                                  render=printer.render)
    inspector = None
    if inspect is not None:
        inspector = inspect_command.start_for_listener(listener, config, *inspect)
    started = time.monotonic()
    reached = True
    ready = False  # a summary only after `Ready:` (not under the error of a start that failed)
    try:
        listener.start()
        if inspector is not None:
            inspector.start(listener)
        output.info(f"Ready: {listener.url}")
        ready = True
        if inspector is not None:
            inspect_command.announce(inspector)
        for line in banner(config, secret_from=secret_from, exit_after=exit_after, max_time=max_time):
            output.info(f"  {line}")
        with _session(ctx, listener, subscribe_events or [], public_url, tunnel, config.secret,
                      secret_generated=generated_secret):
            reached = _wait(listener, exit_after, max_time)
    except KeyboardInterrupt:
        pass  # Ctrl-C and SIGTERM are how a listener is meant to stop
    finally:
        with interrupts.cleanup("closing connections and the record file"):
            if inspector is not None:
                inspector.close()
            listener.shutdown()
            if ready:
                record = Path(config.record) if config.record is not None else None
                output.info(summary(listener.stats(), time.monotonic() - started, record))
    if not reached:
        raise InsperaError(
            f"only {listener.stats().accepted} of {output.counted(exit_after or 0, 'event')} "
            f"{'was' if exit_after == 1 else 'were'} accepted within {max_time:g} s"
        )


class _SessionLines(Reporter):
    """How `listen` shows its tunnel and temporary subscriptions (stderr); a generated secret is
    shown with the first subscription that holds it."""

    def __init__(self, generated_secret: str | None) -> None:
        self._generated = generated_secret

    def busy(self, message: str) -> AbstractContextManager[object]:
        return output.spinner(message)

    def tunnel_started(self, public_url: str) -> None:
        output.info(f"Public URL: {public_url}")

    def waiting_for_tunnel(self, refusal: str, retry_for: float) -> None:
        output.info(f"{refusal}\nWaiting for the tunnel to carry traffic… "
                    f"(trying again for up to {retry_for:g} s)")

    def already_subscribed(self, subscription: Subscription) -> None:
        sid = subscription.subscription_id
        output.warn(f"{subscription.event} -> {subscription.endpoint} is already subscribed (id {sid}): "
                    f"each event is delivered to both; inspera-hooks delete {sid} removes the old one")

    def subscribed(self, subscription: Subscription) -> None:
        from inspera_cli.commands.rendering import show_secret

        if self._generated:
            show_secret(self._generated)
            output.info("Generated for these subscriptions: the listener verifies with it, and so must "
                        "an app behind --forward-to. It is shown only this once.")
            self._generated = None
        output.info(f"Subscribed: {subscription.event} -> {subscription.endpoint} "
                    f"(id {subscription.subscription_id})")

    def deleted(self, subscription: Subscription) -> None:
        output.info(f"Deleted subscription {subscription.subscription_id} ({subscription.event})")

    def delete_failed(self, subscription: Subscription, error: InsperaError) -> None:
        sid = subscription.subscription_id
        output.warn(f"could not delete subscription {sid}: {error} -- run: inspera-hooks delete {sid}")

    def lookup_failed(self, event: str, error: InsperaError) -> None:
        output.warn(f"could not check whether the {event} subscription was made: {error} -- run: "
                    f"inspera-hooks list --event {event}")


def _session(
    ctx: typer.Context,
    listener: Listener,
    events: list[str],
    public_url: str | None,
    tunnel: str | None,
    secret: str | None,
    *,
    secret_generated: bool,
) -> AbstractContextManager[object]:
    """The tunnel and temporary subscriptions, if asked for (a generated secret is shown)."""
    from contextlib import nullcontext
    from urllib.parse import urlsplit

    from inspera_cli.public_session import Session

    if not (events or tunnel):
        return nullcontext()
    return Session(
        state(ctx).client() if events else None,
        events,
        secret or "",
        local_port=listener.port,
        path=urlsplit(listener.url).path,
        public_url=public_url,
        tunnel=tunnel,
        report=_SessionLines(secret if secret_generated else None),
        close_receiver=listener.shutdown,
        how_to_pass="the public URL leads to another receiver (check it), or give listen that "
        "receiver's secret with --secret-env VAR",
    )


def _wait(listener: Listener, exit_after: int | None, max_time: float | None) -> bool:
    """Block until --exit-after events came (True) or --max-time passed (True unless
    --exit-after was not reached). Polls in short slices so signals are handled promptly."""
    deadline = None if max_time is None else time.monotonic() + max_time
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
    max_connections: Annotated[
        int,
        typer.Option("--max-connections", min=1, metavar="N",
                     help="At most this many open connections (a newcomer replaces the one that has "
                     "waited longest for its headers, else gets 503)."),
    ] = 512,
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
        typer.Option("--tunnel", metavar="PROGRAM", help="Start this tunnel program (cloudflared or "
                     "ngrok) and use its public URL plus --path as --public-url; stopped again on exit."),
    ] = None,
    exit_after: Annotated[
        int | None, typer.Option("--exit-after", min=1, metavar="N", help="Exit 0 after N accepted events.")
    ] = None,
    max_time: Annotated[
        float | None,
        typer.Option("--max-time", min=0.001, metavar="SECONDS",
                     help="Stop after this long (exit 1 if --exit-after was not reached)."),
    ] = None,
    timeout: Annotated[
        # SPEC §4's name for --max-time, kept working; the global --timeout is the HTTP timeout.
        float | None, typer.Option("--timeout", min=0.001, metavar="SECONDS", hidden=True)
    ] = None,
    inspect: Annotated[
        bool,
        typer.Option("--inspect", help="Also serve a web page on 127.0.0.1 that shows every request live, "
                     "says why a signature failed, and replays (see `inspera-hooks inspect`)."),
    ] = False,
    inspect_port: Annotated[
        int | None,
        typer.Option("--inspect-port", min=0, max=65535, metavar="PORT",
                     help="The page's port [default: 4041]; 0 picks a free one."),
    ] = None,
    inspect_keep: Annotated[
        int | None,
        typer.Option("--inspect-keep", min=1, metavar="N",
                     help="Requests the page keeps [default: 1000]; with --record, read back from it "
                     "at start."),
    ] = None,
) -> None:
    """Run a local receiver: answer Inspera's validation, verify signatures, show, forward and record events.

    Prints what it does under the Ready: line, then one line per request (--json: one JSON object
    per line), and a summary on exit. Event names given to --events and --forward-to EVENT=URL
    that the tenant (or, offline, the built-in list) does not know are warned about.

    Example:
      inspera-hooks listen --secret-env INSPERA_HOOK_SECRET --forward-to http://localhost:3000/hooks
      inspera-hooks listen --secret-env S --exit-after 1 --max-time 60 &   # in CI, with trigger
    """
    from inspera_cli.listener import ListenerConfig

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    subscribe_events = split_names(subscribe_to)
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
        from inspera_cli.network import check_http_url

        check_http_url(public_url, "--public-url")
    max_time = _max_time(max_time, timeout)
    event_filter = split_names(events)
    routes = parse_forward(forward_to)
    warn_unknown_events(ctx, [*event_filter, *(name for name in routes if name is not None)])
    config = ListenerConfig(
        host=listen_address(host),
        port=port,
        path=path,
        secret=resolve_secret(secret_env, secret),
        skip_verify=skip_verify,
        events=event_filter or None,
        forward=routes,
        record=record,
        max_body=max_body,
        max_connections=max_connections,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    generated = False
    secret_from = f"the secret in ${secret_env}" if secret_env else "the secret given with --secret"
    if subscribe_events and config.secret is None:
        import secrets

        config.secret = secrets.token_hex(32)
        generated = True
        secret_from = "a generated secret (shown once the subscriptions are made)"
    serve(
        ctx,
        config,
        json_mode=json_output,
        subscribe_events=subscribe_events,
        public_url=public_url,
        tunnel=tunnel.value if tunnel else None,
        exit_after=exit_after,
        max_time=max_time,
        generated_secret=generated,
        secret_from=secret_from,
        inspect=_inspect_options(inspect, inspect_port, inspect_keep),
    )


def _max_time(max_time: float | None, timeout: float | None) -> float | None:
    """--max-time, or its old name `listen --timeout`."""
    if timeout is None:
        return max_time
    if max_time is not None:
        raise UsageError("--timeout is the old name of --max-time: give one of them")
    output.info("note: listen --timeout is --max-time now (the global --timeout, before the command, "
                "is the HTTP timeout)")
    return timeout


def _inspect_options(inspect: bool, port: int | None, keep: int | None) -> tuple[int, int] | None:
    """--inspect's (port, keep), defaults filled in; None without --inspect."""
    for option, value in (("--inspect-port", port), ("--inspect-keep", keep)):
        if value is not None and not inspect:
            raise UsageError(f"{option} is only used with --inspect")
    if not inspect:
        return None
    from inspera_cli.commands.inspect import DEFAULT_KEEP, DEFAULT_PORT

    return (DEFAULT_PORT if port is None else port, DEFAULT_KEEP if keep is None else keep)


def register(app: typer.Typer) -> None:
    app.command("listen")(listen)
