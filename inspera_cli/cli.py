"""The Typer app: global options, command registration, and the one place errors become exit codes."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from inspera_cli import interrupts, output
from inspera_cli._version import __version__
from inspera_cli.commands import (
    apply,
    completion,
    config,
    demo,
    doctor,
    listen,
    sandbox,
    signing,
    subscriptions,
)
from inspera_cli.commands.common import AppState
from inspera_cli.errors import ExitCode, InsperaError

# Typer has shipped Click both as a dependency and vendored: take its exception classes from
# wherever this Typer gets them rather than importing `click`.
_click_exceptions = sys.modules[typer.BadParameter.__module__]
_PASS_THROUGH: tuple[type[BaseException], ...] = (typer.Exit, _click_exceptions.ClickException)


class InsperaGroup(TyperGroup):
    """Maps domain exceptions to one-line errors and exit codes; ``--debug`` re-raises."""

    def invoke(self, ctx: Any) -> Any:
        # One Ctrl-C/SIGTERM policy for every command (interrupts.py).
        with interrupts.handled(output.info):
            return self._invoke(ctx)

    def _invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except typer.Abort:
            output.error("interrupted")
            ctx.exit(ExitCode.INTERRUPTED)
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            output.error("interrupted")
            ctx.exit(ExitCode.INTERRUPTED)
        except InsperaError as exc:
            if _debug(ctx):
                raise
            output.error(str(exc))
            ctx.exit(exc.exit_code)
        except Exception as exc:
            if _debug(ctx):
                raise
            output.error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)")
            ctx.exit(ExitCode.FAILURE)


def _debug(ctx: Any) -> bool:
    return isinstance(ctx.obj, AppState) and ctx.obj.debug


app = typer.Typer(
    cls=InsperaGroup,
    name="inspera-hooks",
    help="Inspera Assessment webhooks from the command line: subscriptions, a verifying "
    "local receiver, a signing toolkit and a sandbox tenant.",
    no_args_is_help=True,
    # `inspera-hooks completion SHELL` replaces Typer's --install-completion / --show-completion.
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"inspera-hooks {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="Tenant URL, e.g. https://example.inspera.no.")
    ] = None,
    client_id: Annotated[str | None, typer.Option("--client-id", help="API client id.")] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", help="Profile in the config file.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="HTTP timeout in seconds.", min=0.1)
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Log HTTP exchanges (redacted) and show tracebacks.")
    ] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="No colours (NO_COLOR too).")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    output.configure(no_color=no_color)
    _configure_debug_log(debug)
    ctx.obj = AppState(
        url=url, client_id=client_id, profile=profile, timeout=timeout, debug=debug, no_color=no_color
    )


class _DebugHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _configure_debug_log(debug: bool) -> None:
    """--debug: the package's loggers (HTTP exchanges, already redacted) go to stderr."""
    logger = logging.getLogger("inspera_cli")
    for handler in [h for h in logger.handlers if isinstance(h, _DebugHandler)]:
        logger.removeHandler(handler)
    # Without --debug, leave the logger as an embedding program configured it.
    logger.setLevel(logging.DEBUG if debug else logging.NOTSET)
    if debug:
        handler = _DebugHandler()
        handler.setFormatter(logging.Formatter("debug: %(message)s"))
        logger.addHandler(handler)


for _module in (subscriptions, listen, signing, apply, sandbox, demo, doctor, config, completion):
    _module.register(app)


def main() -> None:
    app(prog_name="inspera-hooks")
