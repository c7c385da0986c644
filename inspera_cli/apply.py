"""Subscriptions as code: load a subscriptions file, plan the changes, carry them out.

A subscription is identified by its (event, endpoint) pair. Loading validates the whole file
before any API call and names the line of every problem; planning compares the file with the
live subscriptions; applying runs the creates (and deletes) with bounded concurrency.
No Typer, no Rich: the command renders what these functions return.
"""

from __future__ import annotations

import copy
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inspera_cli.creating import explain_refusal
from inspera_cli.endpoints import endpoint_problem
from inspera_cli.errors import APIError, ConfigError, InsperaError
from inspera_cli.event_names import did_you_mean
from inspera_cli.files import loads_toml, read_small_text
from inspera_cli.redaction import env_secret_problem

if TYPE_CHECKING:
    from inspera_cli.client import InsperaClient, Subscription

ENTRY_TABLE = "subscription"
FIELDS = ("event", "endpoint", "secret_env")
DEFAULT_CONCURRENCY = 4
NOT_STARTED = "not started: interrupted (apply again to finish)"
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


# -- loading ---------------------------------------------------------------------------------------


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
        problems.append(Problem(finder.entry_key(index, "endpoint"), unreachable))
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


# -- planning --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What applying the file changes: creates, deletes (only with prune), and what stays."""

    create: list[DesiredSubscription]
    delete: list[Subscription]
    unchanged: list[Subscription]
    # Live subscriptions not in the file, left alone because prune was off.
    unmanaged: list[Subscription]

    @property
    def changes(self) -> int:
        return len(self.create) + len(self.delete)


def make_plan(desired: Sequence[DesiredSubscription], live: Sequence[Subscription], *, prune: bool) -> Plan:
    """Compare the file with the live subscriptions, keyed by (event, endpoint).

    A pair subscribed more than once on the tenant keeps its oldest subscription; the others are
    extras like any subscription not in the file (deleted with ``prune``).
    """
    wanted = {d.key: d for d in desired}
    kept: dict[tuple[str, str], Subscription] = {}
    extras: list[Subscription] = []
    for sub in sorted(live, key=lambda s: s.subscription_id):
        key = (sub.event, sub.endpoint)
        if key in wanted and key not in kept:
            kept[key] = sub
        else:
            extras.append(sub)
    create = [d for d in desired if d.key not in kept]
    unchanged = [kept[d.key] for d in desired if d.key in kept]
    return Plan(
        create=create,
        delete=extras if prune else [],
        unchanged=unchanged,
        unmanaged=[] if prune else extras,
    )


# -- applying --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The result of one planned change: ``error`` is None when it succeeded."""

    action: str  # "create" or "delete"
    event: str
    endpoint: str
    subscription: Subscription | None = None
    error: str | None = None
    existed: bool = True  # for a delete: False when it was already gone
    started: bool = True  # False when it was skipped or never begun (interrupted)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ApplyResult:
    created: list[Outcome] = field(default_factory=list)
    deleted: list[Outcome] = field(default_factory=list)

    @property
    def outcomes(self) -> list[Outcome]:
        return [*self.created, *self.deleted]

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


class _WorkerClients:
    """One client per worker thread: a ``requests.Session`` is not documented as thread-safe.

    Each worker's client is a shallow copy of the run's client (same settings and the token
    already obtained, so no extra token exchange) with a Session of its own.
    """

    def __init__(self, client: InsperaClient) -> None:
        client.access_token()  # before the threads start, so they share it
        self._client = client
        self._local = threading.local()
        self._made: list[InsperaClient] = []
        self._lock = threading.Lock()

    def get(self) -> InsperaClient:
        worker: InsperaClient | None = getattr(self._local, "client", None)
        if worker is None:
            from inspera_cli.client import make_session

            worker = copy.copy(self._client)
            worker.session = make_session()
            self._local.client = worker
            with self._lock:
                self._made.append(worker)
        return worker

    def close(self) -> None:
        for worker in self._made:
            worker.close()


def _reason(exc: BaseException, secret_env: str | None = None) -> str:
    if isinstance(exc, APIError) and secret_env:
        return explain_refusal(exc, f"set {secret_env} to the secret the receiver verifies with")
    if isinstance(exc, InsperaError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


def apply_plan(
    client: InsperaClient,
    plan: Plan,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_done: Callable[[Outcome], None] | None = None,
    stop: threading.Event | None = None,
) -> ApplyResult:
    """Carry out a plan: the creates first, concurrently, then the deletes.

    A failed create does not stop the others; it is reported in its :class:`Outcome`. When any
    create failed, the deletes are skipped (reported as failed): the subscriptions being replaced
    stay until their replacements exist, and re-running the plan finishes the job.
    ``on_done`` is called in the calling thread as each change completes (progress bars). Once
    ``stop`` is set (Ctrl-C, held while changes are in flight), no further change starts: each
    is reported as not started, and re-running the plan finishes the job.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    result = ApplyResult()
    if not plan.changes:
        return result
    workers = _WorkerClients(client)
    halt = stop or threading.Event()

    def create(d: DesiredSubscription) -> Outcome:
        if halt.is_set():
            return Outcome("create", d.event, d.endpoint, error=NOT_STARTED, started=False)
        try:
            sub = workers.get().create(d.event, d.endpoint, d.secret)
        except Exception as exc:
            return Outcome("create", d.event, d.endpoint, error=_reason(exc, d.secret_env))
        return Outcome("create", d.event, d.endpoint, subscription=sub)

    def delete(sub: Subscription) -> Outcome:
        if halt.is_set():
            return Outcome("delete", sub.event, sub.endpoint, sub, error=NOT_STARTED, started=False)
        try:
            existed = workers.get().delete(sub.subscription_id, missing_ok=True)
        except Exception as exc:
            return Outcome("delete", sub.event, sub.endpoint, subscription=sub, error=_reason(exc))
        return Outcome("delete", sub.event, sub.endpoint, subscription=sub, existed=existed)

    result.created = _run(create, plan.create, concurrency, on_done)
    if any(not o.ok for o in result.created):
        skipped = "skipped: a create failed, so nothing is deleted (fix it and apply again)"
        result.deleted = [
            Outcome("delete", s.event, s.endpoint, subscription=s, error=skipped, started=False)
            for s in plan.delete
        ]
        for outcome in result.deleted:
            if on_done:
                on_done(outcome)
    else:
        result.deleted = _run(delete, plan.delete, concurrency, on_done)
    workers.close()
    return result


def _run(
    task: Callable[[Any], Outcome],
    items: Sequence[Any],
    concurrency: int,
    on_done: Callable[[Outcome], None] | None,
) -> list[Outcome]:
    """Run ``task`` on every item, at most ``concurrency`` at a time; outcomes come back in the
    items' order. The workers are daemon threads: when an interrupt stops the wait, the program
    does not wait for them at exit either, and the items not yet taken never start."""
    pending: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
    for index, item in enumerate(items):
        pending.put((index, item))
    finished: queue.SimpleQueue[tuple[int, Outcome]] = queue.SimpleQueue()
    abandoned = threading.Event()

    def work() -> None:
        while not abandoned.is_set():
            try:
                index, item = pending.get_nowait()
            except queue.Empty:
                return
            finished.put((index, task(item)))

    for _ in range(min(concurrency, len(items))):
        threading.Thread(target=work, name="apply", daemon=True).start()
    outcomes: list[Outcome | None] = [None] * len(items)
    try:
        for _ in items:
            index, outcome = finished.get()
            outcomes[index] = outcome
            if on_done:
                on_done(outcome)
    except BaseException:
        abandoned.set()  # interrupted: queued changes never start; those in flight end on their own
        raise
    return [o for o in outcomes if o is not None]
