"""Files that hold secrets or events (config, token cache, record files, the relay queue and its
lock, the sandbox state): mode 0600 whatever the umask, and never written through a symbolic link
planted at their path -- nor through the predictable name of a temp file beside them."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inspera_cli.errors import InsperaError
from inspera_cli.recording import RecordWriter
from inspera_cli.relay.lock import QueueLock
from inspera_cli.relay.queue import SQLiteQueue
from inspera_cli.sandbox.store import SubscriptionStore

PRECIOUS = "a file the attacker wants overwritten\n"


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A file that links point at; the test checks that it is left exactly as it was."""
    path = tmp_path / "victim"
    path.write_text(PRECIOUS)
    path.chmod(0o644)
    yield path
    assert path.read_text() == PRECIOUS
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def open_record(path: Path) -> None:
    RecordWriter(path).close()


def open_queue(path: Path) -> None:
    SQLiteQueue(path, create=True).close()


def lock_queue(path: Path) -> None:
    lock = QueueLock(path.with_name(path.name.removesuffix(".lock")))
    lock.acquire()
    lock.release()


def open_sandbox_state(path: Path) -> None:
    SubscriptionStore(path).close()


@pytest.mark.parametrize(
    ("name", "opener"),
    [
        ("events.jsonl", open_record),
        ("relay.sqlite", open_queue),
        ("relay.sqlite.lock", lock_queue),
        ("sandbox.db", open_sandbox_state),
    ],
    ids=["record file", "relay queue", "relay lock", "sandbox state"],
)
def test_a_symbolic_link_at_a_private_path_is_refused(tmp_path: Path, victim: Path, name: str,
                                                      opener: Callable[[Path], None]) -> None:
    link = tmp_path / name
    link.symlink_to(victim)
    with pytest.raises((OSError, InsperaError), match="symbolic link"):
        opener(link)


@pytest.mark.parametrize("side", ["-wal", "-shm", "-journal"])
def test_a_symbolic_link_beside_the_relay_queue_is_refused(tmp_path: Path, victim: Path, side: str) -> None:
    (tmp_path / f"relay.sqlite{side}").symlink_to(victim)
    with pytest.raises(InsperaError, match=f"relay.sqlite{side}: it is a symbolic link"):
        open_queue(tmp_path / "relay.sqlite")


def test_a_device_given_as_the_record_file_keeps_its_mode(tmp_path: Path) -> None:
    """Tightening to 0600 is for our own regular files: `--record /dev/null` run as root must not
    make /dev/null root's alone (a FIFO stands in for the device)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o644)
    fifo.chmod(0o644)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a writer may open a FIFO once it has a reader
    try:
        open_record(fifo)
    finally:
        os.close(reader)
    assert mode(fifo) == 0o644


def test_config_set_does_not_write_through_a_link_at_its_temp_file(cli, isolated_home: Path,
                                                                   victim: Path) -> None:
    folder = isolated_home / ".config" / "inspera-hooks"
    folder.mkdir(parents=True)
    (folder / f".config.toml.{os.getpid()}.tmp").symlink_to(victim)  # the temp file's name in this process
    cli("config", "set", "timeout", "60")
    assert "timeout = 60" in (folder / "config.toml").read_text()
    assert mode(folder / "config.toml") == 0o600
    assert not list(folder.glob(".config.toml.*.tmp"))


def test_config_and_token_cache_are_0600_under_umask_000(cli, sandbox_env, isolated_home: Path) -> None:
    previous = os.umask(0)
    try:
        cli("config", "set", "timeout", "60")
        cli("events", "--json")
    finally:
        os.umask(previous)
    written = [p for p in isolated_home.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert {p.name for p in written} >= {"config.toml"} and len(written) >= 2, written
    for path in written:
        assert mode(path) == 0o600, path


def test_the_relay_queue_and_its_wal_are_0600_under_umask_000(tmp_path: Path) -> None:
    from tests.test_relay_queue import T0, new

    previous = os.umask(0)
    try:
        queue = SQLiteQueue(tmp_path / "q.sqlite", create=True)
        queue.enqueue([new(1)], now=T0, dedupe_since=0)
        for name in ("q.sqlite", "q.sqlite-wal", "q.sqlite-shm"):
            assert mode(tmp_path / name) == 0o600, name
        queue.close()
    finally:
        os.umask(previous)
