"""The bytes of an answer (inspera_cli.listener.http.encode): reused for the same small answer
within a second, never for another answer or after the Date changed."""

from __future__ import annotations

import pytest

from inspera_cli.listener import http
from inspera_cli.listener.http import Answer, encode


def test_the_same_answer_is_the_same_bytes_and_another_answer_is_not() -> None:
    ok = encode(Answer(200, b"OK\n"), close=False)
    assert encode(Answer(200, b"OK\n"), close=False) == ok
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nOK\n")
    assert b"Connection: close" in encode(Answer(200, b"OK\n"), close=True)
    assert encode(Answer(200, b"OK\n"), close=False, head=True).endswith(b"\r\n\r\n")
    assert encode(Answer(201, b"OK\n"), close=False).startswith(b"HTTP/1.1 201 Created\r\n")
    assert encode(Answer(200, b"no\n"), close=False).endswith(b"\r\n\r\nno\n")
    other = encode(Answer(200, b"OK\n", content_type="application/json"), close=False)
    assert b"Content-Type: application/json\r\n" in other
    assert b"X-A: 1\r\n" in encode(Answer(200, b"OK\n", headers=(("X-A", "1"),)), close=False)


def test_a_new_second_gets_a_new_date(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_700_000_000.2]
    monkeypatch.setattr(http.time, "time", lambda: now[0])
    first = encode(Answer(200, b"OK\n"), close=False)
    assert b"Date: Tue, 14 Nov 2023 22:13:20 GMT\r\n" in first
    now[0] += 1
    assert b"Date: Tue, 14 Nov 2023 22:13:21 GMT\r\n" in encode(Answer(200, b"OK\n"), close=False)


def test_large_answers_are_not_kept() -> None:
    body = b"x" * 100_000
    assert encode(Answer(200, body), close=False).endswith(body)
    assert all(len(data) < 10_000 for data in http._encoded.values())
