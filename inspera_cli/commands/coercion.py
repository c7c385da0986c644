"""Parameter values converted without pydantic, so that a command starts as fast as Click would.

Typer 0.29 converts every parameter's value with a pydantic ``TypeAdapter`` it builds on first
use: importing pydantic for that costs more than all the rest of a command's start-up. The values
our parameters take are plain: ``str``, ``int``, ``float`` (with ``min``/``max``), ``bool``,
``Path``, enums, and lists of those. For those, ``PlainValue`` gives the very value Typer's adapter
gives, without pydantic. Whatever it is not sure of -- text that is not a plain number, a number
out of range, a path Typer refuses, a choice that is not one -- it hands to Typer's own
conversion, so every error message is Typer's, word for word.

The rule for a new parameter: declare it with one of those types (the ones ``plain_converter``
knows). tests/test_startup.py fails on a parameter that would take pydantic's path, and names it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

try:  # Typer 0.29+: the conversion layer that builds pydantic adapters.
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_choice, coerce_cli_path
    from typer.core import _TyperParameter
except ImportError:  # an older Typer converts with Click's types: nothing to replace
    REPLACEABLE = False
else:
    # The contract PlainValue relies on; a Typer that changed it keeps its own conversion.
    REPLACEABLE = RuntimeParam.__abstractmethods__ == frozenset({"_coerce_value"}) and hasattr(
        _TyperParameter, "get_runtime_param"
    )

Converter = Callable[[Any, Any, Any], Any]
"""(value, param, ctx) -> the converted value, or raises ``Declined``."""


class Declined(Exception):
    """A value the plain conversion is not sure of: Typer converts it (and words any error)."""


def plain_converter(param: Any) -> Converter | None:
    """The plain conversion for a Typer parameter, or None when its type has none."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None:
        return None
    info = descriptor.parameter_info
    if info.parser is not None or descriptor.is_file:
        return None
    annotation = descriptor.annotation
    if get_origin(annotation) is list:
        (item_type,) = get_args(annotation)
        convert_item = _leaf_converter(item_type, info)
        return None if convert_item is None else _list_of(convert_item)
    return _leaf_converter(annotation, info)


def _leaf_converter(annotation: Any, info: Any) -> Converter | None:
    if annotation is str:
        return _text
    if annotation is bool:
        return _flag
    if annotation in (int, float) and not info.clamp:
        if annotation is int and not all(isinstance(b, int | None) for b in (info.min, info.max)):
            return None  # Typer cannot build that either
        return _number(annotation, info.min, info.max)
    if annotation is Path and info.path_type is None:
        return _path(info)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return _choice(tuple(annotation), info.case_sensitive)
    return None


def _text(value: Any, param: Any, ctx: Any) -> str:
    if isinstance(value, str):
        return value
    raise Declined


def _flag(value: Any, param: Any, ctx: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise Declined


def _digits(text: str) -> bool:
    """ASCII digits, a few: int() also reads "１２", pydantic does not."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _plain_number(text: str, kind: type) -> bool:
    """Text that Typer's adapter reads as exactly int(text) / float(text): [-]digits, and for a
    float [.digits]. Other spellings pydantic accepts ("1_000", " 5", "1e3", "inf") go to Typer."""
    whole, point, fraction = text.removeprefix("-").partition(".")
    return _digits(whole) and (not point or (kind is float and _digits(fraction)))


def _number(kind: type, low: float | None, high: float | None) -> Converter:
    # A default may be a number already: an int (not a bool), or for a float a float too.
    numbers = (int,) if kind is int else (int, float)

    def convert(value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and _plain_number(value, kind):
            number = kind(value)
        elif isinstance(value, numbers) and not isinstance(value, bool) and math.isfinite(value):
            number = kind(value)
        else:
            raise Declined
        if (low is not None and number < low) or (high is not None and number > high):
            raise Declined  # Typer says what the range is
        return number

    return convert


def _path(info: Any) -> Converter:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and value:
            value = Path(value)
        if not isinstance(value, Path):
            raise Declined
        try:  # Typer's own checks (exists, readable, ...), which need no pydantic for a Path
            return coerce_cli_path(value, info, path_type=Path, param=param, ctx=ctx)
        except Exception:
            raise Declined from None

    return convert


def _choice(choices: tuple[Any, ...], case_sensitive: bool) -> Converter:
    def convert(value: Any, param: Any, ctx: Any) -> Any:
        try:
            return coerce_cli_choice(value, choices=choices, case_sensitive=case_sensitive, ctx=ctx)
        except ValueError:
            raise Declined from None

    return convert


def _list_of(convert_item: Converter) -> Converter:
    def convert(value: Any, param: Any, ctx: Any) -> list[Any]:
        if not isinstance(value, list | tuple):
            raise Declined
        return [convert_item(item, param, ctx) for item in value]

    return convert


if REPLACEABLE:

    class PlainValue(RuntimeParam):
        """Typer's conversion contract (missing values, multiple values) with a plain converter;
        a declined value goes to the conversion Typer would have used."""

        convert: Converter

        def __init__(self, parameter_info: Any, annotation: Any, convert: Converter) -> None:
            super().__init__(parameter_info=parameter_info, annotation=annotation)
            object.__setattr__(self, "convert", convert)  # a frozen dataclass's way

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                return self.convert(value, param, ctx)
            except Declined:
                return build_runtime_param(param.type_descriptor)._coerce_value(value, param, ctx)


def use_plain_values(command: Any, *, subcommands: bool = True) -> None:
    """Give each parameter of ``command`` -- and of its subcommands, unless told not to -- its
    plain conversion, where it has one."""
    if not REPLACEABLE:
        return
    for param in command.params:
        _use_plain_value(param)
    # Click makes the help option on first use (its names depend on the context); its value, None
    # unless --help is given, goes through the conversion too.
    make_help_option = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            _use_plain_value(option)
        return option

    setattr(command, "get_help_option", get_help_option)  # noqa: B010 (an instance's own method)
    if subcommands:
        for sub in getattr(command, "commands", {}).values():
            use_plain_values(sub)


def _use_plain_value(param: Any) -> None:
    if isinstance(param, _TyperParameter) and param._runtime_param is None:
        convert = plain_converter(param)
        if convert is not None:
            descriptor = param.type_descriptor
            param._runtime_param = PlainValue(
                parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, convert=convert
            )
