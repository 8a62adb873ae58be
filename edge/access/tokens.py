"""Checking a bearer token: static API tokens (compared in constant time) or signed JWTs
(HS256 or RS256, expiry required). Used by edge.access.auth for every request under /v1/."""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Any

from edge.settings import Settings, SettingsError, read_token_file

log = logging.getLogger("edge.auth")

#: clock skew between a JWT's issuer and this server that `exp` and `nbf` tolerate
JWT_LEEWAY_S = 30.0
_MIN_TOKEN_CHARS = 16


class Refused(Exception):
    """A request or auth message that is not let in; `code` is the wire error code."""

    def __init__(self, status: int, code: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.reason, self.message = status, code, reason, message


def unauthorized(reason: str, message: str) -> Refused:
    return Refused(401, "unauthorized", reason, message)


@dataclass(frozen=True)
class Principal:
    """Who a request is: `identity` names a token without revealing it (a fingerprint, or a
    JWT's subject); `via` says how the token came (header, subprotocol, query, message)."""

    identity: str
    via: str


class Authenticator:
    """Checks a token against the static tokens and the JWT keys of the settings."""

    def __init__(self, settings: Settings) -> None:
        tokens = list(settings.auth_tokens)
        if settings.auth_tokens_file is not None:
            tokens += read_token_file(settings.auth_tokens_file)
        #: (sha256 of the token, its identity); hashing makes every comparison equal-length
        self._tokens = [(_digest(t), "token:" + fingerprint(t)) for t in dict.fromkeys(tokens)]
        if any(len(t) < _MIN_TOKEN_CHARS for t in tokens):
            log.warning(
                "an auth token is shorter than %d characters; use openssl rand -hex 32",
                _MIN_TOKEN_CHARS,
            )
        self._jwt_keys: dict[str, Any] = {}
        self._audience = settings.jwt_audience or None
        if settings.jwt_secret or settings.jwt_public_key:
            self._jwt_keys = _jwt_keys(settings)
        self.enabled = settings.auth_enabled

    def verify(self, token: str, via: str) -> Principal:
        """The principal a token stands for, or raise Refused (401)."""
        digest = _digest(token)
        found = None
        for known, identity in self._tokens:  # every one, so timing tells nothing of which
            if hmac.compare_digest(digest, known):
                found = identity
        if found is not None:
            return Principal(found, via)
        if self._jwt_keys and token.count(".") == 2:
            return self._verify_jwt(token, via)
        raise unauthorized("invalid_token", "the token is not valid")

    def _verify_jwt(self, token: str, via: str) -> Principal:
        import jwt

        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise unauthorized("invalid_token", "the token is not valid") from None
        key = self._jwt_keys.get(alg) if isinstance(alg, str) else None
        if key is None or not isinstance(alg, str):
            raise unauthorized(
                "invalid_token", f"JWT algorithm must be one of {sorted(self._jwt_keys)}"
            )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("expired_token", "the token has expired") from None
        except jwt.InvalidTokenError as e:
            raise unauthorized("invalid_token", f"the token is not valid: {e}") from None
        sub = claims.get("sub")
        identity = f"jwt:{sub}" if isinstance(sub, str) and sub else "jwt:" + fingerprint(token)
        return Principal(identity, via)


def _jwt_keys(settings: Settings) -> dict[str, Any]:
    try:
        import jwt  # noqa: F401
    except ImportError:
        raise SettingsError(
            "jwt_secret / jwt_public_key need PyJWT: pip install 'edge-gateway[auth]'"
        ) from None
    keys: dict[str, Any] = {}
    if settings.jwt_secret:
        keys["HS256"] = settings.jwt_secret
    if settings.jwt_public_key is not None:
        try:
            from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
            from cryptography.hazmat.primitives.serialization import load_pem_public_key
        except ImportError:
            raise SettingsError(
                "jwt_public_key (RS256) needs cryptography: pip install 'edge-gateway[auth]'"
            ) from None
        path = settings.jwt_public_key
        try:
            key = load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as e:
            raise SettingsError(f"jwt_public_key: {path} is not a PEM public key: {e}") from None
        if not isinstance(key, RSAPublicKey):
            raise SettingsError(f"jwt_public_key: {path} is not an RSA key (RS256 needs one)")
        keys["RS256"] = key
    return keys


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def fingerprint(token: str) -> str:
    return _digest(token).hex()[:12]
