"""`--debug`: the package's log records (HTTP exchanges, already redacted) on stderr.

Its own module so that a run without --debug does not import logging (cli.py imports this only
for --debug, or to undo an earlier --debug run in the same process).
"""

from __future__ import annotations

import logging
import sys

from inspera_cli.redaction import redact


class _DebugHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(redact(self.format(record)) + "\n")


def configure(debug: bool) -> None:
    """--debug on: a handler on the package's logger; off: any such handler removed."""
    logger = logging.getLogger("inspera_cli")
    for handler in [h for h in logger.handlers if isinstance(h, _DebugHandler)]:
        logger.removeHandler(handler)
    # Without --debug, leave the logger as an embedding program configured it.
    logger.setLevel(logging.DEBUG if debug else logging.NOTSET)
    if debug:
        handler = _DebugHandler()
        handler.setFormatter(logging.Formatter("debug: %(message)s"))
        logger.addHandler(handler)
