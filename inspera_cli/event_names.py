"""Event names: the built-in list, and how an unknown name is told (did you mean …, the valid ones).

Commands that talk to the tenant check names against its own list (`GET /v1/subscription/events`);
offline commands use the tenant's list when it is cheap to get, else ``BUILT_IN_EVENTS``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

# The event types the sandbox tenant offers. Inspera's public documentation names only
# confirm_final_grades (and `verification`, its endpoint validation); a tenant lists its own.
BUILT_IN_EVENTS: tuple[tuple[str, str], ...] = (
    ("confirm_final_grades", "Final grades for a test were confirmed"),
    ("complete_grading", "A grader marked the grading of a test as complete"),
    ("candidate_started", "A candidate started a test"),
    ("candidate_submitted", "A candidate submitted their answers"),
    ("test_published", "A test was published to its candidates"),
    ("test_closed", "A test closed for submissions"),
    ("resource_created", "A question or question set was created"),
    ("resource_updated", "A question or question set was changed"),
)
BUILT_IN_NAMES: tuple[str, ...] = tuple(name for name, _ in BUILT_IN_EVENTS)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean confirm_final_grades?)` for a near miss, else nothing."""
    matches = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(matches)}?)" if matches else ""


def unknown_events(names: Iterable[str], known: Sequence[str]) -> str | None:
    """What is wrong with ``names`` against ``known``, in one line; None when all are known."""
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if not unknown:
        return None
    if not all(name.strip() for name in unknown):  # `--event=$UNSET`
        return f"an empty event name; valid events: {', '.join(known) or '(none)'}"
    listed = ", ".join(f"{name}{did_you_mean(name, known)}" for name in unknown)
    noun = "event" if len(unknown) == 1 else "events"
    return f"unknown {noun} {listed}; valid events: {', '.join(known) or '(none)'}"
