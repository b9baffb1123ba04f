"""Who may use the review console, and proof that a form was posted from it (docs/design.md §5.5).

Credentials come from files, never flags (a flag is visible to every user of the machine):

- `--auth-file`: lines `user:password` for HTTP basic auth; the user name becomes the review's
  `reviewer`. Basic auth because a browser and a script both speak it with no login page, and
  the console sits behind TLS where that matters (an ingress, a port-forward);
- `--token-file`: one bearer token (at least 16 characters) for scripts (`Authorization: Bearer`)
  and a login form for browsers, which sets a session cookie: HMAC-signed name and expiry,
  HttpOnly (no script reads it) and SameSite=Strict (no other site's page sends it).

With neither, the console serves anyone who reaches it, as reviewer `anonymous`: allowed on a
loopback address only, unless `--insecure-no-auth` says it is meant (`check_exposure`).

CSRF: every form carries `HMAC(secret, nonce, principal)`, the nonce a random HttpOnly SameSite=Strict
cookie. A POST is accepted only when the form's token matches the cookie it came with and the
principal posting it, so another site can neither read a token nor forge one, whichever way the
user is logged in (a browser re-sends basic credentials to a cross-site form post; the cookie and
the secret are what it cannot). The secret is drawn at start: a restart invalidates open forms
and sessions, which costs a reload.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Final

from agent.errors import ConfigError

MIN_TOKEN_CHARS: Final = 16
MAX_NAME_CHARS: Final = 128  # a review's `reviewer`
SESSION_S: Final = 12 * 3600
SESSION_COOKIE: Final = "dknn_session"
NONCE_COOKIE: Final = "dknn_csrf"
ANONYMOUS: Final = "anonymous"
BEARER: Final = "token"  # the reviewer a bearer token posts as


@dataclass(frozen=True)
class Credentials:
    users: dict[str, str] = field(default_factory=dict)  # user -> password
    token: str | None = None

    @property
    def required(self) -> bool:
        return bool(self.users) or self.token is not None


def load_credentials(auth_file: Path | None, token_file: Path | None) -> Credentials:
    """The files' credentials; a ConfigError names the file and line of anything malformed (never
    the password)."""
    users: dict[str, str] = {}
    if auth_file is not None:
        for number, line in enumerate(_read(auth_file, "--auth-file").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, colon, password = line.rstrip("\r").partition(":")
            if not colon or not user.strip() or not password or len(user) > MAX_NAME_CHARS:
                raise ConfigError(
                    f"--auth-file {auth_file} line {number}: expected user:password (a user of 1-{MAX_NAME_CHARS} "
                    "characters, a password not empty)"
                )
            users[user.strip()] = password
        if not users:
            raise ConfigError(f"--auth-file {auth_file} holds no user:password line")
    token = None
    if token_file is not None:
        token = _read(token_file, "--token-file").strip()
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise ConfigError(
                f"--token-file {token_file}: one token of at least {MIN_TOKEN_CHARS} characters without spaces"
            )
    return Credentials(users, token)


def _read(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag} {path}: cannot read it ({exc.__class__.__name__})") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, credentials_given: bool, insecure_no_auth: bool) -> None:
    """Refuses to serve a non-loopback address to anyone at all, unless told so in as many words."""
    if not credentials_given and not is_loopback(host) and not insecure_no_auth:
        raise ConfigError(
            f"--host {host} is reachable from other machines and neither --auth-file nor --token-file is given: "
            "give one, bind 127.0.0.1, or pass --insecure-no-auth"
        )


class Auth:
    """Checks a request's credentials and signs sessions and CSRF tokens with one secret."""

    def __init__(self, credentials: Credentials, secret: bytes | None = None, session_s: float = SESSION_S) -> None:
        self.credentials = credentials
        self._secret = secret or secrets.token_bytes(32)
        self._session_s = session_s

    def principal(self, authorization: str | None, session: str | None) -> str | None:
        """The reviewer a request acts as, or None where it is not authenticated."""
        if not self.credentials.required:
            return ANONYMOUS
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "basic" and self.credentials.users:
            return self._basic(value.strip())
        if scheme.lower() == "bearer" and self.credentials.token is not None:
            return BEARER if self.token_ok(value.strip()) else None
        return self._session_name(session) if session else None

    def _basic(self, value: str) -> str | None:
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        expected = self.credentials.users.get(user)
        # compare even for an unknown user, so the time taken does not say which users exist
        ok = _same(password, expected or secrets.token_hex(16))
        return user if ok and expected is not None else None

    def token_ok(self, given: str) -> bool:
        token = self.credentials.token
        return token is not None and _same(given, token)

    def session(self, name: str, now: float | None = None) -> str:
        """A session cookie's value: the name and expiry, signed."""
        expiry = int((now or time.time()) + self._session_s)
        body = base64.urlsafe_b64encode(name.encode()).decode() + "." + str(expiry)
        return body + "." + self._sign(b"session", body.encode())

    def _session_name(self, cookie: str, now: float | None = None) -> str | None:
        body, _, signature = cookie.rpartition(".")
        if not body or not _same(signature, self._sign(b"session", body.encode())):
            return None
        encoded, _, expiry = body.partition(".")
        if not expiry.isdigit() or int(expiry) < (now or time.time()):
            return None
        try:
            name = base64.urlsafe_b64decode(encoded.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        return name if 0 < len(name) <= MAX_NAME_CHARS else None

    @staticmethod
    def new_nonce() -> str:
        return secrets.token_urlsafe(24)

    def csrf_token(self, nonce: str, principal: str) -> str:
        return self._sign(b"csrf", nonce.encode() + b"\0" + principal.encode())

    def csrf_ok(self, nonce: str | None, principal: str, given: str | None) -> bool:
        if not nonce or not given:
            return False
        return _same(given, self.csrf_token(nonce, principal))

    def _sign(self, purpose: bytes, message: bytes) -> str:
        digest = hmac.new(self._secret, purpose + b"\0" + message, sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _same(given: str, expected: str) -> bool:
    """A constant-time comparison of a secret with what a request sent. As bytes: `compare_digest`
    raises TypeError on a str with non-ASCII characters, which a forged form field or cookie holds
    as easily as any other."""
    return hmac.compare_digest(given.encode(), expected.encode())
