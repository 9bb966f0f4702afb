"""The restore form's CSRF token: a signed double-submit cookie.

The page sets a random cookie (``HttpOnly``, ``SameSite=Strict``) and puts in each restore form
the HMAC-SHA256 of that cookie under the app's ``secret``. A POST is accepted only when its form
token is the HMAC of the cookie it carries: another site can neither read the cookie nor forge a
token without the secret, and a token taken from one browser is useless with another's cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["COOKIE", "check_secret", "new_cookie", "token", "valid"]

#: The cookie's name.
COOKIE = "versioning_review_csrf"


def check_secret(secret: object) -> bytes:
    """The secret as bytes; a ``TypeError`` unless it is at least 16 bytes of str or bytes."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise TypeError(
            "allow_restore=True needs secret= a str or bytes of at least 16 bytes (e.g. "
            "secrets.token_hex(32), kept in your settings and the same in every worker): it signs "
            "the restore form's CSRF token"
        )
    return secret


def new_cookie() -> str:
    return secrets.token_urlsafe(32)


def token(secret: bytes, cookie: str) -> str:
    return hmac.new(secret, b"restore:" + cookie.encode("utf-8"), hashlib.sha256).hexdigest()


def valid(secret: bytes, cookie: str | None, given: str | None) -> bool:
    if not cookie or not given or len(cookie) > 100:
        return False
    return hmac.compare_digest(token(secret, cookie), given)
