"""The record file (inspera_cli.recording): written durably and whole, read line by line."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from inspera_cli.listener import Listener, ListenerConfig
from inspera_cli.recording import (
    RECORD_MODE,
    CorruptLine,
    RecordError,
    RecordReader,
    RecordWriter,
    body_fields,
    encode_record,
)
from tests.test_listen import event_body, signed_headers

SECRET = "listen-test-secret-5e1f"


def record(number: int, body: bytes | None = None) -> dict[str, Any]:
    body = body if body is not None else event_body(object_id=number)
    return {"receivedAt": "2024-05-01T12:00:00.000Z", "event": "confirm_final_grades",
            "contextObjectId": number, "status": 200, "headers": {}, **body_fields(body)}


def write(writer: RecordWriter, item: dict[str, Any]) -> BaseException | None:
    done = threading.Event()
    outcome: list[BaseException | None] = []
    writer.append(item, lambda error: (outcome.append(error), done.set()))
    assert done.wait(5)
    return outcome[0]


# -- writing ---------------------------------------------------------------------------------------


def test_lines_are_ascii_so_only_newline_separates_them(tmp_path: Path) -> None:
    body = json.dumps({"event": "x", "t": "a\u2028b\u2029c\x85d\x1c\r"}, ensure_ascii=False).encode()
    line = encode_record({**record(1, body), "headers": {"X-Odd": "\x85"}})
    assert line.isascii() and line.count(b"\n") == 1 and line.endswith(b"\n")
    assert b"\\u2028" in line and b"\\u0085" in line
    path = tmp_path / "r.jsonl"
    writer = RecordWriter(path)
    writer.append_and_wait({**record(1, body), "headers": {"X-Odd": "\x85"}})
    writer.close()
    [read] = RecordReader(path)
    assert read.body == body and read.headers == {"X-Odd": "\x85"}


def test_the_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        writer = RecordWriter(tmp_path / "new.jsonl")
        writer.close()
        older = tmp_path / "older.jsonl"
        older.write_text("")
        older.chmod(0o666)
        RecordWriter(older).close()
    finally:
        os.umask(previous)
    assert (tmp_path / "new.jsonl").stat().st_mode & 0o777 == RECORD_MODE
    assert older.stat().st_mode & 0o777 == RECORD_MODE


def test_listen_record_file_is_0600_under_umask_000(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        listener = Listener(ListenerConfig(port=0, record=tmp_path / "events.jsonl"))
        listener.start()
        listener.shutdown()
    finally:
        os.umask(previous)
    assert (tmp_path / "events.jsonl").stat().st_mode & 0o777 == 0o600


class FailingDisk:
    """os.write that takes ``room`` more bytes, then fails with ENOSPC (part-way through a write)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, fd: int, data: memoryview) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = os.write(fd, data[: self.room])
        self.room -= written
        return written


def test_a_write_that_fails_part_way_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    disk = FailingDisk(room=len(encode_record(record(1))) + 40)  # the second line only part-fits
    writer = RecordWriter(path, write=disk)
    assert write(writer, record(1)) is None
    error = write(writer, record(2))
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert path.read_bytes() == encode_record(record(1))  # the fragment is gone
    disk.room = 1 << 20  # space again
    assert write(writer, record(3)) is None
    writer.close()
    assert [r.fields["contextObjectId"] for r in RecordReader(path, strict=True)] == [1, 3]


class GatedSync:
    """A sync that notes the file size it covers and waits to be let through; ``fail`` makes the
    next one raise EIO (as a disk error found at fsync time)."""

    def __init__(self) -> None:
        self.covered: list[int] = []
        self.started = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)
        self.fail = False

    def __call__(self, fd: int) -> None:
        self.covered.append(os.fstat(fd).st_size)
        self.started.release()
        assert self.gate.acquire(timeout=5)
        if self.fail:
            self.fail = False
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


def test_a_record_is_acknowledged_only_after_a_sync_that_began_after_its_write(tmp_path: Path) -> None:
    sync = GatedSync()
    writer = RecordWriter(tmp_path / "r.jsonl", sync=sync)
    outcomes: dict[int, BaseException | None] = {}
    finished = {n: threading.Event() for n in (1, 2)}

    def append(n: int) -> None:
        writer.append(record(n), lambda error: (outcomes.__setitem__(n, error), finished[n].set()))

    append(1)
    assert sync.started.acquire(timeout=5)  # the first sync is under way...
    append(2)  # ...when the second line is written: that sync does not cover it
    sync.gate.release()
    assert finished[1].wait(5) and outcomes[1] is None
    assert sync.started.acquire(timeout=5)  # a second sync, for the second line
    assert not finished[2].is_set()
    sync.gate.release()
    assert finished[2].wait(5) and outcomes[2] is None
    writer.close()
    first = len(encode_record(record(1)))
    assert sync.covered == [first, first + len(encode_record(record(2)))]


def test_a_failed_sync_rolls_back_every_line_it_did_not_cover(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    sync = GatedSync()
    writer = RecordWriter(path, sync=sync)
    outcomes: dict[int, BaseException | None] = {}
    finished = {n: threading.Event() for n in (1, 2, 3, 4)}

    def append(n: int) -> None:
        writer.append(record(n), lambda error: (outcomes.__setitem__(n, error), finished[n].set()))

    append(1)
    assert sync.started.acquire(timeout=5)
    sync.gate.release()
    assert finished[1].wait(5) and outcomes[1] is None
    sync.fail = True
    append(2)
    assert sync.started.acquire(timeout=5)  # the failing sync covers 2...
    append(3)  # ...and 3, written during it, is lost with it
    sync.gate.release()
    assert finished[2].wait(5) and finished[3].wait(5)
    for n in (2, 3):
        error = outcomes[n]
        assert isinstance(error, OSError) and error.errno == errno.EIO
    assert path.read_bytes() == encode_record(record(1))  # truncated to the last durable line
    append(4)
    assert sync.started.acquire(timeout=5)
    sync.gate.release()
    assert finished[4].wait(5) and outcomes[4] is None
    writer.close()
    assert [r.fields["contextObjectId"] for r in RecordReader(path, strict=True)] == [1, 4]


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str = "64k") -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (test_a_write_that_fails_part_way_is_rolled_back "
                    "covers the same with an injected failing write)")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_never_corrupts_a_later_event(tmp_path: Path) -> None:
    """The defect: on a 64 KiB tmpfs the bytes of a failed write stayed, the next acknowledged
    event was appended to the fragment, and replay refused the whole file."""
    with small_tmpfs(tmp_path) as disk:
        (disk / "filler").write_bytes(b"x" * 16_000)
        path = disk / "events.jsonl"
        listener = Listener(ListenerConfig(port=0, secret=SECRET, record=path))
        listener.start()
        try:
            acknowledged: list[bytes] = []
            with requests.Session() as session:
                for _ in range(200):
                    body = event_body()
                    body = body[:-1] + b', "pad": "' + b"p" * 900 + b'"}'
                    status = session.post(listener.url, data=body, headers=signed_headers(body),
                                          timeout=5).status_code
                    if status != 200:
                        break
                    acknowledged.append(body)
                assert status == 500  # the disk filled up: not acknowledged
                assert path.read_bytes().endswith(b"\n")
                (disk / "filler").unlink()
                later = event_body()
                assert session.post(listener.url, data=later, headers=signed_headers(later),
                                    timeout=5).status_code == 200
                acknowledged.append(later)
        finally:
            listener.shutdown()
        assert len(acknowledged) > 10
        assert [r.body for r in RecordReader(path, strict=True)] == acknowledged


# -- reading ---------------------------------------------------------------------------------------


def test_a_reader_follows_a_growing_file_and_resumes_at_an_offset(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [encode_record(record(n)) for n in range(1, 5)]
    path.write_bytes(lines[0] + lines[1][:30])  # the second line is still being written
    reader = RecordReader(path)
    assert [r.fields["contextObjectId"] for r in reader.poll()] == [1]
    assert reader.poll() == []
    with path.open("ab") as grow:
        grow.write(lines[1][30:] + lines[2])
    assert [r.fields["contextObjectId"] for r in reader.poll()] == [2, 3]
    assert (reader.offset, reader.line) == (len(lines[0] + lines[1] + lines[2]), 4)
    with path.open("ab") as grow:
        grow.write(lines[3])
    later = RecordReader(path, offset=reader.offset, line=reader.line)
    [fourth] = later
    assert (fourth.fields["contextObjectId"], fourth.line, fourth.offset) == (4, 4, reader.offset)


def test_a_followed_file_that_is_truncated_or_replaced_is_read_from_its_start(tmp_path: Path) -> None:
    """Log rotation: `inspect FILE` went on reading at the old offset, so every later event was
    missed (a truncated file) or read from the middle of a line (a file replaced by a longer one)."""
    path = tmp_path / "r.jsonl"
    lines = [encode_record(record(n)) for n in range(1, 8)]
    path.write_bytes(lines[0] + lines[1] + lines[2])
    reader = RecordReader(path)
    assert [r.fields["contextObjectId"] for r in reader.poll()] == [1, 2, 3]
    path.write_bytes(lines[3])  # truncated (`> file`, copytruncate), then one event appended
    assert [r.fields["contextObjectId"] for r in reader.poll()] == [4]
    rotated = tmp_path / "r.jsonl.1"
    path.rename(rotated)
    path.write_bytes(lines[4] + lines[5] + lines[6])  # a new file, already longer than the offset
    assert [(r.fields["contextObjectId"], r.line) for r in reader.poll()] == [(5, 1), (6, 2), (7, 3)]


def test_corrupt_lines_are_skipped_and_named_or_strict_refuses(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(encode_record(record(1)) + b"{torn\n" + b"[" * 200_000 + b"\n"
                     + encode_record(record(2)) + b'{"event": "cut')
    corrupt: list[CorruptLine] = []
    read = [r.fields["contextObjectId"] for r in RecordReader(path, on_corrupt=corrupt.append)]
    assert read == [1, 2]
    assert [(c.line, c.reason.split(" (")[0]) for c in corrupt] == [
        (2, "not valid JSON"), (3, "JSON nested too deeply to be a record"), (5, "torn line")
    ]
    with pytest.raises(RecordError, match="line 2: not valid JSON"):
        list(RecordReader(path, strict=True))


def test_a_payload_too_deep_to_encode_is_left_out_and_the_body_kept() -> None:
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(5_000):
        inner["a"] = {}
        inner = inner["a"]
    line = encode_record({"payload": deep, "body": "the exact bytes"})
    assert json.loads(line) == {"payload": None, "body": "the exact bytes"}
