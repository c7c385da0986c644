"""The relay's JSON log lines: made without json.dumps of a dict, and still exactly its text."""

from __future__ import annotations

import json

import pytest

from inspera_cli.relay.observe import Change, ChangeKind

CHANGES = [
    Change(ChangeKind.RECEIVED, 1_700_000_000.123, "ab" * 16, "confirm_final_grades", 123,
           "http://127.0.0.1:5000/hooks"),
    Change(ChangeKind.DUPLICATE, 0.0, "x", None, None, "u"),
    Change(ChangeKind.RETRYING, 1_700_000_000.0, "ab" * 16, 'ev"\\ñ\u2028\x01\x7f', -5, "http://x/ü?a=\"b\"",
           3, 503, "answered 503 (Retry-After: 1.0 s)\n\t", 1_700_000_005.5, 0.01234),
    Change(ChangeKind.DELIVERED, 253402300799.9995, "ü", "e", 2**70, "u", 1, 200, None, None, 123.456789),
    Change(ChangeKind.DEAD, 1.5, "id", "😀", 0, "u", 9, None, "connection refused", None, 1e-9),
]


@pytest.mark.parametrize("ensure_ascii", [False, True])
@pytest.mark.parametrize("change", CHANGES, ids=[c.kind.value for c in CHANGES])
def test_a_json_log_line_is_what_json_dumps_makes_of_to_json(change: Change, ensure_ascii: bool) -> None:
    expected = json.dumps(change.to_json(), ensure_ascii=ensure_ascii, separators=(",", ":"))
    assert change.json_line(ensure_ascii=ensure_ascii) == expected
