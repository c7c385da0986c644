"""A server's TLS certificate: fetched in a handshake, and its expiry read from the DER bytes.

The ssl module shows a certificate's fields only when it verified; an expired one does not, so
its notAfter is read here directly (a small DER walk over the fields before it).
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime


def peer_certificate(host: str, port: int, context: ssl.SSLContext, timeout: float) -> bytes:
    """The DER certificate ``host`` presents in a handshake under ``context`` (raises ssl/OS errors)."""
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the server sent no certificate")
    return der


def unverified_certificate(host: str, port: int, timeout: float) -> bytes | None:
    """The certificate ``host`` presents, without verifying it (to say why it failed); None if none came."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        return peer_certificate(host, port, context, timeout)
    except (OSError, UnicodeError):
        return None


def _der_item(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``pos``."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    return tag, pos, pos + length


def certificate_not_after(der: bytes) -> datetime:
    """The notAfter time of a DER certificate (read directly: the ssl module only shows it for
    certificates that verified, and an expired one does not)."""
    try:
        _, certificate, _ = _der_item(der, 0)
        _, pos, _ = _der_item(der, certificate)  # tbsCertificate
        tag, _, end = _der_item(der, pos)
        if tag == 0xA0:  # explicit version
            pos = end
        for _ in range(3):  # serialNumber, signature, issuer
            _, _, pos = _der_item(der, pos)
        _, validity, _ = _der_item(der, pos)
        _, _, pos = _der_item(der, validity)  # notBefore
        tag, start, end = _der_item(der, pos)
        text = der[start:end].decode("ascii")
        if tag == 0x17:  # UTCTime: YYMMDDHHMMSSZ
            year = int(text[:2])
            text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
        return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    except (IndexError, ValueError) as exc:
        raise ValueError("not a DER X.509 certificate") from exc


