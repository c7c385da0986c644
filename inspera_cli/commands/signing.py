"""`sign` and `verify`: the signature of a body, and why one does not match, for testing a receiver."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from inspera_cli import output
from inspera_cli.commands.common import (
    JsonOption,
    SecretEnvOption,
    SecretOption,
    SecretStdinOption,
    resolve_secret,
)
from inspera_cli.errors import InsperaError, UsageError

BodyArgument = Annotated[
    str,
    typer.Argument(metavar="FILE|-", help="The body: a file, or - for standard input (default)."),
]


def sign_body(
    file: BodyArgument = "-",
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    secret_stdin: SecretStdinOption = False,
    json_mode: JsonOption = False,
) -> None:
    """Print the X-Inspera-Signature (hex HMAC-SHA1) of a body, to send it with curl, say.

    The body is read as raw bytes: mind that echo and most editors add a trailing newline,
    which changes the signature (printf '%s' does not).

    \b
    Example:
      inspera-hooks sign --secret-env S body.json
      inspera-hooks sign --secret-env S body.json --json      # {"signature": "..."}

    Exit codes: 0 printed; 1 the file cannot be read; 2 usage error (e.g. no secret).
    """
    from inspera_cli.signing import sign

    body, key = _body_and_secret(file, secret_env, secret, secret_stdin)
    signature = sign(body, key)
    if json_mode:
        output.print_json({"signature": signature})
    else:
        typer.echo(signature)


def verify(
    signature: Annotated[
        str,
        typer.Option("--signature", metavar="HEX", help="The X-Inspera-Signature value to check."),
    ],
    file: BodyArgument = "-",
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    secret_stdin: SecretStdinOption = False,
    json_mode: JsonOption = False,
) -> None:
    """Check a signature against a body; when it does not match, say the most likely reason.

    Prints 'valid', or 'invalid' with the reason on stderr: a different secret, a newline
    added to the body, JSON re-serialised after signing (key order or spacing), an empty
    signature, a pasted header name. A 'sha1=' prefix and upper-case hex are accepted, with a note.

    \b
    Example:
      inspera-hooks verify --secret-env S --signature "$SIGNATURE" body.json
      inspera-hooks verify --secret-env S --signature "$SIGNATURE" body.json --json

    With --json: {"valid": bool, "reason": str|null, "notes": [str]} on stdout.

    Exit codes: 0 valid; 1 invalid (or the file cannot be read); 2 usage error.
    """
    from inspera_cli.signing import diagnose_signature

    body, key = _body_and_secret(file, secret_env, secret, secret_stdin)
    diagnosis = diagnose_signature(body, signature, key)
    reason = None if diagnosis.valid else diagnosis.reason or "the signature is not valid"
    if json_mode:
        output.print_json({"valid": diagnosis.valid, "reason": reason, "notes": list(diagnosis.notes)})
    else:
        for note in diagnosis.notes:
            output.info(f"note: {note}")
        typer.echo("valid" if diagnosis.valid else "invalid")
    if reason is not None:
        output.error(reason)
        raise typer.Exit(1)


def _body_and_secret(
    file: str, secret_env: str | None, secret: str | None, secret_stdin: bool
) -> tuple[bytes, str]:
    if secret_stdin and file == "-":
        raise UsageError("--secret-stdin takes standard input, so give the body as a FILE")
    key = resolve_secret(secret_env, secret, secret_stdin, required=True)
    assert key is not None
    return _read_body(file), key


def _read_body(file: str) -> bytes:
    if file == "-":
        if output.is_terminal(sys.stdin):
            output.info("Reading the body from standard input (end with Ctrl-D)…")
        return sys.stdin.buffer.read()
    try:
        return Path(file).read_bytes()
    except FileNotFoundError:
        raise InsperaError(f"{file}: no such file") from None
    except OSError as exc:
        raise InsperaError(f"{file}: cannot read: {exc.strerror or exc}") from None


def register(app: typer.Typer) -> None:
    app.command("sign")(sign_body)
    app.command("verify")(verify)
