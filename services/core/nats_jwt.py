"""NATS's JWTs, the few fieldtrack needs: reading an auth-callout request the server signed,
and signing the user and response claims that answer it.

A NATS JWT is a plain JWT whose algorithm is `ed25519-nkey`: the signature is ed25519 over
`header.claims`, made with an nkey (https://github.com/nats-io/jwt); the `jti` is the
base32 SHA-512/256 of the claims, as the Go library computes it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

from services.core.errors import InvalidInputError

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
ACCOUNT_SEED_PREFIX = nkeys.PREFIX_BYTE_ACCOUNT
SERVER_KEY_PREFIX = "N"  # a server's public nkey starts with N
# NATS's "no limit" for a user's subscriptions, data and payload.
NO_LIMIT = -1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_account_seed() -> str:
    """A fresh account nkey seed (`SA…`): the auth callout's issuer."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), ACCOUNT_SEED_PREFIX)
    return seed.decode()


def public_key(seed: str) -> str:
    """The public nkey (`A…` for an account) of a seed."""
    try:
        key: bytes = nkeys.from_seed(seed.encode()).public_key
    except (nkeys.NkeysError, ValueError) as exc:
        raise InvalidInputError(f"not an nkey seed: {exc}") from exc
    return key.decode()


def encode(claims: dict[str, Any], seed: str) -> str:
    """Sign *claims* (without `iss`, `iat`, `jti`: added here) with the nkey of *seed*."""
    pair = nkeys.from_seed(seed.encode())
    body = {**claims, "iss": pair.public_key.decode(), "iat": int(time.time()), "jti": ""}
    digest = hashlib.new("sha512_256", json.dumps(body, separators=(",", ":")).encode())
    body["jti"] = base64.b32encode(digest.digest()).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(pair.sign(signing_input.encode()))}"


def decode_verified(token: str, *, issuer_prefix: str) -> dict[str, Any]:
    """The claims of *token*, after checking its signature against its own issuer, that the
    issuer is of the expected kind and that it has not expired."""
    try:
        header_b64, body_b64, signature_b64 = token.split(".")
        header = json.loads(_unb64(header_b64))
        claims: dict[str, Any] = json.loads(_unb64(body_b64))
        issuer = str(claims["iss"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"not a NATS JWT: {exc}") from exc
    if header.get("alg") not in ("ed25519-nkey", "ed25519") or not issuer.startswith(issuer_prefix):
        raise InvalidInputError("JWT issuer or algorithm is not the expected one")
    try:
        # base32 of prefix byte, 32-byte ed25519 key, crc16
        raw = base64.b32decode(issuer + "=" * (-len(issuer) % 8))[1:33]
        nacl.signing.VerifyKey(raw).verify(
            f"{header_b64}.{body_b64}".encode(), _unb64(signature_b64)
        )
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise InvalidInputError(f"JWT signature does not verify: {exc}") from exc
    expires = claims.get("exp")
    if isinstance(expires, int) and expires < time.time():
        raise InvalidInputError("JWT has expired")
    return claims
