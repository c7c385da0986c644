"""`doctor`: a checklist of what must be right before Inspera can deliver events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from inspera_cli import output
from inspera_cli.commands.common import JsonOption, SecretEnvOption, SecretOption, resolve_secret, state
from inspera_cli.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from inspera_cli.checks import Check


def doctor(
    ctx: typer.Context,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            metavar="URL",
            help="Also check this webhook endpoint the way Inspera validates it.",
        ),
    ] = None,
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    json: JsonOption = False,
) -> None:
    """Check that Inspera can deliver events: settings, tenant, credentials, and your endpoint.

    Checks the settings (and where each came from), that the tenant answers, that the credentials
    are accepted and that the events API answers. With --endpoint, also whether Inspera's validation
    of that endpoint would pass: HTTPS, public DNS, a valid TLS certificate, and 200 to a signed
    verification POST within 10 s. The POST is signed with the given secret, or a throwaway one.

    Each check is a line that starts with a check mark or a cross, with how to fix it.

    Example: inspera-hooks doctor --endpoint https://hooks.example.edu/inspera --secret-env HOOK_SECRET

    Exit codes: 0 every check passed, 1 a check failed, 2 bad arguments.
    """
    from inspera_cli import checks

    if (secret_env or secret) and endpoint is None:
        raise UsageError("--secret-env and --secret sign the validation POST: they need --endpoint URL")
    given = resolve_secret(secret_env, secret)
    results: list[Check] = []
    # Read at call time, so that tests can shorten Inspera's limit.
    limit = checks.VALIDATION_TIMEOUT
    for check in checks.iter_checks(
        state(ctx).client, endpoint=endpoint, secret=given, validation_timeout=limit
    ):
        results.append(check)
        if not json:
            _show(check)
    if json:
        output.print_json([c.to_json() for c in results])
    failed = sum(not c.ok for c in results)
    if not json:
        if failed:
            skipped = sum(c.status is checks.CheckStatus.SKIP for c in results)
            could_not_run = f" ({skipped} of them could not run)" if skipped else ""
            output.info(f"{failed} of {len(results)} checks failed{could_not_run}.")
        else:
            output.info(f"All {len(results)} checks passed.")
    if failed:
        raise typer.Exit(ExitCode.FAILURE)


def _show(check: Check) -> None:
    from inspera_cli.checks import CheckStatus

    out = output.console(stderr=False)
    if check.ok:
        out.print("✓", style="green", end=" ", markup=False, highlight=False)
    else:
        style = "dim" if check.status is CheckStatus.SKIP else "red"
        out.print("✗", style=style, end=" ", markup=False, highlight=False)
    out.print(f"{check.check}: {check.detail}", markup=False, highlight=False)
    if check.fix:
        out.print(f"  fix: {check.fix}", style="yellow", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
