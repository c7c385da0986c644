"""`listen --record` syncs in a helper process (inspera_cli.syncprocess): what a user sees of it --
answers only after the sync, 500 (never 200) once the helper is gone, nothing left running after
the receiver, Ctrl-C to the process group stops the receiver as before."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from inspera_cli.listener import Listener, ListenerConfig
from inspera_cli.recording import RecordReader, encode_record
from tests.processes import running_with
from tests.test_listen import ListenProcess, event_body, signed_headers

SECRET = "listen-test-secret-5e1f"


def helpers(marker: str) -> list[int]:
    """The sync helpers among the processes whose environment holds ``marker``."""
    found = []
    for pid in running_with(marker):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"fdatasync" in cmdline.read():
                    found.append(pid)
        except OSError:
            continue
    return found


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def post(session: requests.Session, url: str, object_id: int) -> int:
    body = event_body(object_id=object_id)
    return session.post(url, data=body, headers=signed_headers(body), timeout=10).status_code


@contextlib.contextmanager
def recording_listen(record: Path, *args: str) -> Iterator[tuple[ListenProcess, str]]:
    """`listen --record` in a subprocess, and the marker its sync helpers' environment holds."""
    value = uuid.uuid4().hex
    with ListenProcess("--secret-env", "LISTEN_SECRET", *args, "--record", str(record),
                       env={"RECORD_SYNC_TEST": value}) as lp:
        yield lp, f"RECORD_SYNC_TEST={value}"


def test_the_helper_ends_with_the_receiver_even_when_killed(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with recording_listen(record) as (lp, marker):
        with requests.Session() as session:
            assert post(session, lp.url, 1) == 200
        assert helpers(marker)
        lp.proc.kill()  # SIGKILL: no clean-up of any kind
        lp.proc.wait(10)
        assert wait_until(lambda: not helpers(marker)), f"sync helpers {helpers(marker)} outlived listen"
    assert [r.fields["contextObjectId"] for r in RecordReader(record, strict=True)] == [1]


def test_ctrl_c_to_the_process_group_stops_listen_and_its_helper_cleanly(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with recording_listen(record) as (lp, marker):
        with requests.Session() as session:
            assert post(session, lp.url, 1) == 200
            for helper in helpers(marker):
                os.kill(helper, signal.SIGINT)  # as a terminal's Ctrl-C reaches every process of the job
            assert post(session, lp.url, 2) == 200  # the helpers ignored it; listen decides
        assert lp.stop(signal.SIGINT) == 0
        assert "Traceback" not in lp.err_text
        assert wait_until(lambda: not helpers(marker))
    assert [r.fields["contextObjectId"] for r in RecordReader(record, strict=True)] == [1, 2]


def test_without_its_sync_helper_listen_answers_500_never_200(tmp_path: Path) -> None:
    record = tmp_path / "events.jsonl"
    with recording_listen(record, "--json") as (lp, marker):
        with requests.Session() as session:
            assert post(session, lp.url, 1) == 200
            for helper in helpers(marker):
                os.kill(helper, signal.SIGKILL)
            assert wait_until(lambda: not helpers(marker))
            assert [post(session, lp.url, n) for n in (2, 3)] == [500, 500]
        assert lp.wait_for(lambda: len(lp.stdout) == 3)
        assert lp.stop() == 0
    assert [json.loads(line)["status"] for line in lp.stdout] == [200, 500, 500]
    assert "sync process is gone" in lp.err_text
    # Nothing acknowledged is missing; nothing refused is in the file as acknowledged.
    assert [r.fields["contextObjectId"] for r in RecordReader(record, strict=True)] == [1]


def test_every_200_is_on_disk_when_it_arrives_with_many_connections(tmp_path: Path) -> None:
    """Many connections at once through the sync helpers: every 200 is on disk when it arrives."""
    path = tmp_path / "events.jsonl"
    listener = Listener(ListenerConfig(port=0, secret=SECRET, record=path))
    listener.start()
    try:
        import concurrent.futures

        def send(object_id: int) -> tuple[int, int]:
            with requests.Session() as session:
                status = post(session, listener.url, object_id)
            on_disk = {r.fields["contextObjectId"] for r in RecordReader(path)}
            return status, object_id in on_disk

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(send, range(200)))
    finally:
        listener.shutdown()
    assert outcomes == [(200, True)] * 200
    assert sorted(r.fields["contextObjectId"] for r in RecordReader(path, strict=True)) == list(range(200))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


# 50 examples of nested JSON with any text: a setting of the encoder that differs from
# JSONEncoder's (ASCII escapes, separators, key order, floats) shows in the first few.
@pytest.mark.slow
@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(), json_values))
def test_a_record_line_is_exactly_the_compact_ascii_json_of_the_record(record: dict[str, Any]) -> None:
    """The line encoder is built once (not per line); its bytes are JSONEncoder's, to the byte."""
    expected = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode(record) + "\n"
    assert encode_record(record) == expected.encode("ascii")


def test_a_record_that_is_not_json_is_a_type_error_that_says_so() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_record({"payload": object()})


def test_without_a_python_to_run_the_helper_the_record_is_synced_on_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A build whose sys.executable is not Python (the helper never says it runs): the writer
    syncs on a thread of its own, as durably; nothing is lost or acknowledged early."""
    monkeypatch.setattr("sys.executable", "/bin/true")
    path = tmp_path / "events.jsonl"
    listener = Listener(ListenerConfig(port=0, secret=SECRET, record=path))
    listener.start()
    try:
        with requests.Session() as session:
            assert [post(session, listener.url, n) for n in range(5)] == [200] * 5
    finally:
        listener.shutdown()
    assert "syncing on a thread" in caplog.text
    assert [r.fields["contextObjectId"] for r in RecordReader(path, strict=True)] == list(range(5))


class FakeHelper:
    """A sync helper whose answers the test gives, in any order (syncprocess.SyncProcess's face)."""

    made: list[FakeHelper] = []

    def __init__(self, path: Any, fd: int, loop: Any, synced: Any, what: str = "") -> None:
        self.synced = synced
        self.asked = 0
        self.gone = False
        FakeHelper.made.append(self)

    def request(self) -> None:
        self.asked += 1

    def answer(self, error: OSError | None = None) -> None:
        self.synced(error)

    def close(self) -> None:
        pass


def test_two_syncs_at_once_acknowledge_only_what_each_began_after_and_a_failure_voids_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import errno

    from inspera_cli import syncprocess
    from inspera_cli.recording import RecordWriter

    FakeHelper.made = []
    monkeypatch.setattr(syncprocess, "SyncProcess", FakeHelper)
    loop = asyncio.new_event_loop()
    path = tmp_path / "r.jsonl"
    writer = RecordWriter(path, loop=loop)
    first, second = FakeHelper.made
    outcomes: dict[int, BaseException | None] = {}

    def append(n: int) -> None:
        writer.append({"n": n}, lambda error: outcomes.__setitem__(n, error))
        loop.run_until_complete(asyncio.sleep(0))  # the end of the loop's turn: written, sync asked

    try:
        append(1)
        assert (first.asked, second.asked) == (1, 0)
        append(2)  # written while the first sync is under way: a second sync begins at once
        assert (first.asked, second.asked) == (1, 1)
        second.answer()  # the later sync ends first: it covers both lines
        assert outcomes == {1: None, 2: None}
        first.answer()
        append(3)
        append(4)
        assert (first.asked, second.asked) == (2, 2)
        first.answer(OSError(errno.EIO, "Input/output error"))  # 3 fails, and 4 with it...
        assert {n: getattr(outcomes[n], "errno", None) for n in (3, 4)} == {3: errno.EIO, 4: errno.EIO}
        second.answer()  # ...though the other sync then succeeds: it may not have seen the error
        assert path.read_bytes() == encode_record({"n": 1}) + encode_record({"n": 2})
        append(5)
        assert (first.asked, second.asked) == (3, 2)  # the first free helper
        first.answer()
        assert outcomes[5] is None
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        writer.close()
        loop.close()
    assert path.read_bytes() == b"".join(encode_record({"n": n}) for n in (1, 2, 5))
