"""The one openssl helper: a webhook signature as computed by an implementation nobody here wrote."""

from __future__ import annotations

import subprocess

OPENSSL = "/usr/bin/openssl"


def openssl_sign(body: bytes, secret: str) -> str:
    """The X-Inspera-Signature value (hex HMAC-SHA1 of the body), from `openssl dgst -sha1 -hmac`."""
    done = subprocess.run(
        [OPENSSL, "dgst", "-sha1", "-hmac", secret], input=body, capture_output=True, check=True, timeout=10
    )
    # "HMAC-SHA1(stdin)= 5d41…" (the label differs between OpenSSL versions; the hex is last)
    return done.stdout.decode().strip().rsplit("= ", 1)[-1]
