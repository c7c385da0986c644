"""The subscriptions file of `apply` (subscriptions as code): its format, read and validated.

A ``[[subscription]]`` entry names an event, an endpoint and the environment variable holding the
webhook secret (``secret_env``; the secret itself never goes in the file). Loading validates the
whole file before any API call and names the line of every problem. What to do with the entries
is ``reconciler``'s job. No Typer, no Rich.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspera_cli.errors import ConfigError
from inspera_cli.event_names import did_you_mean
from inspera_cli.files import loads_toml, read_small_text
from inspera_cli.redaction import env_secret_problem
from inspera_cli.subscribing import endpoint_problem

ENTRY_TABLE = "subscription"
FIELDS = ("event", "endpoint", "secret_env")
_ENTRY_HEADER = re.compile(r"^\s*\[\[\s*(?:subscription|\"subscription\"|'subscription')\s*\]\]")
_TABLE_HEADER = re.compile(r"^\s*\[")
_SYNTAX_LINE = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)\s*$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file, at a 1-based line (None when no line applies)."""

    line: int | None
    message: str


class SubscriptionsFileError(ConfigError):
    """The subscriptions file is invalid; ``problems`` holds each one with its line."""

    def __init__(self, path: Path, problems: Sequence[Problem]) -> None:
        self.path = path
        self.problems = list(problems)
        lines = [f"{path}:{p.line}: {p.message}" if p.line else f"{path}: {p.message}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class DesiredSubscription:
    """One ``[[subscription]]`` entry of the file; the secret is read from ``secret_env``."""

    event: str
    endpoint: str
    secret_env: str
    line: int | None = None
    event_line: int | None = None
    secret: str = field(default="", repr=False, compare=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.event, self.endpoint)


@dataclass(frozen=True)
class SubscriptionsFile:
    path: Path
    subscriptions: list[DesiredSubscription]


class _LineFinder:
    """Finds the line of an entry or of a key in it by scanning the text (tomllib keeps no lines)."""

    def __init__(self, text: str, entries: int) -> None:
        self.lines = text.splitlines()
        headers = [i for i, line in enumerate(self.lines) if _ENTRY_HEADER.match(line)]
        # Entries written inline (`subscription = [{...}]`) have no headers: fall back to that key.
        self.headers = headers if len(headers) == entries else []
        self.fallback = self.key_line(ENTRY_TABLE, 0, len(self.lines)) or _header_line(
            self.lines, ENTRY_TABLE
        )

    def key_line(self, key: str, start: int, stop: int) -> int | None:
        pattern = re.compile(rf"^\s*(?:{re.escape(key)}|\"{re.escape(key)}\"|'{re.escape(key)}')\s*=")
        for i in range(start, stop):
            if pattern.match(self.lines[i]):
                return i + 1
        return None

    def entry(self, index: int) -> int | None:
        if self.headers:
            return self.headers[index] + 1
        return self.fallback

    def entry_key(self, index: int, key: str) -> int | None:
        if not self.headers:
            return self.fallback
        start = self.headers[index] + 1
        stop = next(
            (i for i in range(start, len(self.lines)) if _TABLE_HEADER.match(self.lines[i])), len(self.lines)
        )
        return self.key_line(key, start, stop) or self.entry(index)


def load_subscriptions_file(
    path: Path,
    env: Mapping[str, str] | None = None,
) -> SubscriptionsFile:
    """Read and strictly validate a subscriptions file; every problem is reported with its line.

    Checks everything that needs no API: TOML syntax, unknown keys, missing or empty fields,
    endpoints that are not HTTPS (plain http only on loopback), unset ``secret_env`` variables and
    duplicate (event, endpoint) pairs. Raises :class:`SubscriptionsFileError`.
    """
    env = os.environ if env is None else env
    try:
        text = read_small_text(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the subscriptions file: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SubscriptionsFileError(path, [Problem(None, str(exc))]) from None
    try:
        data = loads_toml(text)
    except ValueError as exc:
        message = str(exc)
        match = _SYNTAX_LINE.search(message)
        line = None
        if match:
            line = int(match.group(1)) if match.group(1) else max(len(text.splitlines()), 1)
        message = _SYNTAX_LINE.sub("", message) if match else message
        raise SubscriptionsFileError(path, [Problem(line, f"invalid TOML: {message}")]) from None
    return _validate(path, text, data, env)


def _validate(
    path: Path,
    text: str,
    data: dict[str, Any],
    env: Mapping[str, str],
) -> SubscriptionsFile:
    raw = data.get(ENTRY_TABLE, [])
    entries = raw if isinstance(raw, list) else []
    finder = _LineFinder(text, len(entries))
    problems: list[Problem] = []
    for key in data:
        if key != ENTRY_TABLE:
            line = finder.key_line(key, 0, len(finder.lines)) or _header_line(finder.lines, key)
            problems.append(Problem(line, f"unknown key {key!r} (the file holds [[{ENTRY_TABLE}]] entries)"))
    if not isinstance(raw, list):
        problems.append(
            Problem(finder.fallback, f"{ENTRY_TABLE!r} must be an array of tables: [[{ENTRY_TABLE}]]")
        )
    result: list[DesiredSubscription] = []
    seen: dict[tuple[str, str], int | None] = {}
    for index, entry in enumerate(entries):
        line = finder.entry(index)
        if not isinstance(entry, dict):
            problems.append(Problem(line, f"each {ENTRY_TABLE} must be a table with {', '.join(FIELDS)}"))
            continue
        entry_problems, desired = _check_entry(finder, index, entry, env)
        if desired is not None:
            if desired.key in seen:
                first = seen[desired.key]
                where = f" (first at line {first})" if first else ""
                entry_problems.append(
                    Problem(line, f"duplicate subscription to {desired.event} at {desired.endpoint}{where}")
                )
            seen.setdefault(desired.key, line)
        problems += entry_problems
        if desired is not None and not entry_problems:
            result.append(desired)
    if problems:
        raise SubscriptionsFileError(path, problems)
    return SubscriptionsFile(path, result)


def _check_entry(
    finder: _LineFinder, index: int, entry: dict[str, Any], env: Mapping[str, str]
) -> tuple[list[Problem], DesiredSubscription | None]:
    """Every problem of one entry at once (an unknown key hides none of the others), and the
    entry if its three fields are there (for the duplicate check, even when other things are wrong)."""
    line = finder.entry(index)
    allowed = ", ".join(FIELDS)
    problems = [
        Problem(
            finder.entry_key(index, key),
            f"unknown key {key!r} in [[{ENTRY_TABLE}]] (allowed: {allowed})",
        )
        for key in entry if key not in FIELDS
    ]
    values: dict[str, str] = {}
    for key in FIELDS:
        if key not in entry:
            hint = " (the secret itself never goes in the file)" if key == "secret_env" else ""
            problems.append(Problem(line, f"[[{ENTRY_TABLE}]] is missing {key!r}{hint}"))
        elif not isinstance(entry[key], str) or not entry[key].strip():
            problems.append(Problem(finder.entry_key(index, key), f"{key!r} must be a non-empty string"))
        else:
            values[key] = entry[key].strip()
    if "endpoint" in values and (unreachable := endpoint_problem(values["endpoint"])):
        problems.append(Problem(finder.entry_key(index, "endpoint"), unreachable.message))
    if "secret_env" in values and (secret_problem := env_secret_problem(values["secret_env"], env)):
        problems.append(Problem(finder.entry_key(index, "secret_env"),
                                f"secret_env {values['secret_env']}: {secret_problem}"))
    if len(values) < len(FIELDS):
        return problems, None
    desired = DesiredSubscription(
        event=values["event"],
        endpoint=values["endpoint"],
        secret_env=values["secret_env"],
        line=line,
        event_line=finder.entry_key(index, "event"),
        secret=env.get(values["secret_env"], ""),
    )
    return problems, desired


def _header_line(lines: list[str], key: str) -> int | None:
    pattern = re.compile(rf"^\s*\[\[?\s*{re.escape(key)}\s*[\].]")
    return next((i + 1 for i, line in enumerate(lines) if pattern.match(line)), None)


def check_events(spec: SubscriptionsFile, supported: Iterable[str]) -> None:
    """Refuse events the tenant does not support, naming each one's line."""
    known = sorted(set(supported))
    problems = [
        Problem(
            s.event_line,
            f"event {s.event!r} is not supported by this tenant{did_you_mean(s.event, known)}; valid "
            f"events: {', '.join(known) or '(none)'}",
        )
        for s in spec.subscriptions
        if s.event not in known
    ]
    if problems:
        raise SubscriptionsFileError(spec.path, problems)
