"""`events`, `list`, `create`, `delete`: the subscription commands."""

from __future__ import annotations

import secrets
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inspera_cli import output
from inspera_cli.commands.common import JsonOption, SecretEnvOption, SecretStdinOption, resolve_secret, state
from inspera_cli.completers import complete_event, complete_subscription_id
from inspera_cli.endpoints import endpoint_problem
from inspera_cli.errors import (
    APIError,
    ExitCode,
    InsperaError,
    NotFoundError,
    SubscriptionNotListed,
    UsageError,
)

if TYPE_CHECKING:
    from inspera_cli.client import Subscription

SUBSCRIPTION_COLUMNS = [
    ("subscriptionId", "ID"),
    ("event", "Event"),
    ("endpoint", "Endpoint"),
    ("lastModified", "Last modified"),
]


def events(ctx: typer.Context, json: JsonOption = False) -> None:
    """List the event types the tenant lets you subscribe to.

    Example: inspera-hooks events --json

    Exit codes: 0 ok, 1 API or network error, 3 credentials missing or rejected.
    """
    client = state(ctx).client()
    rows = [e.to_json() for e in client.events()]
    output.render(rows, [("event", "Event"), ("description", "Description")], json_mode=json)


def list_(
    ctx: typer.Context,
    event: Annotated[
        str | None,
        typer.Option("--event", help="Only subscriptions to this event.", autocompletion=complete_event),
    ] = None,
    json: JsonOption = False,
) -> None:
    """List your webhook subscriptions.

    Example: inspera-hooks list --event confirm_final_grades

    Exit codes: 0 ok, 1 API or network error, 3 credentials missing or rejected.
    """
    subs = state(ctx).client().subscriptions(event)
    output.render([s.to_json() for s in subs], SUBSCRIPTION_COLUMNS, json_mode=json)


def check_endpoint(endpoint: str, *, allow_http: bool) -> None:
    problem = endpoint_problem(endpoint, allow_http=allow_http)
    if problem:
        hint = " (pass --allow-http to send it anyway)" if "plain http" in problem else ""
        raise UsageError(f"--{problem}{hint}")


def create(
    ctx: typer.Context,
    event: Annotated[
        list[str],
        typer.Option(
            "--event",
            help="Event to subscribe to; repeat for several (one subscription each).",
            autocompletion=complete_event,
        ),
    ],
    endpoint: Annotated[str, typer.Option("--endpoint", help="HTTPS URL Inspera will POST events to.")],
    secret_env: SecretEnvOption = None,
    secret_stdin: SecretStdinOption = False,
    if_not_exists: Annotated[
        bool, typer.Option("--if-not-exists", help="Leave an existing (event, endpoint) pair alone.")
    ] = False,
    allow_http: Annotated[
        bool, typer.Option("--allow-http", help="Allow a plain http:// endpoint that is not loopback.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Skip the check that the event exists.")] = False,
    json: JsonOption = False,
) -> None:
    """Subscribe an endpoint to one or more events (Inspera validates the endpoint first).

    With no secret given, one is generated and shown once: store it where your receiver reads it.

    Example: inspera-hooks create --event confirm_final_grades --endpoint https://hooks.example.edu/in
    --secret-env HOOK_SECRET

    Exit codes: 0 created (or existing with --if-not-exists), 1 refused (e.g. validation failed),
    2 bad arguments (unknown event, http endpoint, unset --secret-env), 3 credentials.
    """
    check_endpoint(endpoint, allow_http=allow_http)
    events_wanted = list(dict.fromkeys(event))
    given = resolve_secret(secret_env, None, secret_stdin)
    secret = given or secrets.token_hex(32)
    client = state(ctx).client()
    if not force:
        known = [e.event for e in client.events()]
        unknown = [e for e in events_wanted if e not in known]
        if unknown:
            raise UsageError(
                f"unknown event {', '.join(unknown)}; valid events: {', '.join(known) or '(none)'} "
                "(--force to send it anyway)"
            )
    existing: dict[str, Subscription] = {}
    if if_not_exists:
        existing = {s.event: s for s in client.subscriptions() if s.endpoint == endpoint}
    items: list[dict[str, Any]] = []
    refused: list[APIError] = []
    stopped: InsperaError | None = None
    for name in events_wanted:
        if name in existing:
            items.append({**existing[name].to_json(), "created": False})
            output.info(f"{name} → {endpoint} already exists (id {existing[name].subscription_id})")
            continue
        try:
            with output.spinner(f"Inspera is validating {endpoint} for {name}…"):
                sub = client.create(name, endpoint, secret)
        except SubscriptionNotListed as exc:
            refused.append(exc)
            if not given:
                output.info(f"The generated secret for {name} → {endpoint} was: {secret}")
            continue
        except APIError as exc:
            # Inspera refused this one (e.g. validation failed); the other events may still pass.
            refused.append(exc)
            output.error(str(exc))
            continue
        except InsperaError as exc:
            stopped = exc  # credentials, network: the rest would fail the same way
            break
        item = {**sub.to_json(), "created": True}
        if not given:
            item["secret"] = secret
        items.append(item)
    _render_created(items, json=json, generated=not given)
    if stopped is not None:
        raise stopped
    if refused:
        if len(events_wanted) == 1:
            raise refused[0]
        raise APIError(
            f"{len(refused)} of {len(events_wanted)} subscriptions failed; the others are in place"
        )


def _render_created(items: list[dict[str, Any]], *, json: bool, generated: bool) -> None:
    if not items and not json:
        return
    columns = [*SUBSCRIPTION_COLUMNS[:3], ("created", "Created")]
    if generated and any("secret" in i for i in items):
        columns.append(("secret", "Secret"))
    output.render(items, columns, json_mode=json)
    if generated and any("secret" in i for i in items):
        output.info(
            "[bold yellow]The generated secret is shown only this once: store it for your receiver "
            "(e.g. inspera-hooks listen --secret-env VAR).[/]",
            markup=True,
        )


def delete(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None,
        typer.Argument(metavar="ID", help="Subscription ids.", autocompletion=complete_subscription_id),
    ] = None,
    event: Annotated[
        str | None,
        typer.Option("--event", help="Delete the subscription to this event…", autocompletion=complete_event),
    ] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="…at this endpoint.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every subscription.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    missing_ok: Annotated[bool, typer.Option("--missing-ok", help="An unknown id is not an error.")] = False,
    json: JsonOption = False,
) -> None:
    """Delete subscriptions by id, by (event, endpoint), or all of them.

    Asks for confirmation on a terminal unless --yes; never prompts when stdin is not a terminal
    (then --all needs --yes).

    Example: inspera-hooks delete 1234 1235 --yes

    Exit codes: 0 deleted, 1 API error, 2 bad arguments, 3 credentials, 4 not found (without --missing-ok).
    """
    ids = ids or []
    modes = sum((bool(ids), bool(event or endpoint), all_))
    if modes != 1:
        raise UsageError("give subscription ids, or --event with --endpoint, or --all (exactly one of these)")
    if (event is None) != (endpoint is None):
        raise UsageError("--event and --endpoint go together")
    interactive = sys.stdin.isatty()
    if all_ and not yes and not interactive:
        raise UsageError("--all without --yes: refusing to delete every subscription without a terminal")
    client = state(ctx).client()
    missing: list[int] = []
    if ids:
        targets = list(dict.fromkeys(ids))
    else:
        subs = client.subscriptions(event)
        if not all_:
            subs = [s for s in subs if s.endpoint == endpoint]
            if not subs and not missing_ok:
                if json:
                    output.print_json([])
                raise NotFoundError(f"no subscription to {event} at {endpoint}")
        targets = [s.subscription_id for s in subs]
    if targets and interactive and not yes:
        what = "every subscription" if all_ else f"subscription(s) {', '.join(map(str, targets))}"
        if not typer.confirm(f"Delete {what}?", err=True):
            output.info("Nothing deleted.")
            raise typer.Exit(ExitCode.FAILURE)
    results = []
    for sid in targets:
        deleted = client.delete(sid, missing_ok=True)
        if not deleted:
            missing.append(sid)
        results.append({"subscriptionId": sid, "deleted": deleted})
    output.render(results, [("subscriptionId", "ID"), ("deleted", "Deleted")], json_mode=json)
    if missing and not missing_ok:
        raise NotFoundError(f"no subscription with id {', '.join(map(str, missing))}")


def register(app: typer.Typer) -> None:
    app.command("events")(events)
    app.command("list")(list_)
    app.command("create")(create)
    app.command("delete")(delete)
