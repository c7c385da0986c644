"""`listen --record` syncs in a helper process (inspera_cli.syncprocess): what a user sees of it --
answers only after the sync, 500 (never 200) once the helper is gone, nothing left running after
the receiver, Ctrl-C to the process group stops the receiver as before."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
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


def test_the_helper_ends_with_the_receiver_even_when_killed(tmp_path: Path) -> None:
    marker = f"RECORD_SYNC_TEST={uuid.uuid4().hex}"
    name, value = marker.split("=")
    record = tmp_path / "events.jsonl"
    with ListenProcess("--secret-env", "LISTEN_SECRET", "--record", str(record), env={name: value}) as lp:
        with requests.Session() as session:
            assert post(session, lp.url, 1) == 200
        [helper] = helpers(marker)
        lp.proc.kill()  # SIGKILL: no clean-up of any kind
        lp.proc.wait(10)
        assert wait_until(lambda: not helpers(marker)), f"the sync helper {helper} outlived listen"
    assert [r.fields["contextObjectId"] for r in RecordReader(record, strict=True)] == [1]


def test_ctrl_c_to_the_process_group_stops_listen_and_its_helper_cleanly(tmp_path: Path) -> None:
    marker = f"RECORD_SYNC_TEST={uuid.uuid4().hex}"
    name, value = marker.split("=")
    record = tmp_path / "events.jsonl"
    with ListenProcess("--secret-env", "LISTEN_SECRET", "--record", str(record), env={name: value}) as lp:
        with requests.Session() as session:
            assert post(session, lp.url, 1) == 200
            [helper] = helpers(marker)
            os.kill(helper, signal.SIGINT)  # as a terminal's Ctrl-C reaches every process of the job
            assert post(session, lp.url, 2) == 200  # the helper ignored it; listen decides
        assert lp.stop(signal.SIGINT) == 0
        assert "Traceback" not in lp.err_text
        assert wait_until(lambda: not helpers(marker))
    assert [r.fields["contextObjectId"] for r in RecordReader(record, strict=True)] == [1, 2]


def test_without_its_sync_helper_listen_answers_500_never_200(tmp_path: Path) -> None:
    marker = f"RECORD_SYNC_TEST={uuid.uuid4().hex}"
    name, value = marker.split("=")
    record = tmp_path / "events.jsonl"
    with ListenProcess("--secret-env", "LISTEN_SECRET", "--json", "--record", str(record),
                       env={name: value}) as lp:
        with requests.Session() as session:
            assert post(session, lp.url, 1) == 200
            [helper] = helpers(marker)
            os.kill(helper, signal.SIGKILL)
            assert wait_until(lambda: not helpers(marker))
            assert [post(session, lp.url, n) for n in (2, 3)] == [500, 500]
        assert lp.wait_for(lambda: len(lp.stdout) == 3)
        assert lp.stop() == 0
    assert [json.loads(line)["status"] for line in lp.stdout] == [200, 500, 500]
    assert "sync process is gone" in lp.err_text
    # Nothing acknowledged is missing; nothing refused is in the file as acknowledged.
    assert [r.fields["contextObjectId"] for r in RecordReader(record, strict=True)] == [1]


def test_lines_written_during_a_sync_wait_for_the_next_one(tmp_path: Path) -> None:
    """Many connections at once through the helper: every 200 is on disk when it arrives."""
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
