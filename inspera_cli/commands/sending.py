"""`trigger` and `replay`: send signed webhooks to a receiver, as Inspera would, and show its answers."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inspera_cli import output
from inspera_cli.commands.candidates import complete_event
from inspera_cli.commands.common import (
    JsonOption,
    SecretEnvOption,
    SecretOption,
    SecretStdinOption,
    resolve_secret,
    warn_unknown_events,
)
from inspera_cli.errors import UsageError

if TYPE_CHECKING:
    from inspera_cli.sending import DeliveryResult

# The contextObjectId of the example in Inspera's documentation.
DEFAULT_OBJECT_ID = 35199862

# Where `listen` receives by default.
DEFAULT_RECEIVER = "http://127.0.0.1:8000/"

ToOption = Annotated[
    str,
    typer.Option("--to", metavar="URL", help="The receiver to POST to, e.g. http://127.0.0.1:8000/."),
]


def trigger(
    ctx: typer.Context,
    event: Annotated[
        str | None,
        typer.Argument(
            metavar="EVENT",
            help="Event name, e.g. confirm_final_grades (not needed with --verification).",
            autocompletion=complete_event,
        ),
    ] = None,
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    secret_stdin: SecretStdinOption = False,
    object_id: Annotated[
        int | None,
        typer.Option(
            "--object-id", metavar="N", help=f"contextObjectId of the event [default: {DEFAULT_OBJECT_ID}]."
        ),
    ] = None,
    verification: Annotated[
        bool,
        typer.Option("--verification", help="Send the endpoint-validation request Inspera sends on create."),
    ] = False,
    legacy_format: Annotated[
        bool,
        typer.Option("--legacy-format", help="Java map text instead of JSON, as in older documentation."),
    ] = False,
    repeat: Annotated[
        int,
        typer.Option(
            "--repeat", metavar="N", min=1, help="Send the identical bytes N times, like Inspera's retries."
        ),
    ] = 1,
    to: Annotated[
        str,
        typer.Option("--to", metavar="URL", help="The receiver to POST to (default: a default `listen`)."),
    ] = DEFAULT_RECEIVER,
    wait: Annotated[
        float,
        typer.Option("--wait", metavar="SECONDS", min=0,
                     help="While nothing listens at --to, keep trying this long (a receiver starting)."),
    ] = 5.0,
    json_mode: JsonOption = False,
) -> None:
    """Send one signed event to a receiver exactly as Inspera would, and show each answer.

    The body is Inspera's thin payload (contextObjectId, event, timestamp), signed with
    HMAC-SHA1 in the X-Inspera-Signature header and POSTed as application/json with a 10 s
    timeout. With --repeat the very same bytes go again, so you can check that your receiver
    is idempotent. Without a secret the request goes unsigned (with a warning): a receiver that
    verifies signatures should then answer 401.

    --to defaults to where a default `listen` receives, and a refused connection is tried again
    for up to --wait seconds, so `listen --exit-after 1 & trigger EVENT` never races. An event
    name the tenant (or, offline, the built-in list) does not know is sent with a warning.

    Example:
      inspera-hooks trigger confirm_final_grades --secret-env S
      inspera-hooks trigger --verification --to http://127.0.0.1:5000/hooks --secret-env S --json

    Exit codes: 0 every answer was 200; 1 any other answer, or none; 2 usage error.
    """
    from inspera_cli import sending, webhook_body

    if event == webhook_body.VERIFICATION:
        verification = True
    if verification:
        if event not in (None, webhook_body.VERIFICATION):
            raise UsageError(f"--verification sends the validation request: drop the EVENT {event!r}")
        if object_id is not None:
            raise UsageError("--verification always has contextObjectId 0: drop --object-id")
    elif event is None or not event.strip():
        raise UsageError("missing EVENT (e.g. confirm_final_grades), or pass --verification")
    else:
        warn_unknown_events(ctx, [event])
    _check_url(to)
    key = _secret_or_unsigned(secret_env, secret, secret_stdin)

    if verification:
        body = webhook_body.verification_body(legacy=legacy_format)
    else:
        assert event is not None
        body = webhook_body.build_body(
            event,
            DEFAULT_OBJECT_ID if object_id is None else object_id,
            legacy=legacy_format,
        )
    output.info(
        f"POST {to} ({len(body)} bytes, {'signed' if key else 'unsigned'}"
        f"{f', {repeat} times' if repeat > 1 else ''}): {body.decode('utf-8')}"
    )
    results = sending.send_repeated(to, body, key, repeat=repeat, wait=wait)
    _report(_noting_refusals(results, to, wait), json_mode=json_mode, with_event=False)


def _noting_refusals(results: Iterable[DeliveryResult], to: str, wait: float) -> Iterator[DeliveryResult]:
    """The results, with a hint on stderr when nothing listened at all."""
    for result in results:
        if result.refused and result.attempt == 1:
            waited = f" (tried for {wait:g} s)" if wait else ""
            output.info(f"Nothing listens at {to}{waited}: start `inspera-hooks listen`, or give --to URL.")
        yield result


def replay(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(metavar="FILE", help="A file written by `listen --record`.")],
    to: ToOption,
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    secret_stdin: SecretStdinOption = False,
    event: Annotated[
        str | None,
        typer.Option(
            "--event", metavar="EVENT", help="Only events of this type.", autocompletion=complete_event
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="ISO",
            help="Only events received at or after this time, e.g. 2024-05-01T14:00 (local time "
            "unless it has a zone).",
        ),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option("--last", metavar="N", min=1, help="Only the last N events that match."),
    ] = None,
    failed: Annotated[
        bool,
        typer.Option("--failed", help="Each event whose latest recorded copy was not answered 2xx, "
                     "once (that copy)."),
    ] = False,
    all_attempts: Annotated[
        bool,
        typer.Option("--all-attempts", help="With --failed: every copy that was not answered 2xx "
                     "(each of Inspera's retries)."),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict",
                     help="A torn or corrupt line is an error (default: skipped with a warning)."),
    ] = False,
    json_mode: JsonOption = False,
) -> None:
    """Re-send events recorded by `listen --record`, byte for byte, re-signed, in their order.

    Verification requests are skipped. Each body is sent exactly as it was received, signed
    with the given secret (unsigned, with a warning, when none is given), with a 10 s timeout;
    each answer is printed with the event and its contextObjectId. Reproduce a delivery your app
    failed on, against a local app, at will: --failed sends each failed event once (the copy
    Inspera sent last), --all-attempts every failed copy.
    The file is streamed, never held in memory; a torn or corrupt line is skipped with a warning
    naming its line number (--strict: an error, before anything is sent).

    \b
    Example:
      inspera-hooks replay events.jsonl --to http://127.0.0.1:5000/hooks --secret-env S --failed

    Exit codes: 0 every answer was 200 (or nothing matched); 1 any other answer, or none, or an
    unreadable file (or, with --strict, a corrupt line); 2 usage error.
    """
    from inspera_cli import recording, sending
    from inspera_cli.commands.rendering import CorruptWarnings

    _check_url(to)
    if all_attempts and not failed:
        raise UsageError("--all-attempts goes with --failed (without it every copy is sent anyway)")
    if event is not None:
        warn_unknown_events(ctx, [event])
    since_time = None
    if since is not None:
        try:
            since_time = recording.parse_time(since)
        except ValueError:
            raise UsageError(
                f"--since {since!r} is not an ISO date or time (e.g. 2024-05-01T14:00:00Z)"
            ) from None
    chosen = recording.Selection(Path(file), strict=strict, on_corrupt=CorruptWarnings(), event=event,
                                 since=since_time, failed=failed, all_attempts=all_attempts, last=last)
    if not chosen.count:
        output.warn(f"nothing to replay: none of the {chosen.total} requests in {file} match")
        if json_mode:
            output.print_json([])
        return
    key = _secret_or_unsigned(secret_env, secret, secret_stdin)
    what = (f"{output.counted(chosen.count, 'failed event')} (each once: its latest copy)" if chosen.once
            else f"{chosen.count} of {output.counted(chosen.total, 'recorded request')}")
    output.info(f"Replaying {what} to {to} ({'re-signed' if key else 'unsigned'})")
    _report(sending.replay(chosen, to, key), json_mode=json_mode, with_event=True)


def _check_url(url: str) -> None:
    from inspera_cli.network import check_http_url

    check_http_url(url, "--to")


def _secret_or_unsigned(secret_env: str | None, secret: str | None, secret_stdin: bool) -> str | None:
    key = resolve_secret(secret_env, secret, secret_stdin)
    if key is None:
        output.warn(
            "no secret given: sending without an X-Inspera-Signature header (a verifying receiver "
            "should answer 401); pass --secret-env VAR to sign"
        )
    return key


def _report(results: Iterable[DeliveryResult], *, json_mode: bool, with_event: bool) -> None:
    """Show each answer as it comes (a line each, or a streamed JSON array), then exit 1 unless
    all were 200."""
    ok = total = 0
    json_items = []
    for result in results:
        total += 1
        ok += result.ok
        if json_mode:
            json_items.append(result.to_json(with_event=with_event))
            if len(json_items) >= 1000:
                output.print_json_items(json_items, first=total == len(json_items))
                json_items = []
        else:
            _print_result(result, with_event=with_event)
    if json_mode:
        output.print_json_items(json_items, first=total == len(json_items), last=True)
    if total > 1 or ok < total:
        output.info(f"{ok} of {total} answered 200")
    if ok < total:
        raise typer.Exit(1)


def _print_result(result: DeliveryResult, *, with_event: bool) -> None:
    if result.status is None:
        answer, style = f"no answer: {result.error}", "red"
    else:
        answer = f"{result.status} {result.reason}".rstrip()
        if result.answer_excerpt:
            answer += f" — {result.answer_excerpt}"
        style = "green" if result.ok else "red"
    label = f"#{result.attempt}"
    if with_event:
        object_id = "" if result.context_object_id is None else f" {result.context_object_id}"
        label += f"  {result.event or '(unparsed body)'}{object_id}"
    output.console(stderr=False).print(
        f"{label}  {answer}  {result.latency_ms:.1f} ms", style=style, markup=False
    )


def register(app: typer.Typer) -> None:
    app.command("trigger")(trigger)
    app.command("replay")(replay)
