"""One line of `doctor`'s checklist: ``Check`` and its ``CheckStatus``."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# How to expose a receiver on this machine to Inspera (the fix of more than one check).
TUNNEL_HINT = "a tunnel (`inspera-hooks listen --tunnel cloudflared`)"

CheckStream = Generator["Check", None, bool]


class CheckStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # could not run because an earlier check failed


PASS, FAIL, SKIP = CheckStatus.PASS, CheckStatus.FAIL, CheckStatus.SKIP


@dataclass(frozen=True)
class Check:
    """One line of the checklist: what was checked, how it went, what was seen, how to fix it
    (or, for a check that passed, a note)."""

    check: str
    status: CheckStatus
    detail: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is PASS

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status.value, "ok": self.ok, "detail": self.detail,
                "fix": self.fix}


def skipped(check: str, why: str) -> Check:
    """A check that could not run because an earlier one failed."""
    return Check(check, SKIP, f"skipped: {why}")


