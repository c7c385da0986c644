"""All terminal output: the only room that imports Rich (lazily, so start-up stays fast); its
``table`` lays tables out without Rich.

Data goes to stdout; messages, progress and errors go to stderr.
"""

from __future__ import annotations

import codecs
import functools
import io
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from inspera_cli.redaction import redact

if TYPE_CHECKING:
    from rich.console import Console

    from inspera_cli.output.table import Column

    # A table column: (key, header), (key, header, no_wrap) or an output.table.Column.
    ColumnSpec = tuple[str, str] | tuple[str, str, bool] | Column

PROG = "inspera-hooks"

_no_color = False
_consoles: dict[bool, Console] = {}

# Text from the network (an event name, a body, a server's error) reaches a terminal without its
# control characters: ESC [ ... or a CR in an event name would recolour, retitle or overwrite the
# operator's terminal, and anyone who can reach `listen` may send one. They show as escapes, as
# do line and paragraph separators and bidi overrides (which reorder what is shown).
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"})
_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_ONE_LINE = str.maketrans(_ESCAPES)
_LINES = str.maketrans({c: text for c, text in _ESCAPES.items() if c != 0x0A})  # messages may span lines


def one_line(text: str) -> str:
    """``text`` as one line a terminal shows as it is: control characters as escapes."""
    return text if text.isprintable() else text.translate(_ONE_LINE)


def _message(text: str) -> str:
    return redact(text) if text.isprintable() else redact(text).translate(_LINES)


def configure(*, no_color: bool = False) -> None:
    global _no_color
    _no_color = no_color or bool(os.environ.get("NO_COLOR"))
    _consoles.clear()


def console(stderr: bool = True) -> Console:
    """The stderr console for messages (default) or the stdout console for data."""
    if stderr not in _consoles:
        _consoles[stderr] = _console_class()(
            stderr=stderr,
            no_color=_no_color or bool(os.environ.get("NO_COLOR")),
            highlight=False,
            soft_wrap=True,
        )
        # Rich exits 1 on a closed pipe; let it reach cli.InsperaGroup, which ends quietly with 0.
        _consoles[stderr].on_broken_pipe = _raise_broken_pipe  # type: ignore[method-assign]
    return _consoles[stderr]


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    from inspera_cli import interrupts

    class PrintsWhole(Console):
        """A Console whose print a Ctrl-C or SIGTERM does not cut in half (interrupts.printing)."""

        def print(self, *objects: Any, **options: Any) -> None:
            with interrupts.printing():
                super().print(*objects, **options)

    return PrintsWhole


def _raise_broken_pipe() -> None:
    raise BrokenPipeError


# What a character a stream cannot encode becomes (✓ on a cp1252 or ASCII stdout, say); anything
# else is written as a backslash escape, which keeps data honest (`b\xfccher`, not `bucher`).
_ASCII_STAND_INS = {
    "✓": "+", "✗": "x", "→": "->", "←": "<-", "…": "...", "—": "--", "–": "-", "•": "*",
    "‘": "'", "’": "'", "“": '"', "”": '"', "\u00a0": " ",
}
_FALLBACK_ERRORS = "inspera-hooks-fallback"


def _stand_in(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start : error.end]
    return (
        "".join(_ASCII_STAND_INS.get(c) or c.encode("ascii", "backslashreplace").decode() for c in text),
        error.end,
    )


def setup_streams() -> None:
    """stdout and stderr never fail on a character their encoding lacks (cp1252 when Windows
    redirects, ASCII): symbols get ASCII stand-ins, other characters backslash escapes."""
    try:
        codecs.lookup_error(_FALLBACK_ERRORS)
    except LookupError:
        codecs.register_error(_FALLBACK_ERRORS, _stand_in)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors != _FALLBACK_ERRORS:
            try:
                stream.reconfigure(errors=_FALLBACK_ERRORS)
            except (OSError, ValueError):
                pass  # a closed stream: nothing will be written to it anyway


def _ascii_only(stream: Any) -> bool:
    """Whether ``stream`` cannot take every character (then JSON is written with \\u escapes)."""
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("_", "-")
    return not encoding.startswith("utf")


def stdout_ascii_only() -> bool:
    """Whether JSON on stdout must escape every non-ASCII character (as ``json_line`` does)."""
    return _ascii_only(sys.stdout)


def discard_stdout() -> None:
    """Point stdout at /dev/null: its reader left (`| head`), and a later flush (at exit, say)
    must not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 subscription``, ``2 subscriptions``, ``1 retry``/``2 retries`` (``plural`` given)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def is_terminal(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


_stdout_tty: tuple[Any, bool] = (None, False)


def _stdout_is_terminal() -> bool:
    """``is_terminal()`` asked once per stdout object, not per line: `listen` prints a line per
    request, and an isatty each cost a syscall (and a GIL hand-over) per request."""
    global _stdout_tty
    if _stdout_tty[0] is not sys.stdout:
        _stdout_tty = (sys.stdout, is_terminal())
    return _stdout_tty[1]


def print_json(data: Any) -> None:
    """Exactly one JSON document on stdout."""
    import json

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=_ascii_only(sys.stdout)) + "\n")
    sys.stdout.flush()


def print_json_items(items: Sequence[Any], *, first: bool, last: bool = False) -> None:
    """Part of one JSON array on stdout, streamed: ``first`` opens it, ``last`` closes it."""
    import json

    text = ",\n".join("  " + json.dumps(item, ensure_ascii=_ascii_only(sys.stdout)) for item in items)
    opening = "[\n" if first else (",\n" if items else "")
    sys.stdout.write(opening + text + ("\n]\n" if last else ""))
    sys.stdout.flush()


def print_json_line(data: Any, *, flush: bool = True) -> None:
    """One compact JSON object per line (listen --json); ``flush=False`` leaves it buffered for a
    later ``flush_stdout()`` (a batch of lines, one write)."""
    sys.stdout.write(json_line(data))
    if flush:
        sys.stdout.flush()


def json_line(data: Any) -> str:
    """The stdout line (ending in a newline) of one compact JSON object; any thread may make it."""
    import json

    return json.dumps(data, ensure_ascii=_ascii_only(sys.stdout), separators=(",", ":")) + "\n"


# While a spinner spins, Rich sends what is written to stdout through it (a FileProxy in place of
# sys.stdout): the lines, then the spinner drawn again under them, at the cursor's place as it was
# when the lines came. A line another thread wrote just as the spinner stopped drew it again after
# it had been erased, and the next message went on the same line as that stale spinner
# (`listen --subscribe`'s "Webhook secret:" line, while the display showed Inspera's validation
# POST). So a spinner's start and stop and a line sent through it take turns. Only those lines: a
# write to a stdout nobody reads may block, and must not hold up a spinner.
_screen = threading.Lock()


def write_stdout(text: str) -> None:
    """Lines made before (``segment_line``, ``json_line``), buffered: ``flush_stdout()`` sends them.
    Any thread may write them (see ``_screen``)."""
    stream = sys.stdout
    if type(stream).__module__ == "rich.file_proxy":  # a spinner's, or one that has just stopped
        with _screen:
            stream.write(text)
    else:
        stream.write(text)


def flush_stdout() -> None:
    sys.stdout.flush()


def error(message: str) -> None:
    """One error line on stderr; known secrets and URL userinfo show as ``***``."""
    sys.stderr.write(f"{PROG}: error: {_message(message)}\n")
    sys.stderr.flush()


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/] {_escape(_message(message))}")


def traceback(exc: BaseException) -> None:
    """The traceback of ``exc`` on stderr (--debug), redacted like every other message."""
    import traceback as tb

    sys.stderr.write(redact("".join(tb.format_exception(exc))))
    sys.stderr.flush()


def info(message: str, *, markup: bool = False) -> None:
    """A message on stderr, redacted; ``markup`` lets Rich style tags through (our own strings only)."""
    message = _message(message)
    console().print(message if markup else _escape(message))


def log_line(message: str) -> None:
    """One plain line on stderr, without Rich's layout (3 µs instead of 85): `sandbox serve` logs a
    line per delivery attempt, thousands a second under a burst."""
    sys.stderr.write(_message(message) + "\n")


def styled_line(text: str, style: str | None = None, *, stderr: bool = False) -> None:
    """One line of plain text (stdout by default), in a Rich ``style`` on a terminal, e.g. a plan line."""
    console(stderr=stderr).print(_escape(one_line(text)), style=style, emoji=False)


def print_segments(segments: Sequence[tuple[str, str | None]], *, flush: bool = True) -> None:
    """One stdout line from (text, style) pieces, as ``segment_line`` makes it. ``flush=False``
    leaves it buffered for a later ``flush_stdout()``."""
    sys.stdout.write(segment_line(segments))
    if flush:
        sys.stdout.flush()


def segment_line(segments: Sequence[tuple[str, str | None]]) -> str:
    """The stdout line (ending in a newline) of (text, style) pieces: coloured and cut to the
    terminal's width (its end replaced by ``…``, so it never wraps) on a terminal, plain and whole
    text when piped. Any thread may make it; `listen` makes one a request on its event loop.

    Each piece goes through Rich's ``Style.render`` for the console's colour system rather than a
    full ``Console.print``, which costs about 100 µs a line: `listen` prints one line per request
    under load. With NO_COLOR / --no-color the colours are dropped as ``console()`` drops them
    (bold and dim stay).
    """
    out = console(stderr=False)
    terminal = _stdout_is_terminal()
    plain = "".join([piece for piece, _ in segments])
    if not plain.isprintable():  # one check of the whole line: its pieces then need escapes
        segments = [(one_line(piece), style) for piece, style in segments]
        plain = "".join([piece for piece, _ in segments])
    if terminal:
        segments = _fit_line(segments, out.width)
    if terminal and out.color_system is not None:
        from rich.color import ColorSystem
        from rich.style import Style

        system = {"256": ColorSystem.EIGHT_BIT, "truecolor": ColorSystem.TRUECOLOR}.get(
            out.color_system, ColorSystem.STANDARD
        )
        no_color = out.no_color

        def render(piece: str, style: str) -> str:
            parsed = Style.parse(style)
            return (parsed.without_color if no_color else parsed).render(piece, color_system=system)

        line = "".join(render(piece, style) if style else piece for piece, style in segments)
    elif terminal:
        line = "".join([piece for piece, _ in segments])
    else:
        line = plain
    return line + "\n"


def _fit_line(segments: Sequence[tuple[str, str | None]], width: int) -> Sequence[tuple[str, str | None]]:
    """The pieces that fit in ``width`` columns, the last one cut with ``…`` when they do not."""
    from rich.cells import cell_len, set_cell_size

    used = 0
    for index, (text, style) in enumerate(segments):
        size = len(text) if text.isascii() else cell_len(text)
        if used + size > width:
            room = max(width - used - 1, 0)
            cut = text[:room] if text.isascii() else set_cell_size(text, room)
            return [*segments[:index], (cut + "…", style)]
        used += size
    return segments


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return one_line(str(value))


def render_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[ColumnSpec],
    *,
    title: str | None = None,
    empty: str = "Nothing to show.",
) -> None:
    """Rows as a boxed table on a terminal (``tables.terminal_table``), plain aligned text when
    stdout is piped.

    ``columns`` are (key, header[, no_wrap]) tuples or ``tables.Column``s; a ``no_wrap`` column's long values
    are cut with an ellipsis on a terminal rather than folded (piped, every value is whole). On a
    terminal, no rows is the ``empty`` note on stderr rather than an empty box.
    """
    from inspera_cli.output.table import Column, terminal_table

    shown = [c if isinstance(c, Column) else Column(*c) for c in columns]
    if is_terminal():
        if not rows:
            info(empty)
            return
        terminal = console(stderr=False)
        lines = terminal_table(
            [[_cell(row.get(c.key)) for c in shown] for row in rows],
            shown,
            width=terminal.width,
            styled=terminal.color_system is not None,
            ascii_only=not terminal.encoding.lower().startswith("utf"),
            title=title,
        )
        terminal.file.write("\n".join(lines) + "\n")
        terminal.file.flush()
        return
    cells = [[c.header.upper() for c in shown]]
    cells += [[_cell(row.get(c.key)) for c in shown] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(shown))]
    out = sys.stdout
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    out.flush()


def render(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[ColumnSpec],
    *,
    json_mode: bool,
    title: str | None = None,
    empty: str = "Nothing to show.",
) -> None:
    """The one renderer for data commands: JSON document with --json, else a table (see
    ``render_table``)."""
    if json_mode:
        print_json(list(rows))
    else:
        render_table(rows, columns, title=title, empty=empty)


@contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while something slow happens (only on a terminal). Lines another
    thread writes meanwhile (``write_stdout``) go above it, and take turns with its start and
    stop (see ``_screen``)."""
    if not is_terminal(sys.stderr):
        yield
        return
    status = console().status(_escape(message))
    with _screen:
        status.start()
    try:
        yield
    finally:
        with _screen:
            status.stop()


class _Progress:
    def __init__(self, advance: Any) -> None:
        self._advance = advance

    def advance(self, n: int = 1) -> None:
        self._advance(n)


@contextmanager
def progress(total: int, description: str) -> Iterator[_Progress]:
    """A progress bar on stderr (a no-op when stderr is not a terminal)."""
    if not is_terminal(sys.stderr) or total == 0:
        yield _Progress(lambda n: None)
        return
    from rich.progress import Progress

    with Progress(console=console(), transient=True) as bar:
        task = bar.add_task(_escape(description), total=total)
        yield _Progress(lambda n: bar.advance(task, n))
