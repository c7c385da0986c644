"""`events`, `list`, `create`, `delete`: the subscription commands."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from inspera_cli import output
from inspera_cli.commands.candidates import complete_event, complete_subscription_id
from inspera_cli.commands.common import (
    JsonOption,
    SecretEnvOption,
    SecretStdinOption,
    require_known_events,
    resolve_secret,
    split_names,
    state,
)
from inspera_cli.errors import APIError, ExitCode, NotFoundError, UsageError

if TYPE_CHECKING:
    from inspera_cli.api_models import Subscription
    from inspera_cli.subscribing import CreateOutcome

# (key, header, no_wrap): an id, a name, a URL or a timestamp is never split across lines on a
# terminal, but cut with an ellipsis when the table is too wide.
SUBSCRIPTION_COLUMNS: list[tuple[str, str, bool]] = [
    ("subscriptionId", "ID", True),
    ("event", "Event", True),
    ("endpoint", "Endpoint", True),
    ("lastModified", "Last modified", True),
]


def events(ctx: typer.Context, json: JsonOption = False) -> None:
    """List the event types the tenant lets you subscribe to.

    Example: inspera-hooks events --json

    Exit codes: 0 ok, 1 API or network error, 3 credentials missing or rejected.
    """
    client = state(ctx).client()
    rows = [e.to_json() for e in client.events()]
    output.render(rows, [("event", "Event", True), ("description", "Description")], json_mode=json,
                  empty="The tenant lists no event types.")


def list_(
    ctx: typer.Context,
    event: Annotated[
        str | None,
        typer.Option("--event", metavar="EVENT", help="Only subscriptions to this event.",
                     autocompletion=complete_event),
    ] = None,
    json: JsonOption = False,
) -> None:
    """List your webhook subscriptions.

    Example: inspera-hooks list --event confirm_final_grades

    Exit codes: 0 ok, 1 API or network error, 2 unknown --event, 3 credentials missing or rejected.
    """
    client = state(ctx).client()
    if event is not None:
        require_known_events(client, [event])
    subs = client.subscriptions(event)
    empty = f"No subscriptions to {event}." if event else "No subscriptions."
    output.render([s.to_json() for s in subs], SUBSCRIPTION_COLUMNS, json_mode=json, empty=empty)


def check_endpoint(endpoint: str, *, allow_http: bool) -> None:
    from inspera_cli.subscribing import endpoint_problem

    problem = endpoint_problem(endpoint, allow_http=allow_http)
    if problem:
        hint = " (pass --allow-http to send it anyway)" if problem.plain_http else ""
        raise UsageError(f"--{problem.message}{hint}")


def create(
    ctx: typer.Context,
    event: Annotated[
        list[str],
        typer.Option(
            "--event",
            metavar="EVENT",
            help="Event to subscribe to; repeat or separate with commas for several (one subscription each).",
            autocompletion=complete_event,
        ),
    ],
    endpoint: Annotated[
        str, typer.Option("--endpoint", metavar="URL", help="HTTPS URL Inspera will POST events to.")
    ],
    secret_env: SecretEnvOption = None,
    secret_stdin: SecretStdinOption = False,
    if_not_exists: Annotated[
        bool, typer.Option("--if-not-exists", help="Leave an existing (event, endpoint) pair alone (exit 0).")
    ] = False,
    allow_duplicate: Annotated[
        bool,
        typer.Option("--allow-duplicate", help="Subscribe an existing (event, endpoint) pair again "
                     "(each event is then delivered twice)."),
    ] = False,
    allow_http: Annotated[
        bool, typer.Option("--allow-http", help="Allow a plain http:// endpoint that is not loopback.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Skip the check that the event exists.")] = False,
    json: JsonOption = False,
) -> None:
    """Subscribe an endpoint to one or more events (Inspera validates the endpoint first).

    With no secret given, one is generated and shown once, on its own line ("Webhook secret: ..."
    on stderr): store it where your receiver reads it. An (event, endpoint) pair that is already
    subscribed is refused unless --if-not-exists or --allow-duplicate. Ctrl-C while Inspera
    validates waits for its answer (Ctrl-C again stops waiting), then shows what was made.

    Example:
      inspera-hooks create --event confirm_final_grades,complete_grading \\
          --endpoint https://hooks.example.edu/inspera --secret-env HOOK_SECRET

    Exit codes: 0 created (or existing with --if-not-exists), 1 refused (validation failed, the
    pair exists), 2 bad arguments (unknown event, http endpoint, unset --secret-env), 3 credentials,
    130 interrupted.
    """
    import secrets

    from inspera_cli.subscribing import CreateState, Duplicates, create_subscriptions

    check_endpoint(endpoint, allow_http=allow_http)
    if if_not_exists and allow_duplicate:
        raise UsageError("--if-not-exists and --allow-duplicate are exclusive")
    events_wanted = list(dict.fromkeys(split_names(event)))
    if not events_wanted:
        raise UsageError("--event: give an event name")
    given = resolve_secret(secret_env, None, secret_stdin)
    secret = given or secrets.token_hex(32)
    client = state(ctx).client()
    if not force:
        require_known_events(client, events_wanted, hint=" (--force to send it anyway)")
    duplicates = Duplicates.REFUSE
    if if_not_exists or allow_duplicate:
        duplicates = Duplicates.SKIP if if_not_exists else Duplicates.ALLOW
    how_to_pass = _HOW_TO_PASS if given else f"{_HOW_TO_PASS}; a generated one is new to every receiver"
    outcomes: list[CreateOutcome] = []
    try:
        create_subscriptions(
            client,
            events_wanted,
            endpoint,
            secret,
            on_outcome=outcomes.append,
            duplicates=duplicates,
            busy=lambda name: output.spinner(f"Inspera is validating {endpoint} for {name}…"),
            how_to_pass=how_to_pass,
        )
    except BaseException:
        # Interrupted, or stopped by a network or credentials error: what exists is shown still.
        _render_created(outcomes, json=json, generated=None if given else secret)
        for outcome in outcomes:
            if outcome.state is CreateState.UNKNOWN:
                output.warn(f"{outcome.event} → {outcome.endpoint}: {outcome.error}; check "
                            f"inspera-hooks list --event {outcome.event}")
        raise
    _render_created(outcomes, json=json, generated=None if given else secret)
    _raise_failures(outcomes, len(events_wanted))


_HOW_TO_PASS = "create with the receiver's secret (--secret-env VAR or --secret-stdin)"


def _render_created(outcomes: list[CreateOutcome], *, json: bool, generated: str | None) -> None:
    """The subscriptions in place as a table (--json: every outcome), and a generated secret on a
    line of its own when a subscription may hold it."""
    from inspera_cli.commands.rendering import show_secret
    from inspera_cli.subscribing import CreateState

    for outcome in outcomes:
        if outcome.state is CreateState.EXISTING and outcome.subscription is not None:
            output.info(f"{outcome.event} → {outcome.endpoint} already exists "
                        f"(id {outcome.subscription.subscription_id})")
    holding = [o for o in outcomes if o.state in (CreateState.CREATED, CreateState.UNKNOWN)]
    if json:
        items = [o.to_json() for o in outcomes]
        if generated:
            for item, outcome in zip(items, outcomes, strict=True):
                if outcome in holding:
                    item["secret"] = generated
        output.print_json(items)
    else:
        rows = [o.to_json() for o in outcomes if o.in_place]
        if rows:
            output.render(rows, [*SUBSCRIPTION_COLUMNS[:3], ("created", "Created")], json_mode=False)
    if generated and holding:
        show_secret(generated)
        output.info(
            "[bold yellow]The generated secret is shown only this once: store it for your receiver "
            "(e.g. inspera-hooks listen --secret-env VAR).[/]",
            markup=True,
        )


def _raise_failures(outcomes: list[CreateOutcome], wanted: int) -> None:
    """One error for what was not made: the reason itself for one event, else a line per event
    and a count that says what is in place."""
    failed = [o for o in outcomes if not o.in_place]
    if not failed:
        return
    if wanted == 1:
        raise APIError(_failure_text(failed[0]), failed[0].status)
    for outcome in failed:
        output.styled_line(f"✗ {outcome.event}: {_failure_text(outcome)}", "red", stderr=True)
    in_place = len(outcomes) - len(failed)
    if in_place == 0:
        raise APIError(f"none of the {wanted} subscriptions was created")
    others = "the other one is" if in_place == 1 else f"the other {in_place} are"
    raise APIError(f"{len(failed)} of {wanted} subscriptions failed; {others} in place")


def _failure_text(outcome: CreateOutcome) -> str:
    from inspera_cli.subscribing import CreateState

    if outcome.state is CreateState.DUPLICATE:
        return (f"{outcome.error}: --if-not-exists leaves it alone, --allow-duplicate makes another "
                "(each event is then delivered to both)")
    return outcome.error or "not created"


def delete(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None,
        typer.Argument(metavar="ID", help="Subscription ids.", autocompletion=complete_subscription_id),
    ] = None,
    event: Annotated[
        str | None,
        typer.Option("--event", metavar="EVENT", autocompletion=complete_event,
                     help="Delete the subscription to this event (with --endpoint)."),
    ] = None,
    endpoint: Annotated[
        str | None,
        typer.Option("--endpoint", metavar="URL", help="Delete the subscription at this URL (with --event)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Delete every subscription.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    missing_ok: Annotated[bool, typer.Option("--missing-ok", help="An unknown id is not an error.")] = False,
    json: JsonOption = False,
) -> None:
    """Delete subscriptions by id, by (event, endpoint), or all of them.

    Every id is checked first (a mistyped one deletes nothing). Asks for confirmation on a terminal,
    showing each subscription's event and endpoint, unless --yes; never prompts when stdin is not
    a terminal (then --all needs --yes).

    Example: inspera-hooks delete 1234 1235 --yes

    Exit codes: 0 deleted, 1 API error, 2 bad arguments, 3 credentials, 4 not found (without --missing-ok).
    """
    ids = ids or []
    modes = sum((bool(ids), bool(event or endpoint), all_))
    if modes != 1:
        raise UsageError("give subscription ids, or --event with --endpoint, or --all (exactly one of these)")
    if (event is None) != (endpoint is None):
        raise UsageError("--event and --endpoint go together")
    if endpoint is not None and not endpoint.strip():
        raise UsageError("--endpoint is empty: give the subscription's URL")
    interactive = sys.stdin.isatty()
    if all_ and not yes and not interactive:
        raise UsageError("--all without --yes: refusing to delete every subscription without a terminal")
    client = state(ctx).client()
    if event is not None:
        require_known_events(client, [event])
    live = client.subscriptions(event)
    wanted = list(dict.fromkeys(ids))
    if ids:
        by_id = {s.subscription_id: s for s in live}
        targets = [by_id[sid] for sid in wanted if sid in by_id]
    else:
        targets = [s for s in live if all_ or s.endpoint == endpoint]
    missing = [sid for sid in wanted if sid not in {t.subscription_id for t in targets}]
    if (missing or not (ids or all_ or targets)) and not missing_ok:
        # Checked before anything is asked or deleted: a mistyped id deletes nothing.
        if json:
            output.print_json([{"subscriptionId": sid, "deleted": False} for sid in wanted])
        raise NotFoundError(f"no subscription with id {', '.join(map(str, missing))}" if ids
                            else f"no subscription to {event} at {endpoint}")
    if targets and interactive and not yes and not _confirmed(targets, every=all_):
        output.info("Nothing deleted.")
        raise typer.Exit(ExitCode.FAILURE)
    deleted = {t.subscription_id: client.delete(t.subscription_id, missing_ok=True) for t in targets}
    results = [{"subscriptionId": sid, "deleted": deleted.get(sid, False)} for sid in wanted or deleted]
    output.render(results, [("subscriptionId", "ID"), ("deleted", "Deleted")], json_mode=json,
                  empty="No subscriptions to delete.")
    gone = [sid for sid, done in deleted.items() if not done]
    if gone and not missing_ok:
        raise NotFoundError(f"no subscription with id {', '.join(map(str, gone))} (deleted meanwhile?)")


def _confirmed(targets: list[Subscription], *, every: bool) -> bool:
    """Ask on the terminal, showing what each subscription is."""
    width = max(len(t.event) for t in targets)
    for t in targets[:_SHOWN_BEFORE_ASKING]:
        output.info(f"  {t.subscription_id}  {t.event:<{width}}  {t.endpoint}")
    if len(targets) > _SHOWN_BEFORE_ASKING:
        output.info(f"  … and {len(targets) - _SHOWN_BEFORE_ASKING} more")
    if len(targets) == 1:
        question = "Delete this subscription?"
    else:
        question = f"Delete {'all' if every else 'these'} {len(targets)} subscriptions?"
    return typer.confirm(question, err=True)


_SHOWN_BEFORE_ASKING = 20


def register(app: typer.Typer) -> None:
    app.command("events")(events)
    app.command("list")(list_)
    app.command("create")(create)
    app.command("delete")(delete)
