"""`apply`: make the tenant's subscriptions match a TOML file (subscriptions as code)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from inspera_cli import interrupts, output
from inspera_cli.commands.common import JsonOption, state
from inspera_cli.errors import InsperaError

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient
    from inspera_cli.reconciler import ApplyResult, Outcome, Plan


# The file `apply` reads unless -f names another.
DEFAULT_FILE = Path("inspera-hooks.toml")
# `--detailed-exitcode` (Terraform's convention): changes were made or planned. Not a usage error,
# though both are 2.
CHANGES_EXIT_CODE = 2
# The outcome of a change abandoned by a second Ctrl-C.
UNFINISHED = "outcome unknown: stopped waiting for it (apply again: it finds what was made)"


class ApplyFailed(InsperaError):
    """Some planned changes failed; the others were made."""


def apply(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Option(
            "--file", "-f", metavar="FILE", help="The subscriptions file (TOML, [[subscription]] entries)."
        ),
    ] = DEFAULT_FILE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan and change nothing.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete live subscriptions that are not in the file.")
    ] = False,
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="Exit 2 when changes were made or planned."),
    ] = False,
    concurrency: Annotated[
        int, typer.Option("--concurrency", metavar="N", min=1, max=32, help="Creates run at the same time.")
    ] = 4,
    json: JsonOption = False,
) -> None:
    """Make the tenant's subscriptions match a file: create what is missing, keep what is there.

    Each [[subscription]] entry has event, endpoint and secret_env (the name of the environment
    variable holding the secret: secrets never live in the file). A subscription is identified by
    its (event, endpoint) pair, so a second apply of the same file changes nothing. The file is
    checked before any API call; every problem is reported with its line. Ctrl-C lets the
    changes in flight finish (Ctrl-C again stops waiting), starts no other, and lists what was
    made; running apply again finishes the job. Without -f, the file is ./inspera-hooks.toml.

    Example: inspera-hooks apply --prune --dry-run

    Exit codes: 0 done (or nothing to do), 1 invalid file or a failed change (the others are made:
    run it again to finish), 2 with --detailed-exitcode when changes were made or planned,
    3 credentials, 130 interrupted.
    """
    from inspera_cli.reconciler import make_plan
    from inspera_cli.subscriptions_file import check_events, load_subscriptions_file

    if file == DEFAULT_FILE and not file.exists():
        raise InsperaError(f"no {DEFAULT_FILE} here: give the subscriptions file with -f FILE")
    spec = load_subscriptions_file(file)
    client = state(ctx).client()
    if spec.subscriptions:
        check_events(spec, (e.event for e in client.events()))
    plan = make_plan(spec.subscriptions, client.subscriptions(), prune=prune)
    if not json:
        _show_plan(plan)
    result: ApplyResult | None = None
    if not dry_run and plan.changes:
        result = _carry_out(client, plan, concurrency=concurrency, json=json)
    failures = result.failures if result else []
    for failure in failures:
        _show_failure(failure)
    if json:
        output.print_json(_plan_json(plan, result.outcomes if result else [], applied=not dry_run))
    else:
        _show_summary(plan, result, dry_run=dry_run)
    if failures:
        raise ApplyFailed(
            f"{len(failures)} of {output.counted(plan.changes, 'change')} failed (see above); fix the "
            "cause and run apply again to finish"
        )
    if detailed_exitcode and plan.changes:
        raise typer.Exit(CHANGES_EXIT_CODE)


def _carry_out(client: InsperaClient, plan: Plan, *, concurrency: int, json: bool) -> ApplyResult:
    """Apply the plan. Ctrl-C or SIGTERM lets the changes in flight finish (a second one stops
    waiting) and starts no other; then what was done is listed, and the interrupt goes on."""
    from inspera_cli.reconciler import apply_plan

    done: list[Outcome] = []
    try:
        with (
            output.progress(plan.changes, "Applying") as bar,
            interrupts.write("the changes in flight (Inspera validates each endpoint)") as stop,
        ):

            def finished(outcome: Outcome) -> None:
                done.append(outcome)
                bar.advance()

            return apply_plan(client, plan, concurrency=concurrency, on_done=finished, stop=stop)
    except KeyboardInterrupt:
        if json:
            output.print_json(_plan_json(plan, done, applied=False, unfinished=UNFINISHED))
        else:
            _show_interrupted(plan, done)
        raise


def _show_plan(plan: Plan) -> None:
    events = [d.event for d in plan.create] + [s.event for s in (*plan.delete, *plan.unchanged)]
    width = max((len(e) for e in events), default=0)

    def line(sign: str, verb: str, event: str, endpoint: str, note: str, style: str | None) -> None:
        output.styled_line(f"{sign} {verb:<9}  {event:<{width}}  {endpoint}  ({note})", style)

    for d in plan.create:
        line("+", "create", d.event, d.endpoint, f"secret from ${d.secret_env}", "green")
    for s in plan.delete:
        line("-", "delete", s.event, s.endpoint, f"id {s.subscription_id}", "red")
    for s in plan.unchanged:
        line("=", "unchanged", s.event, s.endpoint, f"id {s.subscription_id}", "dim")
    output.info(
        f"Plan: {len(plan.create)} to create, {len(plan.delete)} to delete, {len(plan.unchanged)} unchanged."
    )
    if plan.unmanaged:
        one = len(plan.unmanaged) == 1
        output.info(
            f"{output.counted(len(plan.unmanaged), 'live subscription')} not in the file "
            f"{'is' if one else 'are'} left alone (--prune deletes {'it' if one else 'them'})."
        )


def _show_failure(outcome: Outcome) -> None:
    output.styled_line(
        f"✗ {outcome.action} {outcome.event} → {outcome.endpoint} failed: {outcome.error}", "red", stderr=True
    )


def _show_summary(plan: Plan, result: ApplyResult | None, *, dry_run: bool) -> None:
    if dry_run:
        output.info("Dry run: nothing was changed.")
    elif not plan.changes:
        # With subscriptions the file does not name (left alone), the tenant does not "match" it.
        output.info("Nothing to do: the tenant matches the file." if not plan.unmanaged
                    else "Nothing to do: every subscription in the file is in place.")
    elif result is not None:
        created = sum(o.ok for o in result.created)
        deleted = sum(o.ok for o in result.deleted)
        output.info(f"Applied: {created} created, {deleted} deleted, {len(plan.unchanged)} unchanged.")


def _show_interrupted(plan: Plan, done: list[Outcome]) -> None:
    """What an interrupted apply made, and what it did not."""
    from inspera_cli.reconciler import Action

    made = [o for o in done if o.ok]
    for outcome in made:
        sign, verb = ("+", "created") if outcome.action is Action.CREATE else ("-", "deleted")
        sid = outcome.subscription.subscription_id if outcome.subscription else "?"
        output.styled_line(f"{sign} {verb}  {outcome.event}  {outcome.endpoint}  (id {sid})", "green")
    for outcome in done:
        if not outcome.ok and outcome.started:
            _show_failure(outcome)
    unfinished = plan.changes - len(done)
    not_started = sum(not o.started for o in done)
    parts = [f"{len(made)} of {output.counted(plan.changes, 'change')} made"]
    if not_started:
        parts.append(f"{not_started} not started")
    if unfinished:
        parts.append(f"{unfinished} in flight with an unknown outcome")
    output.info(f"Interrupted: {', '.join(parts)}. Run apply again to finish: it makes only what is "
                "still missing.")


def _plan_json(
    plan: Plan, outcomes: Sequence[Outcome], *, applied: bool, unfinished: str | None = None
) -> dict[str, Any]:
    """The plan with each item's outcome; ``unfinished`` is the error of an item without one."""
    from inspera_cli.reconciler import Action

    creates = {(o.event, o.endpoint): o for o in outcomes if o.action is Action.CREATE}
    deletes = {o.subscription.subscription_id: o for o in outcomes
               if o.action is Action.DELETE and o.subscription is not None}
    create_items = []
    for d in plan.create:
        outcome = creates.get(d.key)
        sub = outcome.subscription if outcome else None
        create_items.append(
            {
                "event": d.event,
                "endpoint": d.endpoint,
                "secretEnv": d.secret_env,
                "line": d.line,
                "subscriptionId": sub.subscription_id if sub else None,
                "created": bool(outcome and outcome.ok),
                "error": outcome.error if outcome else unfinished,
            }
        )
    delete_items = []
    for s in plan.delete:
        outcome = deletes.get(s.subscription_id)
        delete_items.append(
            {
                **s.to_json(),
                "deleted": bool(outcome and outcome.ok),
                "error": outcome.error if outcome else unfinished,
            }
        )
    return {
        "create": create_items,
        "delete": delete_items,
        "unchanged": [s.to_json() for s in plan.unchanged],
        "applied": applied,
    }


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
