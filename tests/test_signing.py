"""`sign` and `verify`: agreement with openssl, and one test per diagnosis."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspera_cli.signing import diagnose_signature, is_valid, sign
from inspera_cli.webhook_body import build_body
from tests.conftest import Cli
from tests.openssl import OPENSSL, openssl_sign

SECRET = "s3cret-for-signing-tests"
BODY = build_body("confirm_final_grades", 35199862, timestamp="2018-10-04T16:47:55Z")

# Keys go through argv and the environment: no NUL bytes.
secrets = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)


@pytest.mark.skipif(not os.path.exists(OPENSSL), reason="needs /usr/bin/openssl")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=2048) | st.text().map(str.encode), secret=secrets)
def test_sign_agrees_with_openssl(body: bytes, secret: str) -> None:
    expected = openssl_sign(body, secret)
    assert sign(body, secret) == expected
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "body"
        path.write_bytes(body)
        result = Cli()("sign", "--secret-env", "HOOK_SECRET", str(path), env={"HOOK_SECRET": secret})
    assert result.stdout == expected + "\n"


def test_sign_of_non_utf8_body_from_stdin(cli: Cli) -> None:
    body = b"\xff\xfe\x00binary\r\n\x80"
    result = cli("sign", "--secret-env", "K", input=body, env={"K": SECRET})  # type: ignore[arg-type]
    assert result.stdout.strip() == sign(body, SECRET)
    assert cli("sign", "--secret-env", "K", "-", input=body, env={"K": SECRET}).stdout == result.stdout  # type: ignore[arg-type]


def test_sign_never_echoes_the_secret(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "body.json"
    path.write_bytes(BODY)
    result = cli("sign", "--secret", SECRET, str(path))
    assert "shell history" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert result.stdout.strip() == sign(BODY, SECRET)


def test_sign_needs_a_secret(cli: Cli) -> None:
    result = cli("sign", input="{}", expect=2)
    assert "secret" in result.stderr and "Traceback" not in result.stderr


def test_sign_of_a_missing_file_is_one_line(cli: Cli, tmp_path: Path) -> None:
    result = cli("sign", "--secret-env", "K", str(tmp_path / "nope.json"), env={"K": SECRET}, expect=1)
    assert result.stderr.strip().splitlines() == [
        f"inspera-hooks: error: {tmp_path / 'nope.json'}: no such file"
    ]


def test_secret_stdin_needs_the_body_in_a_file(cli: Cli, tmp_path: Path) -> None:
    result = cli("sign", "--secret-stdin", input=SECRET + "\n", expect=2)
    assert "FILE" in result.stderr
    path = tmp_path / "body.json"
    path.write_bytes(BODY)
    assert cli("sign", "--secret-stdin", str(path), input=SECRET + "\n").stdout.strip() == sign(
        BODY, SECRET
    )


# --- verify -----------------------------------------------------------------------------------


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "body.json"
    path.write_bytes(BODY)
    return path


def verify(cli: Cli, path: Path, signature: str, *, secret: str = SECRET, expect: int) -> tuple[str, str]:
    result = cli(
        "verify", "--secret-env", "K", "--signature", signature, str(path),
        env={"K": secret}, expect=expect,
    )
    assert secret not in result.stdout + result.stderr
    return result.stdout, result.stderr


def test_verify_valid(cli: Cli, body_file: Path) -> None:
    stdout, stderr = verify(cli, body_file, sign(BODY, SECRET), expect=0)
    assert stdout == "valid\n"
    assert stderr == ""


def test_verify_reads_stdin(cli: Cli) -> None:
    good = cli("verify", "--secret-env", "K", "--signature", sign(BODY, SECRET),
               input=BODY.decode(), env={"K": SECRET})
    assert good.stdout == "valid\n"


def test_verify_accepts_sha1_prefix_and_upper_case_with_notes(cli: Cli, body_file: Path) -> None:
    stdout, stderr = verify(cli, body_file, "sha1=" + sign(BODY, SECRET).upper(), expect=0)
    assert stdout == "valid\n"
    assert "sha1=" in stderr and "upper-case" in stderr


def test_verify_wrong_secret(cli: Cli, body_file: Path) -> None:
    stdout, stderr = verify(cli, body_file, sign(BODY, "another-secret"), expect=1)
    assert stdout == "invalid\n"
    assert stderr.startswith("inspera-hooks: error: ")
    assert "different secret" in stderr


def test_sign_json(cli: Cli, body_file: Path) -> None:
    result = cli("sign", "--secret-env", "K", str(body_file), "--json", env={"K": SECRET})
    assert result.json == {"signature": sign(BODY, SECRET)}


@pytest.mark.parametrize(
    ("signature", "secret", "code", "valid", "reason", "notes"),
    [
        (sign(BODY, SECRET), SECRET, 0, True, None, 0),
        ("sha1=" + sign(BODY, SECRET).upper(), SECRET, 0, True, None, 2),
        (sign(BODY, "another-secret"), SECRET, 1, False, "different secret", 0),
    ],
    ids=["valid", "valid-with-notes", "wrong-secret"],
)
def test_verify_json(cli: Cli, body_file: Path, signature: str, secret: str, code: int, valid: bool,
                     reason: str | None, notes: int) -> None:
    result = cli("verify", "--secret-env", "K", "--signature", signature, str(body_file), "--json",
                 env={"K": secret}, expect=code)
    data = result.json
    assert set(data) == {"valid", "reason", "notes"} and data["valid"] is valid
    assert len(data["notes"]) == notes and all(isinstance(n, str) for n in data["notes"])
    if reason is None:
        assert data["reason"] is None and result.stderr == ""
    else:
        assert reason in data["reason"]
        assert result.stderr == f"inspera-hooks: error: {data['reason']}\n"  # the reason, once


def test_verify_trailing_newline_added_to_body(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "echoed.json"
    path.write_bytes(BODY + b"\n")
    _, stderr = verify(cli, path, sign(BODY, SECRET), expect=1)
    assert "ends with a newline" in stderr


def test_verify_json_re_serialised_key_order(cli: Cli, tmp_path: Path) -> None:
    data = json.loads(BODY)
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(dict(reversed(list(data.items())))))
    _, stderr = verify(cli, path, sign(BODY, SECRET), expect=1)
    assert "re-serialised" in stderr and "key order" in stderr


def test_verify_json_re_serialised_spacing(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(json.loads(BODY), indent=2) + "\n")  # what `jq .` would give
    _, stderr = verify(cli, path, sign(BODY, SECRET), expect=1)
    assert "re-serialised" in stderr


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000],
                         ids=["arrays", "objects"])
def test_verify_a_deeply_nested_body_is_diagnosed_not_unexpected(cli: Cli, tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.json"
    path.write_text(text)
    _, stderr = verify(cli, path, sign(BODY, SECRET), expect=1)
    assert "most likely it was made with a different secret" in stderr
    assert "unexpected" not in stderr


def test_verify_empty_signature(cli: Cli, body_file: Path) -> None:
    _, stderr = verify(cli, body_file, "", expect=1)
    assert "signature is empty" in stderr


def test_verify_pasted_header_name(cli: Cli, body_file: Path) -> None:
    _, stderr = verify(cli, body_file, f"X-Inspera-Signature: {sign(BODY, SECRET)}", expect=1)
    assert "header name 'X-Inspera-Signature:'" in stderr
    assert "that value is valid" in stderr


def test_verify_not_hex(cli: Cli, body_file: Path) -> None:
    _, stderr = verify(cli, body_file, "not-a-signature", expect=1)
    assert "not 40 hexadecimal characters" in stderr


def test_diagnose_sha256_signature() -> None:
    import hashlib
    import hmac

    sha256 = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert "HMAC-SHA256" in (diagnose_signature(BODY, sha256, SECRET).reason or "")
    assert "sha256" in (diagnose_signature(BODY, "sha256=" + sha256, SECRET).reason or "")


def test_diagnose_secret_with_a_newline() -> None:
    reason = diagnose_signature(BODY, sign(BODY, SECRET), SECRET + "\n").reason or ""
    assert "whitespace around it" in reason
    reason = diagnose_signature(BODY, sign(BODY, SECRET + "\n"), SECRET).reason or ""
    assert "trailing newline" in reason


def test_diagnose_line_endings_and_missing_newline() -> None:
    with_crlf = BODY + b"\r\n"
    assert "ends with a newline" in (diagnose_signature(with_crlf, sign(BODY, SECRET), SECRET).reason or "")
    lf = b"line one\nline two"
    crlf = lf.replace(b"\n", b"\r\n")
    assert "line endings" in (diagnose_signature(crlf, sign(lf, SECRET), SECRET).reason or "")
    assert "lacks" in (diagnose_signature(BODY, sign(BODY + b"\n", SECRET), SECRET).reason or "")


def test_diagnose_no_header() -> None:
    assert not diagnose_signature(BODY, None, SECRET).valid


header_variants = st.sampled_from(
    ["{}", "sha1={}", "SHA1={}", " {} ", "sha1= {}", "X-Inspera-Signature: {}", "sha256={}",
     "{}0", "", "sha1=", "{}\n"]
)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=200), secret=secrets, variant=header_variants,
       upper=st.booleans(), tamper=st.booleans())
def test_diagnosis_agrees_with_verify_signature(
    body: bytes, secret: str, variant: str, upper: bool, tamper: bool
) -> None:
    signature = sign(body + (b"x" if tamper else b""), secret)
    header = variant.format(signature.upper() if upper else signature)
    diagnosis = diagnose_signature(body, header, secret)
    assert diagnosis.valid == is_valid(body, header, secret)
    assert (diagnosis.reason is None) == diagnosis.valid


def test_the_diagnosis_is_bounded_on_a_large_body_and_says_what_it_did_not_check() -> None:
    """The defect: a 600 KB body with six keys took 26.7 s (every key order re-serialised)."""
    fields = {f"key{i}": "v" * 100_000 for i in range(6)}
    body = json.dumps(fields).encode()
    started = time.monotonic()
    diagnosis = diagnose_signature(body, sign(body, "another secret"), SECRET)
    assert time.monotonic() - started < 3.0
    assert not diagnosis.valid
    assert "not checked within 2 s" in (diagnosis.reason or "")
    # What it can tell, it still tells at once: a newline added after signing.
    quick = diagnose_signature(body + b"\n", sign(body, SECRET), SECRET)
    assert "ends with a newline" in (quick.reason or "")
