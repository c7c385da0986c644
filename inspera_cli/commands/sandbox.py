"""`sandbox serve`, `sandbox fire`, `sandbox deliveries`: an Inspera tenant on your machine."""

from __future__ import annotations

import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from inspera_cli import output
from inspera_cli.commands.candidates import complete_event
from inspera_cli.commands.common import JsonOption, listen_address, state
from inspera_cli.errors import APIError, CredentialsError, UsageError

sandbox_app = typer.Typer(
    help="A local Inspera tenant (the webhook API, validation, signed deliveries) for tests and CI.\n\n"
    "Example: inspera-hooks sandbox serve",
    no_args_is_help=True,
)


def _parse_resolve(values: list[str]) -> dict[str, tuple[str, int]]:
    resolve: dict[str, tuple[str, int]] = {}
    for value in values:
        host, sep, target = value.partition("=")
        address, colon, port = target.rpartition(":")
        if not (sep and host and colon and address and port.isdigit() and 0 < int(port) < 65536):
            raise typer.BadParameter(
                f"{value!r}: expected HOST=ADDRESS:PORT, e.g. abc.trycloudflare.com=127.0.0.1:8000",
                param_hint="--resolve",
            )
        resolve[host.lower()] = (address.strip("[]"), int(port))
    return resolve


@sandbox_app.command("serve")
def serve(
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", metavar="PORT", min=0, max=65535, help="Port to listen on (0: a free one)."),
    ] = 8765,
    client_id: Annotated[
        str, typer.Option("--client-id", metavar="ID", help="The API client id the sandbox accepts.")
    ] = "sandbox",
    api_key: Annotated[
        str, typer.Option("--api-key", metavar="KEY", help="The API authorization code the sandbox accepts.")
    ] = "sandbox-key",
    state_file: Annotated[
        Path | None,
        typer.Option(
            "--state",
            metavar="FILE",
            dir_okay=False,
            help="Keep subscriptions in this SQLite file (default: in memory).",
        ),
    ] = None,
    token_ttl: Annotated[
        float,
        typer.Option(
            "--token-ttl", metavar="SECONDS", min=0.001, help="Access tokens expire after this long."
        ),
    ] = 3600.0,
    validation_timeout: Annotated[
        float,
        typer.Option(
            "--validation-timeout",
            metavar="SECONDS",
            min=0.001,
            help="Seconds an endpoint has to answer the validation POST on create.",
        ),
    ] = 10.0,
    retries: Annotated[
        int, typer.Option("--retries", metavar="N", min=0, help="Retries of a failed delivery.")
    ] = 3,
    retry_delay: Annotated[
        float,
        typer.Option("--retry-delay", metavar="SECONDS", min=0, help="Pause between delivery attempts."),
    ] = 1.0,
    resolve: Annotated[
        list[str] | None,
        typer.Option(
            "--resolve",
            metavar="HOST=127.0.0.1:PORT",
            help="Send requests for HOST (e.g. a tunnel's) to this local port over plain HTTP. Repeatable.",
        ),
    ] = None,
    keep: Annotated[
        int,
        typer.Option(
            "--keep", metavar="N", min=0,
            help="Delivery attempts kept in memory for `sandbox deliveries` (the newest N).",
        ),
    ] = 10_000,
) -> None:
    """Run a local Inspera tenant: the webhook API, endpoint validation and signed deliveries.

    Prints the export lines that point the other commands at it, then serves until Ctrl-C.
    Fire events at your subscriptions with `inspera-hooks sandbox fire EVENT`.

    Example: inspera-hooks sandbox serve --port 8765 --state sandbox.db
    """
    from inspera_cli.sandbox import Sandbox, SandboxConfig

    routes = _parse_resolve(resolve or [])
    sandbox = Sandbox(
        SandboxConfig(
            host=listen_address(host),
            port=port,
            client_id=client_id,
            api_key=api_key,
            state=state_file,
            token_ttl=token_ttl,
            validation_timeout=validation_timeout,
            retries=retries,
            retry_delay=retry_delay,
            resolve=routes,
            keep=keep,
            log=lambda line: output.log_line(f"{time.strftime('%H:%M:%S')} {line}"),
        )
    )
    sandbox.start()
    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if in_main else None
    try:
        for name, value in (
            ("INSPERA_URL", sandbox.url),
            ("INSPERA_CLIENT_ID", client_id),
            ("INSPERA_API_KEY", api_key),
        ):
            print(f"export {name}={shlex.quote(value)}", flush=True)
        where = f"subscriptions in {state_file}" if state_file else "subscriptions in memory"
        output.info(f"Inspera sandbox: API at {sandbox.url}/api, {where}.")
        for public, (address, local_port) in routes.items():
            output.info(f"Requests for {public} go to http://{address}:{local_port}.")
        output.info("Fire events with `inspera-hooks sandbox fire EVENT`; Ctrl-C stops.")
        output.info(f"Ready: {sandbox.url}")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        sandbox.shutdown()
    output.info("Sandbox stopped.")


def _sandbox_request(ctx: typer.Context, method: str, path: str, body: Any = None) -> Any:
    """Call a /_sandbox route of the tenant URL (--url, INSPERA_URL or the profile)."""
    import requests

    # The client's session (User-Agent, keep-alive) and its wording for network errors.
    from inspera_cli.client import make_session, network_error
    from inspera_cli.config import resolve_settings

    app_state = state(ctx)
    settings = resolve_settings(url=app_state.url, profile=app_state.profile, timeout=app_state.timeout)
    if not settings.url:
        raise CredentialsError(
            "no sandbox URL: pass --url or set INSPERA_URL (`inspera-hooks sandbox serve` prints it)"
        )
    url = f"{settings.url}{path}"
    with make_session() as session:
        try:
            response = session.request(method, url, json=body, timeout=settings.timeout)
        except requests.RequestException as exc:
            raise network_error(exc, url, settings.timeout) from exc
    try:
        data = response.json()
    except (ValueError, RecursionError):
        data = None
    if response.status_code == 404 or not isinstance(data, dict):
        raise APIError(
            f"{settings.url} is not a sandbox (it answered {response.status_code} to {method} {path}); "
            "point --url or INSPERA_URL at `inspera-hooks sandbox serve`",
            response.status_code,
        )
    if response.status_code != 200:
        raise APIError(f"the sandbox refused: {data.get('error')}", response.status_code)
    return data


@sandbox_app.command("fire")
def fire(
    ctx: typer.Context,
    event: Annotated[
        str,
        typer.Argument(
            metavar="EVENT", help="Event name, e.g. confirm_final_grades.", autocompletion=complete_event
        ),
    ],
    object_id: Annotated[
        int | None,
        typer.Option(
            "--object-id", metavar="N",
            help="contextObjectId (default: a random test id); a burst counts up from it.",
        ),
    ] = None,
    count: Annotated[
        int,
        typer.Option(
            "--count", metavar="N", help="Fire the event N times: a burst, e.g. to load-test a receiver."
        ),
    ] = 1,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate", metavar="PER_SECOND",
            help="Space the burst's events at this many a second (default: as fast as receivers answer).",
        ),
    ] = None,
    json: JsonOption = False,
) -> None:
    """Make the sandbox deliver an event to every subscription to it; print the delivery ids.

    Deliveries are signed and retried in the background; see `inspera-hooks sandbox deliveries`.
    --count N fires a burst of N events (contextObjectIds counting up from --object-id) at each
    subscription, as fast as the receivers answer or --rate a second.

    \b
    Example:
      inspera-hooks sandbox fire confirm_final_grades --object-id 35199862
      inspera-hooks sandbox fire confirm_final_grades --count 10000 --rate 500
    """
    from inspera_cli.sandbox.burst import burst_problem

    if not event.strip():
        raise UsageError("missing EVENT: give an event name, e.g. confirm_final_grades")
    if problem := burst_problem(count, rate, names=("--count", "--rate")):
        raise UsageError(problem)
    payload: dict[str, Any] = {"event": event}
    if object_id is not None:
        payload["contextObjectId"] = object_id
    if count != 1:
        payload["count"] = count
    if rate is not None:
        payload["rate"] = rate
    data = _sandbox_request(ctx, "POST", "/_sandbox/fire", payload)
    ids = data.get("deliveryIds")
    if not isinstance(ids, list):
        raise APIError("the sandbox answered without deliveryIds")
    if json:
        output.print_json({"deliveryIds": ids})
        return
    if not ids:
        output.warn(
            f"no subscription to {event}: nothing was delivered "
            f"(create one with `inspera-hooks create --event {event} --endpoint URL`)"
        )
        return
    sys.stdout.write("".join(f"{delivery_id}\n" for delivery_id in ids))
    plural = "delivery" if len(ids) == 1 else "deliveries"
    events = f"{count} {event} events" if count > 1 else event
    output.info(
        f"Fired {events}: {len(ids)} {plural} queued; follow them with `inspera-hooks sandbox deliveries`."
    )


# (key, header, never split: cut with an ellipsis on a terminal instead)
DELIVERY_COLUMNS = [
    ("deliveryId", "Delivery", True),
    ("attempt", "Attempt", True),
    ("subscriptionId", "Subscription", True),
    ("endpoint", "Endpoint", True),
    ("status", "Status", True),
    ("error", "Error", False),
    ("time", "Time", True),
]


@sandbox_app.command("deliveries")
def deliveries(ctx: typer.Context, json: JsonOption = False) -> None:
    """List every delivery attempt the sandbox made (status, error, time), oldest first.

    Example: inspera-hooks sandbox deliveries --json
    """
    data = _sandbox_request(ctx, "GET", "/_sandbox/deliveries")
    items = data.get("deliveries")
    if not isinstance(items, list):
        raise APIError("the sandbox answered without deliveries")
    output.render(items, DELIVERY_COLUMNS, json_mode=json, title="Delivery attempts",
                  empty="No delivery attempts yet.")


def register(app: typer.Typer) -> None:
    app.add_typer(sandbox_app, name="sandbox")
