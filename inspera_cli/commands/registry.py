"""Top-level commands imported and built on first use, so that a command pays for itself alone.

Building a command means importing its module and reading its function's signature; done for
every command on every run, that was most of `sign`'s start-up. ``LazyCommands`` is the mapping of
command names a Click group looks its commands up in: it knows each name's module, and imports it
and builds the command only when the group asks for that name (to run it, to show its help, to
complete it). ``--help`` of the whole program still builds them all, to list their summaries.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
import typer.main

from inspera_cli.commands.coercion import use_plain_values
from inspera_cli.commands.help import use_help_classes


class LazyCommands(MutableMapping[str, Any]):
    """Command name -> Click command, built from ``inspera_cli.commands.<module>`` when first used.

    ``modules`` maps each top-level name to the module whose ``register(app)`` registers it, in
    the order ``--help`` lists them. ``root`` is the Typer app the commands belong to: they are
    built with its settings (help markup, exception display), exactly as Typer builds them.
    """

    def __init__(self, root: typer.Typer, modules: dict[str, str]) -> None:
        self._root = root
        self._modules = dict(modules)
        self._built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = self._build(name, self._modules[name])
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._modules.setdefault(name, "")
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._modules[name]
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def _build(self, name: str, module_name: str) -> Any:
        # __import__ rather than importlib.import_module, which `python -X importtime` does not see.
        module = __import__(f"inspera_cli.commands.{module_name}", fromlist=["register"])
        root = self._root
        app = typer.Typer(
            add_completion=False,
            rich_markup_mode=root.rich_markup_mode,
            pretty_exceptions_short=root.pretty_exceptions_short,
            suggest_commands=root.suggest_commands,
        )
        module.register(app)
        use_help_classes(app)
        # Only the one asked for, built in a group as for the root.
        app.registered_commands = [info for info in app.registered_commands if info.name == name]
        app.registered_groups = [info for info in app.registered_groups if info.name == name]
        _resolve_annotations(app)
        command = typer.main.get_group(app).commands.get(name)
        if command is None:
            raise LookupError(f"inspera_cli.commands.{module_name}.register() registers no {name!r}")
        use_plain_values(command)
        return command


def _resolve_annotations(app: typer.Typer) -> None:
    """Evaluate the string annotations (`from __future__ import annotations`) of the app's
    callbacks once, in place: Typer compiles and evaluates each twice otherwise, most of the time
    it takes to build a command with many options."""
    infos: list[Any] = [*app.registered_commands, app.registered_callback]
    for info in filter(None, infos):
        if info.callback is not None:
            info.callback.__annotations__ = typing.get_type_hints(info.callback, include_extras=True)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            _resolve_annotations(group.typer_instance)
