"""Option bundles and helpers shared by the commands (defined once, reused everywhere)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import typer

from inspera_cli.errors import UsageError
from inspera_cli.redaction import env_secret_problem, is_valid_utf8

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient


@dataclass
class AppState:
    """The global options, passed to every command as ``ctx.obj``."""

    url: str | None = None
    client_id: str | None = None
    profile: str | None = None
    timeout: float | None = None
    debug: bool = False
    no_color: bool = False
    _client: InsperaClient | None = field(default=None, repr=False)

    def client(self) -> InsperaClient:
        """One client (one HTTP session, keep-alive) per run."""
        if self._client is None:
            from inspera_cli.client import InsperaClient

            self._client = InsperaClient(
                url=self.url, client_id=self.client_id, profile=self.profile, timeout=self.timeout
            )
            warning = self._client.settings.override_warning()
            if warning:
                from inspera_cli import output

                output.warn(warning)
        return self._client


def state(ctx: typer.Context) -> AppState:
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj


JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly one JSON document on stdout.")]
SecretEnvOption = Annotated[
    str | None,
    typer.Option("--secret-env", metavar="VAR", help="Read the webhook secret from this variable."),
]
SecretOption = Annotated[
    str | None,
    typer.Option(
        "--secret",
        metavar="SECRET",
        help="The webhook secret (leaks into shell history: prefer --secret-env).",
    ),
]
SecretStdinOption = Annotated[
    bool, typer.Option("--secret-stdin", help="Read the webhook secret from the first line of stdin.")
]


def require_known_events(client: InsperaClient, names: list[str], *, hint: str = "") -> None:
    """Refuse (exit 2) event names the tenant does not list, with "did you mean …" and the valid
    ones; ``hint`` says how to go on anyway."""
    from inspera_cli.event_names import unknown_events

    problem = unknown_events(names, [e.event for e in client.events()])
    if problem:
        raise UsageError(f"{problem}{hint}")


def warn_unknown_events(ctx: typer.Context, names: list[str]) -> None:
    """For offline commands: warn about an event name that the tenant (when that is cheap to ask:
    see ``candidates``) or else the built-in list does not know, with "did you mean …"; go on."""
    from inspera_cli.commands.candidates import tenant_event_names
    from inspera_cli.event_names import BUILT_IN_NAMES, unknown_events
    from inspera_cli.webhook_body import VERIFICATION

    names = [name for name in names if name != VERIFICATION]
    if not names:
        return
    tenant = tenant_event_names(ctx)
    problem = unknown_events(names, tenant or BUILT_IN_NAMES)
    if problem:
        from inspera_cli import output

        whose = "the tenant's list" if tenant else "the built-in list"
        output.warn(f"{problem} ({whose}); going on with it")


def listen_address(host: str) -> str:
    """``--host`` as given; an empty one (`--host=$UNSET`) is a usage error, not every interface."""
    if not host.strip():
        raise UsageError("--host is empty: give an address, e.g. 127.0.0.1 (0.0.0.0 for every interface)")
    return host


def split_names(values: list[str] | None) -> list[str]:
    """Names from repeated options that may also be comma-separated: `--events a,b --events c`."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def resolve_secret(
    secret_env: str | None = None,
    secret: str | None = None,
    secret_stdin: bool = False,
    *,
    required: bool = False,
) -> str | None:
    """The secret from exactly one of --secret-env / --secret / --secret-stdin.

    An empty --secret-env, or an unset or empty variable, is a usage error (exit 2), never
    silently no secret; so is a secret that is not valid UTF-8. The secret is registered for redaction.
    """
    given = [
        name
        for name, v in (("--secret-env", secret_env), ("--secret", secret), ("--secret-stdin", secret_stdin))
        if v is not None and v is not False
    ]
    if len(given) > 1:
        raise UsageError(f"give only one of {', '.join(given)}")
    if secret_env is not None:
        if not secret_env.strip():
            # `--secret-env=$UNSET`: refusing it beats receiving without checking signatures.
            raise UsageError("--secret-env needs the name of an environment variable")
        problem = env_secret_problem(secret_env)
        if problem:
            raise UsageError(f"--secret-env {secret_env}: {problem}")
        return _usable_secret(os.environ[secret_env], f"--secret-env {secret_env}")
    if secret is not None:
        from inspera_cli import output

        if not secret:
            raise UsageError("--secret is empty")
        output.warn("--secret leaks into your shell history and process list; prefer --secret-env VAR")
        return _usable_secret(secret, "--secret")
    if secret_stdin:
        return _usable_secret(ask("Webhook secret", hidden=True, option="--secret-stdin"), "--secret-stdin")
    if required:
        raise UsageError("a webhook secret is needed: pass --secret-env VAR (or --secret S)")
    return None


def _usable_secret(value: str, option: str) -> str:
    from inspera_cli.redaction import register_secret

    register_secret(value)
    if not is_valid_utf8(value):
        raise UsageError(f"{option}: the secret is not valid UTF-8 text")
    return value


def ask(text: str, *, hidden: bool = False, default: str | None = None, option: str | None = None) -> str:
    """One answer: a prompt on a terminal (hidden for secrets), else the next line of stdin.

    Piped answers are read as they are (no getpass warning, nothing echoed); running out of them
    is a usage error rather than an "interrupted".
    """
    if sys.stdin.isatty():
        answer: str = typer.prompt(text, hide_input=hidden, default=default, err=True)
        return answer
    line = sys.stdin.readline().rstrip("\r\n")
    if line:
        return line
    if default:
        return default
    what = option or text.lower()
    raise UsageError(f"{what}: no answer on standard input")
