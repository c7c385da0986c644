"""The Typer app: global options, command registration, and the one place errors become exit codes."""

# No `from __future__ import annotations` here: Typer would read the global options' annotations
# from strings, compiling each twice on every run (tests/test_startup.py).
import sys
from typing import Annotated, Any

import typer
from typer.completion import completion_init
from typer.core import TyperGroup, TyperOption

from inspera_cli import interrupts, output
from inspera_cli._version import __version__
from inspera_cli.commands.coercion import use_plain_values
from inspera_cli.commands.common import AppState
from inspera_cli.commands.registry import LazyCommands
from inspera_cli.errors import ExitCode, InsperaError

# Every top-level command, in the order `--help` lists them, and the module of
# inspera_cli.commands whose register() adds it. A module is imported only when one of its
# commands is used (commands/registry.py).
COMMANDS = {
    "events": "subscriptions",
    "list": "subscriptions",
    "create": "subscriptions",
    "delete": "subscriptions",
    "listen": "listen",
    "relay": "relay",
    "trigger": "signing",
    "replay": "signing",
    "sign": "signing",
    "verify": "signing",
    "apply": "apply",
    "demo": "demo",
    "doctor": "doctor",
    "login": "config",
    "logout": "config",
    "completion": "completion",
    "sandbox": "sandbox",
    "config": "config",
}

# Typer has shipped Click both as a dependency and vendored: take its exception classes from
# wherever this Typer gets them rather than importing `click`.
_click_exceptions = sys.modules[typer.BadParameter.__module__]
_PASS_THROUGH: tuple[type[BaseException], ...] = (typer.Exit, _click_exceptions.ClickException)


class InsperaGroup(TyperGroup):
    """Maps domain exceptions to one-line errors and exit codes; ``--debug`` shows the traceback
    (redacted) instead. Global options are accepted after the command too.

    Its commands are built on first use (``COMMANDS``) and convert their values without pydantic.
    """

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        use_plain_values(self, subcommands=False)
        self.commands = LazyCommands(app, COMMANDS)
        # Typer registers its completion classes only for add_completion=True; the scripts
        # `completion` prints speak their protocol.
        completion_init()

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names, without building every command

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _hoist_global_options(self, ctx, args))

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
                output.traceback(exc)
            output.error(str(exc))
            ctx.exit(exc.exit_code)
        except Exception as exc:
            if _debug(ctx):
                output.traceback(exc)
            output.error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)")
            ctx.exit(ExitCode.FAILURE)


def _debug(ctx: Any) -> bool:
    return isinstance(ctx.obj, AppState) and ctx.obj.debug


class _Options:
    """The option names of some commands, and which of them take a value."""

    def __init__(self, *commands: Any) -> None:
        options = [p for c in commands for p in c.params if isinstance(p, TyperOption)]
        self.names = {n for p in options for n in (*p.opts, *p.secondary_opts)}
        self.with_value = {n for p in options if not (p.is_flag or p.count) for n in p.opts}

    def name_of(self, token: str) -> tuple[str, bool]:
        """The option a token names, and whether the token holds its value (`--url=X`, `-pX`)."""
        if token.startswith("--"):
            name, equals, _ = token.partition("=")
            return name, bool(equals)
        if token.startswith("-") and len(token) > 2 and token[:2] in self.with_value:
            return token[:2], True
        return token, False


def _hoist_global_options(group: Any, ctx: Any, args: list[str]) -> list[str]:
    """Move global options given after the command (`events --debug`, `list -p prod`) before it.

    An option the command itself defines with the same name (`listen --timeout`) stays the
    command's; values of the command's own options are never taken for options; nothing after
    `--` moves.
    """
    global_options = _Options(group)
    start = 0
    while start < len(args) and args[start].startswith("-") and args[start] != "--":
        name, inline = global_options.name_of(args[start])
        start += 1 if inline or name not in global_options.with_value else 2
    chain: list[Any] = []
    end, current = start, group
    while end < len(args) and isinstance(current, TyperGroup) and not args[end].startswith("-"):
        current = current.get_command(ctx, args[end])
        if current is None:
            return args
        chain.append(current)
        end += 1
    own = _Options(*chain)
    moved: list[str] = []
    kept: list[str] = []
    i = end
    while i < len(args) and args[i] != "--":
        name, inline = global_options.name_of(args[i])
        is_global = name in global_options.names and name not in own.names
        options, target = (global_options, moved) if is_global else (own, kept)
        width = 1 if inline or name not in options.with_value else 2
        if i + width > len(args):
            target = kept  # a value is missing: leave it for Click to report where it was given
        target += args[i : i + width]
        i += width
    return [*args[:start], *moved, *args[start:end], *kept, *args[i:]]


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
    if debug or "logging" in sys.modules:  # else nothing has logged, and there is nothing to undo
        from inspera_cli.commands import debug_log

        debug_log.configure(debug)
    ctx.obj = AppState(
        url=url, client_id=client_id, profile=profile, timeout=timeout, debug=debug, no_color=no_color
    )


def main() -> None:
    app(prog_name="inspera-hooks")
