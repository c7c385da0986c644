"""Tables on a terminal (inspera_cli/output/table.py): the picture, fitting the width, cutting and folding."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from inspera_cli.output.table import (
    BOLD,
    RESET,
    Column,
    cell_width,
    fit_widths,
    fold,
    printable,
    terminal_table,
    truncate,
)
from tests.stub_server import Reply
from tests.test_tty import Terminal

COLUMNS = [Column("id", "ID", no_wrap=True), Column("event", "Event"),
           Column("endpoint", "Endpoint", no_wrap=True)]
ROWS = [["7", "confirm_final_grades", "https://hooks.example.edu/inspera"], ["12", "complete_grading", "-"]]


def test_a_table_that_fits_is_as_wide_as_its_values() -> None:
    assert terminal_table(ROWS, COLUMNS, width=80, styled=False) == [
        "┏━━━━┳━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┓",
        "┃ ID ┃ Event                ┃ Endpoint                          ┃",
        "┡━━━━╇━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┩",
        "│ 7  │ confirm_final_grades │ https://hooks.example.edu/inspera │",
        "│ 12 │ complete_grading     │ -                                 │",
        "└────┴──────────────────────┴───────────────────────────────────┘",
    ]


def test_a_narrow_terminal_cuts_no_wrap_values_and_folds_the_others() -> None:
    assert terminal_table(ROWS, COLUMNS, width=40, styled=False) == [
        "┏━━━━┳━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━┓",
        "┃ ID ┃ Event          ┃ Endpoint       ┃",
        "┡━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━┩",
        "│ 7  │ confirm_final_ │ https://hooks… │",
        "│    │ grades         │                │",
        "│ 12 │ complete_gradi │ -              │",
        "│    │ ng             │                │",
        "└────┴────────────────┴────────────────┘",
    ]


def test_styles_bold_header_and_italic_title_only_when_styled() -> None:
    styled = terminal_table(ROWS, COLUMNS, width=80, styled=True, title="Subscriptions")
    assert styled[0].strip() == "\x1b[3mSubscriptions\x1b[0m"
    assert styled[2] == f"┃{BOLD} ID {RESET}┃{BOLD} Event{' ' * 16}{RESET}┃{BOLD} Endpoint{' ' * 26}{RESET}┃"
    plain = terminal_table(ROWS, COLUMNS, width=80, styled=False, title="Subscriptions")
    assert not any("\x1b" in line for line in plain) and plain[0].strip() == "Subscriptions"


def test_no_rows_is_a_header() -> None:
    lines = terminal_table([], [Column("a", "A")], width=80, styled=False)
    assert lines == ["┏━━━┓", "┃ A ┃", "┡━━━┩", "└───┘"]


def test_an_ascii_terminal_gets_an_ascii_box_and_ellipsis() -> None:
    lines = terminal_table(ROWS, COLUMNS, width=40, styled=False, ascii_only=True)
    assert all(line.isascii() for line in lines)
    assert lines[0] == "+" + "-" * 38 + "+" and lines[2].startswith("|----+---")
    assert "https://hoo... |" in lines[3]


def test_control_characters_in_the_data_never_reach_the_terminal() -> None:
    lines = terminal_table([["1", "evil\x1b]0;title\x07\x9b31m", "a\nb"]], COLUMNS, width=80, styled=False)
    text = "\n".join(lines)
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)
    assert "evil\ufffd]0;title\ufffd\ufffd31m" in text and "a b" in text


CELL = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="│|"), max_size=40)
ALL_NO_WRAP = [Column(c.key, c.header, no_wrap=True) for c in COLUMNS]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(CELL, min_size=3, max_size=3), max_size=5),
    width=st.integers(min_value=13, max_value=160),
    ascii_only=st.booleans(),
)
def test_every_line_fits_and_a_no_wrap_value_keeps_to_its_line(
    rows: list[list[str]], width: int, ascii_only: bool
) -> None:
    lines = terminal_table(rows, COLUMNS, width=width, styled=False, ascii_only=ascii_only)
    (table_width,) = {cell_width(line) for line in lines}  # a rectangle
    assert table_width <= width
    body = terminal_table(rows, ALL_NO_WRAP, width=width, styled=False, ascii_only=ascii_only)[3:-1]
    assert len(body) == len(rows)
    divider, ellipsis = ("|", "...") if ascii_only else ("│", "…")
    for line, values in zip(body, rows, strict=True):
        for shown, value in zip(line[1:-1].split(divider), values, strict=True):
            assert shown.strip().removesuffix(ellipsis).strip() in printable(value)


def test_the_widest_columns_shrink_first() -> None:
    assert fit_widths([7, 20, 75, 24], 107) == [7, 20, 56, 24]
    assert fit_widths([10, 30, 30], 50) == [10, 20, 20]
    assert fit_widths([10, 30, 31], 50) == [10, 20, 20]
    assert fit_widths([5, 5], 1) == [1, 1]
    assert fit_widths([3, 4], 10) == [3, 4]


def test_truncate_and_fold_count_wide_characters_twice() -> None:
    assert truncate("日本語のテキスト", 7) == "日本語…"
    assert cell_width(truncate("日本語のテキスト", 7)) <= 7
    assert fold("日本語 text", 4) == ["日本", "語", "text"]
    assert fold("a few short words here", 10) == ["a few", "short", "words here"]
    assert fold("x" * 10, 3) == ["xxx", "xxx", "xxx", "x"]
    assert fold("ab 日本語", 1) == ["a", "b", "\ufffd", "\ufffd", "\ufffd"]  # wider than the column
    assert truncate("abc", 1) == "a" and truncate("abc", 0) == ""


def test_list_on_a_terminal_is_a_table_that_fits_it(stub: Any, tmp_path: Any) -> None:
    long_endpoint = "https://hooks.example.edu/inspera/receiver/endpoint?tenant=assessment"
    stub.on("GET", "/api/v1/subscription", Reply(body={"subscriptions": [
        {"subscriptionId": 4242, "event": "confirm_final_grades", "endpoint": long_endpoint,
         "lastModified": "2026-11-30T12:34:56.789Z"},
    ]}))
    term = Terminal(["list"], stub.subprocess_env(tmp_path) | {"TERM": "xterm-256color"}, 60)
    assert term.exit_code() == 0, term.screen
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in term.screen.split("\r\n") if line]
    assert lines[0].startswith("┏") and lines[-1].startswith("└") and "4242" in lines[3]
    assert max(cell_width(line) for line in lines) <= 60
    assert f"{BOLD} ID" in term.screen
