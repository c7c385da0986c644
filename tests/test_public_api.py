"""The typed library API of SPEC §7: names, signatures, laziness, py.typed, mypy --strict."""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import inspera_cli
from tests.test_public_api_readme import python_blocks

PACKAGE = Path(inspera_cli.__file__).parent
PUBLIC = {
    "Event",
    "InsperaClient",
    "InsperaError",
    "SignatureError",
    "Subscription",
    "parse_event",
    "sign",
    "verify_signature",
}
PUBLIC_MODULES = ["__init__.py", "signing.py", "webhook_body.py", "errors.py", "client.py"]


def test_all_lists_the_public_names() -> None:
    assert set(inspera_cli.__all__) == PUBLIC | {"__version__"}
    namespace: dict[str, object] = {}
    exec("from inspera_cli import *", namespace)
    assert PUBLIC <= set(namespace)
    assert PUBLIC <= set(dir(inspera_cli))


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_public_name_is_documented(name: str) -> None:
    assert inspect.getdoc(getattr(inspera_cli, name)), f"inspera_cli.{name} has no docstring"


def test_client_methods_are_documented() -> None:
    client = inspera_cli.InsperaClient
    for method in ("events", "subscriptions", "create", "delete"):
        assert inspect.getdoc(getattr(client, method)), f"InsperaClient.{method} has no docstring"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        inspera_cli.Nope  # noqa: B018


def parameters(function: object) -> list[tuple[str, str]]:
    return [(p.name, p.kind.name) for p in inspect.signature(function).parameters.values()]  # type: ignore[arg-type]


def test_signatures_are_those_of_the_spec() -> None:
    positional = "POSITIONAL_OR_KEYWORD"
    keyword = "KEYWORD_ONLY"
    assert parameters(inspera_cli.InsperaClient.__init__) == [
        ("self", positional),
        ("url", positional),
        ("client_id", positional),
        ("api_key", positional),
        ("token", keyword),
        ("profile", keyword),
        ("timeout", keyword),
    ]
    subscriptions = parameters(inspera_cli.InsperaClient.subscriptions)
    assert subscriptions == [("self", positional), ("event", positional)]
    assert parameters(inspera_cli.InsperaClient.create) == [
        ("self", positional),
        ("event", positional),
        ("endpoint", positional),
        ("secret", positional),
    ]
    assert parameters(inspera_cli.InsperaClient.delete) == [
        ("self", positional),
        ("subscription_id", positional),
        ("missing_ok", keyword),
    ]
    assert parameters(inspera_cli.sign) == [("body", positional), ("secret", positional)]
    assert parameters(inspera_cli.verify_signature) == [
        ("body", positional),
        ("header", positional),
        ("secret", positional),
    ]
    assert parameters(inspera_cli.parse_event) == [("body", positional)]


def test_data_classes_have_snake_case_fields() -> None:
    subscription = [f.name for f in dataclasses.fields(inspera_cli.Subscription)]
    assert subscription == ["subscription_id", "event", "endpoint", "last_modified"]
    event = [f.name for f in dataclasses.fields(inspera_cli.Event)]
    assert event == ["event", "context_object_id", "timestamp", "fields"]


def test_errors() -> None:
    assert issubclass(inspera_cli.SignatureError, inspera_cli.InsperaError)
    body = b'{"event": "x"}'
    with pytest.raises(inspera_cli.SignatureError, match="does not match"):
        inspera_cli.verify_signature(body, "0" * 40, "secret")
    with pytest.raises(ValueError, match="neither JSON nor a Java map"):
        inspera_cli.parse_event(b"hello")


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout.strip()


def test_importing_the_package_does_not_import_requests() -> None:
    """One program, step by step: imported, the class looked up, then a client made."""
    code = (
        "import sys, inspera_cli; print('requests' in sys.modules); "
        "inspera_cli.InsperaClient; print('requests' in sys.modules); "
        "inspera_cli.InsperaClient(url='https://t.example'); print('requests' in sys.modules)"
    )
    # requests comes with the first session
    assert run_python(code).split() == ["False", "False", "True"]


def test_the_package_is_marked_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()


def mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", *args],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=cwd,
        env={**os.environ, "MYPY_CACHE_DIR": str(cwd / ".mypy_cache")},
    )


@pytest.mark.slow
def test_mypy_strict_on_the_public_modules_and_on_a_user_of_them(tmp_path: Path) -> None:
    # The user's program (and the README's examples) live outside the repository, so mypy finds
    # the installed package and only trusts its annotations because of py.typed.
    user = tmp_path / "receiver.py"
    user.write_text(
        textwrap.dedent(
            """
            from inspera_cli import (
                Event, InsperaClient, InsperaError, SignatureError, Subscription,
                parse_event, sign, verify_signature,
            )

            def handle(body: bytes, header: str | None, secret: str) -> int | None:
                try:
                    verify_signature(body, header, secret)
                except SignatureError:
                    return None
                event: Event = parse_event(body)
                return event.context_object_id

            def endpoints(client: InsperaClient) -> list[str]:
                subs: list[Subscription] = client.subscriptions(event="confirm_final_grades")
                return [s.endpoint for s in subs]

            signature: str = sign(b"{}", "secret")
            error: type[Exception] = InsperaError
            """
        )
    )
    examples = []
    for number, code in enumerate(python_blocks()):
        examples.append(tmp_path / f"readme_example_{number}.py")
        examples[-1].write_text(code, encoding="utf-8")
    user_check = mypy(str(user), *map(str, examples), cwd=tmp_path)
    assert user_check.returncode == 0, user_check.stdout + user_check.stderr
    modules = [str(PACKAGE / name) for name in PUBLIC_MODULES]
    package_check = mypy(*modules, cwd=tmp_path)
    assert package_check.returncode == 0, package_check.stdout + package_check.stderr
