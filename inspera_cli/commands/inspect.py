"""`inspera-hooks inspect FILE`: the inspector page over a record file (and `listen --inspect`'s
options and start-up, shared here)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from inspera_cli import output
from inspera_cli.commands.common import SecretEnvOption, SecretOption, resolve_secret

if TYPE_CHECKING:
    from inspera_cli.inspector import Inspector
    from inspera_cli.listener import Listener, ListenerConfig

DEFAULT_PORT = 4041  # also listen --inspect-port's
DEFAULT_KEEP = 1000  # also listen --inspect-keep's

KeepOption = Annotated[
    int,
    typer.Option("--keep", min=1, metavar="N", help="Show at most the last N requests."),
]


def inspect(
    file: Annotated[str, typer.Argument(metavar="FILE",
                                        help="A file written by `listen --record` (followed as it grows).")],
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, metavar="PORT",
                          help="Serve the page on 127.0.0.1 at this port; 0 picks a free one.")
    ] = DEFAULT_PORT,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="URL", help="Where Replay sends by default, e.g. your app."),
    ] = None,
    secret_env: SecretEnvOption = None,
    secret: SecretOption = None,
    keep: KeepOption = DEFAULT_KEEP,
) -> None:
    """Browse a record file in a local web page, and replay from it; follows the file as it grows.

    The page lists the requests newest first (live, as `listen` appends them), shows each one's
    body byte for byte, parsed payload, headers and answers, and replays it to --to (or a URL
    typed in) re-signed with the secret. It is served on 127.0.0.1 only.

    \b
    Example:
      inspera-hooks inspect events.jsonl --to http://127.0.0.1:5000/hooks --secret-env HOOK_SECRET

    Exit codes: 0 stopped with Ctrl-C; 1 the file cannot be read or the port is taken; 2 usage error.
    """
    from inspera_cli.commands.rendering import CorruptWarnings
    from inspera_cli.inspector import Inspector, InspectorConfig
    from inspera_cli.network import check_http_url

    if to is not None:
        check_http_url(to, "--to", allow_userinfo=False)
    key = resolve_secret(secret_env, secret)
    if key is None:
        output.warn("no secret given: replays are sent unsigned (pass --secret-env VAR to sign them)")
    inspector = Inspector(
        InspectorConfig(port=port, keep=keep, secret=key, targets={None: to} if to else {},
                        source=str(file)),
        on_corrupt=CorruptWarnings(),
    )
    inspector.follow(file)
    inspector.start()
    try:
        announce(inspector)
        output.info(f"Following {file} ({len(inspector.store)} requests shown); Ctrl-C to stop.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass  # Ctrl-C and SIGTERM are how a page server is meant to stop
    finally:
        inspector.close()


def announce(inspector: Inspector) -> None:
    """The one line that gives the page's address (`listen --inspect` and `inspect`)."""
    output.info(f"Inspect: {inspector.url}")


def start_for_listener(listener: Listener, config: ListenerConfig, port: int, keep: int) -> Inspector:
    """`listen --inspect`: the page for this listener (history from --record), observing it from
    before it starts; ``serve_on`` then serves it on the listener's loop."""
    from inspera_cli.inspector import Inspector, InspectorConfig

    inspector = Inspector(InspectorConfig(port=port, keep=keep, secret=config.secret,
                                          targets=dict(config.forward), port_option="--inspect-port"))
    if config.record is not None:
        inspector.load(config.record)
    inspector.attach(listener)
    return inspector


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
