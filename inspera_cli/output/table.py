"""A table laid out for a terminal: boxed like Rich's default table, in a fraction of its time.

Rich measures and wraps every cell through its whole rendering machinery: 1,000 subscriptions took
it longer than fetching them. ``terminal_table`` makes the same picture (a bold header under a
heavy rule, columns shrunk widest-first to fit the width) from plain strings, as a list of lines.

A column either folds a value that does not fit onto more lines (words kept whole where they fit),
or, with ``no_wrap``, keeps it on one line and cuts it with an ellipsis: a URL, a timestamp, an id
or a secret must never be split across lines (SPEC §8). Control characters in the data are shown
as U+FFFD, never sent to the terminal. No I/O here, and no Rich: ``output`` supplies the width and
whether to style.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

BOLD, ITALIC, RESET = "\x1b[1m", "\x1b[3m", "\x1b[0m"


@dataclass(frozen=True)
class Column:
    """One column: the row key it shows, its header, and whether a long value is cut (``no_wrap``,
    with an ellipsis) rather than folded onto more lines."""

    key: str
    header: str
    no_wrap: bool = False


@dataclass(frozen=True)
class _Box:
    top: str  # left, rule, divider, right
    head: str  # the header row's left, divider, right
    head_rule: str  # under the header: left, rule, divider, right
    body: str  # a row's left, divider, right
    bottom: str
    ellipsis: str


# Rich's HEAVY_HEAD (its default), and its ASCII fallback for a terminal that cannot show that.
_UNICODE = _Box("┏━┳┓", "┃┃┃", "┡━╇┩", "│││", "└─┴┘", "…")
_ASCII = _Box("+--+", "|||", "|-+|", "|||", "+--+", "...")

# Whitespace controls become a space; every other control character (C0, DEL, C1) a U+FFFD.
_SAFE = dict.fromkeys((*range(32), *range(127, 160)), "\ufffd") | dict.fromkeys((9, 10, 11, 12, 13), " ")


def printable(text: str) -> str:
    """``text`` with its control characters replaced (see ``_SAFE``)."""
    return text.translate(_SAFE)


def cell_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: wide East Asian characters take two, combining none."""
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def _cut(text: str, width: int) -> tuple[str, str]:
    """The longest head of ``text`` at most ``width`` columns wide (maybe empty), and the rest."""
    if text.isascii():
        return text[:width], text[width:]
    used = 0
    for index, char in enumerate(text):
        used += _char_width(char)
        if used > width:
            return text[:index], text[index:]
    return text, ""


def truncate(text: str, width: int, ellipsis: str = "…") -> str:
    """``text`` on one line of at most ``width`` columns, ending in ``ellipsis`` when cut."""
    if cell_width(text) <= width:
        return text
    if width <= len(ellipsis):
        return _cut(text, width)[0]
    return _cut(text, width - len(ellipsis))[0] + ellipsis


def fold(text: str, width: int) -> list[str]:
    """``text`` on lines of at most ``width`` columns: at spaces where a word fits, else inside it."""
    if cell_width(text) <= width:
        return [text]
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        joined = f"{line} {word}" if line else word
        if cell_width(joined) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        *whole, line = _pieces(word, width)
        lines += whole
    lines.append(line)
    return lines


def _pieces(word: str, width: int) -> list[str]:
    """``word`` cut into pieces of at most ``width`` columns, in one pass (a value may be long)."""
    if word.isascii():
        return [word[i : i + width] for i in range(0, len(word), max(width, 1))] or [""]
    pieces: list[str] = []
    piece, used = "", 0
    for char in word:
        size = _char_width(char)
        if size > width:  # wider than the column
            char, size = "\ufffd", 1
        if used + size > width:
            pieces.append(piece)
            piece, used = "", 0
        piece += char
        used += size
    pieces.append(piece)
    return pieces


def fit_widths(natural: Sequence[int], room: int) -> list[int]:
    """Column widths that fit ``room`` columns of content: the widest shrink first, to the next
    widest and then together (never below 1)."""
    widths = list(natural)
    while sum(widths) > room and max(widths) > 1:
        widest = max(widths)
        at_widest = [i for i, w in enumerate(widths) if w == widest]
        below = max((w for w in widths if w < widest), default=1)
        excess = sum(widths) - room
        if (widest - below) * len(at_widest) < excess:
            for i in at_widest:
                widths[i] = below
            continue
        share, extra = divmod(excess, len(at_widest))
        for n, i in enumerate(at_widest):
            widths[i] -= share + (n < extra)
    return widths


def terminal_table(
    rows: Sequence[Sequence[str]],
    columns: Sequence[Column],
    *,
    width: int,
    styled: bool,
    ascii_only: bool = False,
    title: str | None = None,
) -> list[str]:
    """The lines of a boxed table of ``rows`` (one string per column) at most ``width`` columns
    wide (unless even one column each cannot fit); ``styled``: a bold header and an italic title."""
    box = _ASCII if ascii_only else _UNICODE
    headers = [printable(c.header) for c in columns]
    cells = [[printable(value) for value in row] for row in rows]
    natural = [max([cell_width(h), *(cell_width(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    widths = fit_widths(natural, width - 3 * len(columns) - 1)
    table_width = sum(widths) + 3 * len(columns) + 1

    def rule(edge: str) -> str:
        left, line, divider, right = edge[0], edge[1], edge[2], edge[3]
        return left + divider.join(line * (w + 2) for w in widths) + right

    def row_lines(values: Sequence[str], edge: str, style: str) -> list[str]:
        left, divider, right = edge[0], edge[1], edge[2]
        parts = [
            [truncate(v, w, box.ellipsis)] if column.no_wrap else fold(v, w)
            for v, w, column in zip(values, widths, columns, strict=True)
        ]
        height = max(len(p) for p in parts)
        lines = []
        for n in range(height):
            texts = []
            for part, w in zip(parts, widths, strict=True):
                text = part[n] if n < len(part) else ""
                padded = f" {text}{' ' * (w - cell_width(text))} "
                texts.append(f"{style}{padded}{RESET}" if style else padded)
            lines.append(left + divider.join(texts) + right)
        return lines

    lines = []
    if title:
        text = truncate(printable(title), table_width, box.ellipsis)
        centred = text.center(table_width + len(text) - cell_width(text)).rstrip()
        lines.append(centred.replace(text, f"{ITALIC}{text}{RESET}") if styled else centred)
    lines.append(rule(box.top))
    lines += row_lines(headers, box.head, BOLD if styled else "")
    lines.append(rule(box.head_rule))
    for values in cells:
        lines += row_lines(values, box.body, "")
    lines.append(rule(box.bottom))
    return lines
