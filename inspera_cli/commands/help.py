"""How `--help` reads (the terminal's width, examples as written, placeholders that name a thing),
and which command a usage error belongs to.

Every command and group of the app uses these classes (cli.py sets them on each registered
command): Click would rewrap an example into two broken lines, Typer names an argument's
placeholder after its type (`EVENT <str>`, `{EVENT}`), and Click's parser raises some usage
errors without the context that names the command.
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

_click_exceptions = sys.modules[typer.BadParameter.__module__]

# Help text is as wide as the terminal, up to this many columns (Click's own limit is 80).
MAX_HELP_WIDTH = 200
EXAMPLE_PREFIX = "Example"


def placeholder(param: Any) -> str:
    """An argument as the usage line shows it: `EVENT`, `[FILE|-]`, `ID...`."""
    name: str = param.metavar or (param.name or "").upper()
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


def help_paragraphs(text: str, width: int, indent: str) -> str:
    """The help text as the terminal shows it: prose wrapped to ``width`` (never inside an option
    name such as --if-not-exists), each `Example:` paragraph (and Click's `\\b` ones) as written."""
    blocks = []
    for paragraph in inspect.cleandoc(text).partition("\f")[0].split("\n\n"):
        if paragraph.lstrip().startswith((EXAMPLE_PREFIX, "\b")):
            lines = paragraph.removeprefix("\b").strip("\n").splitlines()
            blocks.append("\n".join(indent + line for line in lines))
        else:
            blocks.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                        subsequent_indent=indent, break_on_hyphens=False,
                                        break_long_words=False))
    return "\n\n".join(blocks)


def write_help_text(command: Any, formatter: Any) -> None:
    if command.help:
        formatter.write_paragraph()
        indent = " " * (formatter.current_indent + formatter.indent_increment)
        formatter.write(help_paragraphs(command.help, formatter.width, indent) + "\n")


def summary(command: Any, limit: int) -> str:
    """A command's line in its group's list: the first paragraph of its help, cut at a word with
    `...` only when the terminal is too narrow (Click also cuts at the first full stop, `e.g.`)."""
    words = inspect.cleandoc(command.short_help or command.help or "").split("\n\n")[0].split()
    text = " ".join(words)
    while len(text) > limit and len(words) > 1:
        words.pop()
        text = " ".join(words).rstrip(",;:") + "..."
    return text


def write_parameters(command: Any, ctx: Any, formatter: Any) -> None:
    """Arguments, then options, each named by its placeholder (never its type)."""
    arguments: list[tuple[str, str]] = []
    options: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if param.param_type_name == "argument":
            arguments.append((placeholder(param).strip("[]"), record[1] if record else param.help or ""))
        elif record is not None:
            options.append(record)
    for title, rows in (("Arguments", arguments), ("Options", options)):
        if rows:
            with formatter.section(title):
                formatter.write_dl(rows)


if TYPE_CHECKING:
    # Type checkers see the mixin as the command it is mixed into; at run time it adds no base.
    _Command = TyperCommand
else:
    _Command = object


class _HouseHelp(_Command):
    """The help layout, and the context of a usage error, shared by commands and groups."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            result: list[str] = super().parse_args(ctx, args)
        except _click_exceptions.UsageError as exc:
            exc.ctx = exc.ctx or ctx  # Click's parser raises some without one: name the command
            raise
        return result

    def get_short_help_str(self, limit: int = 45) -> str:
        return summary(self, limit)

    def format_help_text(self, ctx: Any, formatter: Any) -> None:
        write_help_text(self, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [placeholder(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        write_parameters(self, ctx, formatter)


class HelpCommand(_HouseHelp, TyperCommand):
    pass


class HelpGroup(_HouseHelp, TyperGroup):
    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [*super().collect_usage_pieces(ctx), self.subcommand_metavar]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        super().format_options(ctx, formatter)
        self.format_commands(ctx, formatter)


def use_help_classes(app: typer.Typer) -> None:
    """Give every command and group an app registered the house help layout."""
    for command in app.registered_commands:
        if not (command.cls and issubclass(command.cls, HelpCommand)):
            command.cls = HelpCommand
    for group in app.registered_groups:
        group.cls = HelpGroup
        if group.typer_instance is not None:
            use_help_classes(group.typer_instance)
