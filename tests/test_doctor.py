"""`doctor` against the sandbox and real local HTTPS endpoints (trustme and `cryptography` certificates)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from inspera_cli import checks as doctor_checks
from inspera_cli.client import InsperaClient
from inspera_cli.signing import SIGNATURE_HEADER, is_valid
from inspera_cli.tls import certificate_not_after
from tests.conftest import SANDBOX_API_KEY, Cli

SECRET = "doctor-test-secret-7c1e"
NAMES = [
    doctor_checks.SETTINGS,
    doctor_checks.TENANT,
    doctor_checks.CREDENTIALS,
    doctor_checks.EVENTS,
    doctor_checks.ENDPOINT_HTTPS,
    doctor_checks.ENDPOINT_DNS,
    doctor_checks.ENDPOINT_TLS,
    doctor_checks.ENDPOINT_VALIDATION,
]


# -- a receiver on 127.0.0.1, over HTTPS or plain HTTP ---------------------------------------------


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0
    secret: str | None = None  # when set, a missing or wrong signature is answered 401
    path: str = "/hook"
    bodies: list[bytes] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        behaviour = self.server.behaviour
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        behaviour.bodies.append(body)
        time.sleep(behaviour.delay)
        if self.path != behaviour.path:
            status = 404
        elif behaviour.secret and not is_valid(body, self.headers.get(SIGNATURE_HEADER), behaviour.secret):
            status = 401
        else:
            status = behaviour.status
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, behaviour: Behaviour, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour = behaviour
        if context is not None:
            # The handshake happens in the handler thread, so a client that rejects the
            # certificate never blocks the accept loop.
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up after a failed handshake, or before a slow answer


@contextmanager
def receiver(
    behaviour: Behaviour | None = None, context: ssl.SSLContext | None = None
) -> Iterator[tuple[str, Behaviour]]:
    """A receiver on 127.0.0.1 port 0; yields (endpoint URL, behaviour)."""
    behaviour = behaviour or Behaviour()
    server = _Server(behaviour, context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    scheme = "https" if context else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}{behaviour.path}", behaviour
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# -- certificates ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusted(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """The test CA, trusted through REQUESTS_CA_BUNDLE as a user's private CA would be."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    return ca


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def custom_context(
    tmp_path: Path, *, not_before: dt.timedelta, not_after: dt.timedelta, issuer: trustme.CA | None
) -> ssl.SSLContext:
    """A server certificate for 127.0.0.1 valid from now+not_before to now+not_after, signed by
    ``issuer`` (or self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "doctor test")])
    if issuer is None:
        issuer_name, issuer_key = subject, key
    else:
        issuer_name = x509.load_pem_x509_certificate(issuer.cert_pem.bytes()).subject
        loaded = serialization.load_pem_private_key(issuer.private_key_pem.bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        issuer_key = loaded
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + not_before)
        .not_valid_after(now + not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context


# -- helpers ---------------------------------------------------------------------------------------


def by_name(checks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    assert [c["check"] for c in checks] == NAMES[: len(checks)]
    assert all(set(c) == {"check", "status", "ok", "detail", "fix"} for c in checks)
    assert all(c["status"] in ("pass", "fail", "skip") and c["ok"] is (c["status"] == "pass") for c in checks)
    return {c["check"]: c for c in checks}


def failing(checks: list[dict[str, Any]]) -> list[str]:
    return [c["check"] for c in checks if not c["ok"]]


@pytest.fixture
def clients() -> Iterator[Callable[[], InsperaClient]]:
    """A client factory for the library-level calls; every client made is closed afterwards."""
    made: list[InsperaClient] = []

    def make() -> InsperaClient:
        made.append(InsperaClient())
        return made[-1]

    yield make
    for client in made:
        client.close()


# -- all green, and the tenant's failures ----------------------------------------------------------


def test_all_green_against_the_sandbox_and_an_https_endpoint(
    cli: Cli, sandbox_env: Any, trusted: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    with receiver(Behaviour(secret=SECRET), server_context(trusted)) as (url, behaviour):
        result = cli("doctor", "--endpoint", url, "--secret-env", "HOOK_SECRET", "--json")
    checks = by_name(result.json)
    assert list(checks) == NAMES
    assert failing(result.json) == []
    assert all(c["fix"] is None for c in result.json)
    assert "(environment)" in checks[doctor_checks.SETTINGS]["detail"]
    assert "plain http" in checks[doctor_checks.TENANT]["detail"]
    assert "issued an access token" in checks[doctor_checks.CREDENTIALS]["detail"]
    assert "confirm_final_grades" in checks[doctor_checks.EVENTS]["detail"]
    assert "the tenant runs on this machine" in checks[doctor_checks.ENDPOINT_DNS]["detail"]
    assert "valid, expires in " in checks[doctor_checks.ENDPOINT_TLS]["detail"]
    assert checks[doctor_checks.ENDPOINT_VALIDATION]["detail"].startswith("answered 200 OK in ")
    assert "signed with the given secret" in checks[doctor_checks.ENDPOINT_VALIDATION]["detail"]
    # What reached the receiver is Inspera's validation request, signed with the real secret.
    assert b'"event": "verification"' in behaviour.bodies[0]
    assert SECRET not in result.stdout + result.stderr


def test_human_output_is_a_checklist(cli: Cli, sandbox_env: Any, trusted: trustme.CA) -> None:
    with receiver(Behaviour(status=404), server_context(trusted)) as (url, _):
        result = cli("doctor", "--endpoint", url, expect=1)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("✓ settings: tenant URL ")
    assert "✗ endpoint answers validation: answered 404 Not Found in " in result.stdout
    assert "  fix: answered 404: is the path right?" in result.stdout
    assert "1 of 8 checks failed." in result.stderr


def test_the_credentials_check_always_exchanges(
    cli: Cli, sandbox_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("doctor", "--json")
    checks = by_name(cli("doctor", "--json").json)
    accepted = "the tenant issued an access token to client sandbox"
    assert checks[doctor_checks.CREDENTIALS]["detail"] == accepted
    # A wrong key after a good run is not masked by the token cached for the right one.
    monkeypatch.setenv("INSPERA_API_KEY", "rotated-or-mistyped-key")
    result = cli("doctor", "--json", expect=1)
    assert by_name(result.json)[doctor_checks.CREDENTIALS]["ok"] is False
    assert "All 4 checks passed" not in result.stderr


def test_wrong_api_key_fails_credentials_and_skips_events(
    cli: Cli, sandbox_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSPERA_API_KEY", "not-the-key")
    result = cli("doctor", "--json", expect=1)
    checks = by_name(result.json)
    assert failing(result.json) == [doctor_checks.CREDENTIALS, doctor_checks.EVENTS]
    assert "invalid_grant" in checks[doctor_checks.CREDENTIALS]["detail"]
    assert "INSPERA_API_KEY" in checks[doctor_checks.CREDENTIALS]["fix"]
    assert checks[doctor_checks.EVENTS]["detail"] == "skipped: the credentials were not accepted"
    assert "not-the-key" not in result.stdout + result.stderr
    assert SANDBOX_API_KEY not in result.stdout + result.stderr


def test_missing_settings_skip_the_tenant_checks(cli: Cli) -> None:
    result = cli("doctor", "--json", expect=1)
    checks = by_name(result.json)
    assert "missing tenant URL" in checks[doctor_checks.SETTINGS]["detail"]
    assert "inspera-hooks login" in checks[doctor_checks.SETTINGS]["fix"]
    for name in (doctor_checks.TENANT, doctor_checks.CREDENTIALS, doctor_checks.EVENTS):
        assert checks[name] == {"check": name, "status": "skip", "ok": False,
                                "detail": "skipped: no tenant URL", "fix": None}
    assert checks[doctor_checks.SETTINGS]["status"] == "fail"


def test_unreachable_tenant(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    with receiver() as (url, _):
        pass  # now nothing listens on that port
    monkeypatch.setenv("INSPERA_URL", url.removesuffix("/hook"))
    monkeypatch.setenv("INSPERA_CLIENT_ID", "sandbox")
    monkeypatch.setenv("INSPERA_API_KEY", "k")
    checks = by_name(cli("doctor", "--json", expect=1).json)
    assert "connection refused" in checks[doctor_checks.TENANT]["detail"]
    assert checks[doctor_checks.CREDENTIALS]["detail"] == "skipped: the tenant is not reachable"


def test_https_tenant_certificate_is_checked(
    sandbox_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clients: Any
) -> None:
    context = custom_context(
        tmp_path, not_before=dt.timedelta(days=-1), not_after=dt.timedelta(days=30), issuer=None
    )
    with receiver(context=context) as (url, _):
        monkeypatch.setenv("INSPERA_URL", url.removesuffix("/hook"))
        checks = {c.check: c for c in doctor_checks.run_checks(clients)}
    assert not checks[doctor_checks.TENANT].ok
    assert "self-signed" in checks[doctor_checks.TENANT].detail
    assert checks[doctor_checks.CREDENTIALS].detail == "skipped: the tenant is not reachable"


# -- the endpoint's failures -----------------------------------------------------------------------


def test_endpoint_answering_404(cli: Cli, sandbox_env: Any, trusted: trustme.CA) -> None:
    with receiver(Behaviour(path="/inspera"), server_context(trusted)) as (url, _):
        result = cli("doctor", "--endpoint", url.replace("/inspera", "/wrong"), "--json", expect=1)
    assert failing(result.json) == [doctor_checks.ENDPOINT_VALIDATION]
    validation = by_name(result.json)[doctor_checks.ENDPOINT_VALIDATION]
    assert validation["detail"].startswith("answered 404 Not Found in ")
    assert validation["fix"].startswith("answered 404: is the path right?")


def test_endpoint_slower_than_inspera_waits(
    cli: Cli, sandbox_env: Any, trusted: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor_checks, "VALIDATION_TIMEOUT", 0.3)
    with receiver(Behaviour(delay=0.4), server_context(trusted)) as (url, _):
        result = cli("doctor", "--endpoint", url, "--json", expect=1)
    assert failing(result.json) == [doctor_checks.ENDPOINT_VALIDATION]
    validation = by_name(result.json)[doctor_checks.ENDPOINT_VALIDATION]
    # 0.4 s and what a loaded machine adds (it measured 500 ms with the load at 10 on 2 cores).
    answered = re.fullmatch(r"answered 200 OK in (\d+) ms", validation["detail"])
    assert answered and 400 <= int(answered[1]) < 1000, validation["detail"]
    took = re.match(r"took (\d\.\d) s: Inspera gives up after 0\.3 s; answer at once", validation["fix"])
    assert took and abs(float(took[1]) - int(answered[1]) / 1000) <= 0.051, validation["fix"]


def test_endpoint_that_never_answers(trusted: trustme.CA) -> None:
    with receiver(Behaviour(delay=1.0), server_context(trusted)) as (url, _):
        check = doctor_checks.validation_check(url, validation_timeout=0.2)
    assert not check.ok
    assert check.detail == "no answer: no answer within 0.4 s"
    assert check.fix is not None and check.fix.startswith("Inspera gives up after 0.2 s")


def test_an_endpoint_named_within_that_cannot_be_reached_is_not_called_slow() -> None:
    # The fix follows the kind of failure, not a word in the error: this host name holds "within".
    check = doctor_checks.validation_check("http://within:99999/", validation_timeout=0.2)
    assert check.detail == "no answer: invalid URL: Failed to parse: http://within:99999/"
    assert check.fix == "is the receiver running, and reachable at this URL?"


def test_a_plain_http_endpoint_on_this_machine_passes_with_a_tenant_on_this_machine(
    cli: Cli, sandbox_env: Any
) -> None:
    """The README's sandbox flow: `listen` on http://127.0.0.1, the sandbox as the tenant."""
    with receiver() as (url, _):
        result = cli("doctor", "--endpoint", url, "--json")
    checks = by_name(result.json)
    assert failing(result.json) == []
    assert checks[doctor_checks.ENDPOINT_HTTPS]["status"] == "pass"
    assert "plain http on this machine" in checks[doctor_checks.ENDPOINT_HTTPS]["detail"]
    assert "Inspera itself calls HTTPS endpoints only" in checks[doctor_checks.ENDPOINT_HTTPS]["detail"]
    assert checks[doctor_checks.ENDPOINT_TLS]["status"] == "pass"
    assert checks[doctor_checks.ENDPOINT_VALIDATION]["ok"]  # the receiver itself answers


def test_plain_http_endpoint_fails_for_a_real_tenant() -> None:
    with receiver() as (url, _):
        checks = {c.check: c for c in doctor_checks.endpoint_checks(url, tenant_on_loopback=False)}
    assert checks[doctor_checks.ENDPOINT_HTTPS].status is doctor_checks.CheckStatus.FAIL
    assert checks[doctor_checks.ENDPOINT_HTTPS].detail == "plain http: Inspera calls HTTPS endpoints only"
    assert "--tunnel cloudflared" in (checks[doctor_checks.ENDPOINT_HTTPS].fix or "")
    assert checks[doctor_checks.ENDPOINT_TLS].status is doctor_checks.CheckStatus.SKIP
    assert checks[doctor_checks.ENDPOINT_TLS].detail == "skipped: the endpoint is not HTTPS"
    # a plain-http endpoint elsewhere fails even with a tenant on this machine
    elsewhere = doctor_checks.endpoint_checks("http://hooks.example.invalid/", tenant_on_loopback=True)
    first = next(iter(elsewhere))
    assert first.status is doctor_checks.CheckStatus.FAIL


def test_self_signed_certificate(cli: Cli, sandbox_env: Any, trusted: trustme.CA, tmp_path: Path) -> None:
    context = custom_context(
        tmp_path, not_before=dt.timedelta(days=-1), not_after=dt.timedelta(days=90), issuer=None
    )
    with receiver(context=context) as (url, behaviour):
        result = cli("doctor", "--endpoint", url, "--json", expect=1)
    checks = by_name(result.json)
    assert failing(result.json) == [doctor_checks.ENDPOINT_TLS, doctor_checks.ENDPOINT_VALIDATION]
    assert checks[doctor_checks.ENDPOINT_TLS]["detail"] == "the certificate of 127.0.0.1 is self-signed"
    assert "public CA" in checks[doctor_checks.ENDPOINT_TLS]["fix"]
    assert checks[doctor_checks.ENDPOINT_VALIDATION]["detail"].startswith("skipped: the TLS certificate")
    assert behaviour.bodies == []


def test_expired_certificate(cli: Cli, sandbox_env: Any, trusted: trustme.CA, tmp_path: Path) -> None:
    context = custom_context(
        tmp_path,
        not_before=dt.timedelta(days=-90),
        not_after=dt.timedelta(days=-3, hours=-1),
        issuer=trusted,
    )
    with receiver(context=context) as (url, _):
        result = cli("doctor", "--endpoint", url, "--json", expect=1)
    checks = by_name(result.json)
    assert failing(result.json) == [doctor_checks.ENDPOINT_TLS, doctor_checks.ENDPOINT_VALIDATION]
    assert checks[doctor_checks.ENDPOINT_TLS]["detail"].startswith("the certificate of 127.0.0.1 expired on ")
    assert (
        checks[doctor_checks.ENDPOINT_TLS]["fix"]
        == "certificate expired 3 days ago: renew it and reload the endpoint"
    )


def test_certificate_from_an_unknown_ca(cli: Cli, sandbox_env: Any, trusted: trustme.CA) -> None:
    with receiver(context=server_context(trustme.CA())) as (url, _):
        result = cli("doctor", "--endpoint", url, "--json", expect=1)
    tls = by_name(result.json)[doctor_checks.ENDPOINT_TLS]
    assert "not issued by a trusted CA" in tls["detail"]
    assert "full chain" in tls["fix"]


def test_certificate_expiring_soon_passes_with_a_reminder(trusted: trustme.CA, tmp_path: Path) -> None:
    context = custom_context(
        tmp_path, not_before=dt.timedelta(days=-80), not_after=dt.timedelta(days=5, hours=1), issuer=trusted
    )
    with receiver(context=context) as (url, _):
        port = urlsplit(url).port or 443
        check = doctor_checks.certificate_check(doctor_checks.ENDPOINT_TLS, "127.0.0.1", port, timeout=5)
    assert check.ok
    assert check.detail.startswith("valid, expires in 5 days")
    assert check.fix == "the certificate expires in 5 days: renew it soon"


def test_throwaway_secret_rejected_says_to_pass_the_real_one(
    cli: Cli, sandbox_env: Any, trusted: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    with receiver(Behaviour(secret=SECRET), server_context(trusted)) as (url, _):
        result = cli("doctor", "--endpoint", url, "--json", expect=1)
        monkeypatch.setenv("HOOK_SECRET", "another-secret")
        wrong = cli("doctor", "--endpoint", url, "--secret-env", "HOOK_SECRET", "--json", expect=1)
    validation = by_name(result.json)[doctor_checks.ENDPOINT_VALIDATION]
    assert validation["detail"].startswith("answered 401 Unauthorized")
    assert "throwaway secret" in validation["fix"] and "--secret-env VAR" in validation["fix"]
    assert "given secret" in by_name(wrong.json)[doctor_checks.ENDPOINT_VALIDATION]["fix"]


def test_endpoint_on_a_private_address_fails_dns_unless_the_tenant_is_local(trusted: trustme.CA) -> None:
    with receiver(context=server_context(trusted)) as (url, _):
        remote = {c.check: c for c in doctor_checks.endpoint_checks(url, tenant_on_loopback=False)}
        local = {c.check: c for c in doctor_checks.endpoint_checks(url, tenant_on_loopback=True)}
    dns = remote[doctor_checks.ENDPOINT_DNS]
    assert not dns.ok
    assert dns.detail == (
        "127.0.0.1 resolves only to private or loopback addresses (127.0.0.1): Inspera cannot reach it"
    )
    assert dns.fix is not None and "--tunnel cloudflared" in dns.fix
    assert local[doctor_checks.ENDPOINT_DNS].ok
    assert all(c.ok for c in local.values())


def test_tenant_on_loopback_is_recognised() -> None:
    assert doctor_checks.resolves_to_loopback("127.0.0.1")
    assert doctor_checks.resolves_to_loopback("localhost")
    assert not doctor_checks.resolves_to_loopback("10.1.2.3")
    assert not doctor_checks.resolves_to_loopback("")


# -- arguments -------------------------------------------------------------------------------------


def test_secret_without_endpoint_is_a_usage_error(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    result = cli("doctor", "--secret-env", "HOOK_SECRET", expect=2)
    assert "need --endpoint" in result.stderr


def test_endpoint_that_is_not_a_url_is_a_usage_error(cli: Cli) -> None:
    result = cli("doctor", "--endpoint", "hooks.example.edu/inspera", expect=2)
    assert "not an http(s) URL" in result.stderr


def test_unset_secret_env_is_a_usage_error(cli: Cli) -> None:
    cli("doctor", "--endpoint", "https://127.0.0.1:1/", "--secret-env", "NOT_SET_ANYWHERE", expect=2)


def test_certificate_not_after_reads_der(ca: trustme.CA) -> None:
    pem = ca.issue_cert("example.test").cert_chain_pems[0].bytes()
    certificate = x509.load_pem_x509_certificate(pem)
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert certificate_not_after(der) == certificate.not_valid_after_utc
    with pytest.raises(ValueError, match="not a DER X.509 certificate"):
        certificate_not_after(b"\x30\x03\x02\x01")
