"""The Typer app: global options, command registration, and the one place errors become exit codes."""

# No `from __future__ import annotations` here: Typer would read the global options' annotations
# from strings, compiling each twice on every run (tests/test_startup.py).
import re
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer._completion_classes import completion_init  # where it is defined (typer.completion re-imports it)
from typer.core import TyperGroup, TyperOption

from inspera_cli import interrupts, output
from inspera_cli._version import __version__
from inspera_cli.commands.coercion import use_plain_values
from inspera_cli.commands.common import AppState
from inspera_cli.commands.help import MAX_HELP_WIDTH, HelpGroup
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
    "inspect": "inspect",
    "relay": "relay",
    "trigger": "sending",
    "replay": "sending",
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


class InsperaGroup(HelpGroup):
    """Maps domain exceptions and Click's usage errors to one-line errors and exit codes;
    ``--debug`` shows the traceback (redacted) instead. A reader that leaves (`| head`) ends a
    command quietly. Global options are accepted after the command too.

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

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        output.setup_streams()
        run = (args, prog_name, complete_var, False, windows_expand_args)
        if not standalone_mode:
            return super().main(*run, **extra)
        try:
            result = super().main(*run, **extra)
            sys.stdout.flush()
        except BrokenPipeError:
            output.discard_stdout()
            sys.exit(ExitCode.OK)
        except _click_exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except _click_exceptions.UsageError as exc:
            output.error(usage_error_text(exc))
            sys.exit(ExitCode.USAGE)
        except _click_exceptions.ClickException as exc:
            output.error(_sentence(exc.format_message()))
            sys.exit(exc.exit_code)
        except typer.Abort:
            output.error("interrupted")
            sys.exit(ExitCode.INTERRUPTED)
        # Not standalone, Click hands back an exit code (typer.Exit) or the command's None.
        sys.exit(result if isinstance(result, int) else ExitCode.OK)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, _hoist_global_options(self, ctx, args))
        except BrokenPipeError:
            # `--help | head -0`: printed while parsing, where Typer would exit 1.
            output.discard_stdout()
            raise typer.Exit(ExitCode.OK) from None

    def invoke(self, ctx: Any) -> Any:
        # One Ctrl-C/SIGTERM policy for every command (interrupts.py).
        with interrupts.handled(output.info):
            return self._invoke(ctx)

    def _invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except BrokenPipeError:
            # `list | head -1`: the reader has what it wanted.
            output.discard_stdout()
            ctx.exit(ExitCode.OK)
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


def usage_error_text(exc: Any) -> str:
    """Click's usage error as one line: what was wrong, and where the command's help is."""
    command = exc.ctx.command_path if exc.ctx is not None else output.PROG
    if isinstance(exc, _click_exceptions.NoSuchOption) and exc.possibilities:
        what = f"no such option: {exc.option_name}; did you mean {' or '.join(sorted(exc.possibilities))}?"
    else:
        what = _sentence(exc.format_message())
    return f"{what} (see {command} --help)"


# Typer words a bad value as its validation library does: "Input should be a valid integer,
# unable to parse string as an integer", "Value error, 'x' is not one of …".
_VALIDATION_WORDING = [
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"Value error, ", ""),
        (r", unable to parse string as an? \w+", ""),
        (r"Input should be a valid integer", "expected a whole number"),
        (r"Input should be a valid number", "expected a number"),
        (r"Input should be ", "expected "),
    )
]


def _sentence(message: str) -> str:
    """Click's message in the house style: one line, lower-case start, no final full stop."""
    message = " ".join(message.split()).rstrip(".")
    for pattern, replacement in _VALIDATION_WORDING:
        message = pattern.sub(replacement, message)
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    return message


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
    "local receiver, a signing toolkit and a sandbox tenant.\n\n"
    "Example:\n  inspera-hooks demo\n  inspera-hooks list --json",
    no_args_is_help=True,
    # `inspera-hooks completion SHELL` replaces Typer's --install-completion / --show-completion.
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": MAX_HELP_WIDTH},
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
        str | None, typer.Option("--url", metavar="URL", help="Tenant URL, e.g. https://example.inspera.no.")
    ] = None,
    client_id: Annotated[
        str | None, typer.Option("--client-id", metavar="ID", help="API client id.")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", "-p", metavar="NAME", help="Profile in the config file.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", metavar="SECONDS", help="HTTP timeout of each API call.", min=0.1),
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
