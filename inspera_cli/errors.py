"""Domain exceptions and the exit codes they map to (the mapping lives in cli.main only)."""

from __future__ import annotations

from enum import IntEnum, unique

from inspera_cli.redaction import redact


@unique
class ExitCode(IntEnum):
    """What an exit status means (SPEC §3), one name per number. `apply --detailed-exitcode` says
    "changes" with a 2 of its own (``commands.apply.CHANGES_EXIT_CODE``)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    CREDENTIALS = 3
    NOT_FOUND = 4
    INTERRUPTED = 130


class InsperaError(Exception):
    """Base of every error this package raises on purpose; its message is one line for the user.

    Its text is redacted (``redaction.redact``): a secret the server echoed into it shows as ``***``
    wherever the message goes (the error line, a doctor check, an apply outcome).
    """

    exit_code: ExitCode = ExitCode.FAILURE

    def __str__(self) -> str:
        return redact(super().__str__())


class UsageError(InsperaError):
    """The command line is inconsistent in a way Click cannot see (e.g. an unset --secret-env)."""

    exit_code = ExitCode.USAGE


class ConfigError(InsperaError):
    """A configuration or input file is unreadable or invalid."""


class CredentialsError(InsperaError):
    """Settings are missing or the tenant rejected the credentials."""

    exit_code = ExitCode.CREDENTIALS


class NotFoundError(InsperaError):
    """The thing asked for does not exist (e.g. an unknown subscription id)."""

    exit_code = ExitCode.NOT_FOUND


class APIError(InsperaError):
    """The Inspera API answered with an error status or a body that is not what the API sends."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SubscriptionNotListed(APIError):
    """Inspera accepted a create with an empty answer, but listing does not show the new one."""


class NetworkError(InsperaError):
    """The request never got an HTTP answer: refused, DNS, timeout, TLS."""


class SignatureError(InsperaError, ValueError):
    """A webhook signature did not verify; the message says why."""
