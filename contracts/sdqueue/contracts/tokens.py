"""What the JWT bound to a request message must say, and the body hash that binds it."""

from __future__ import annotations

import base64
import hashlib
from typing import Final

AUDIENCE: Final = "sdqueue"
SCOPE_GENERATE: Final = "sdqueue:generate"
SCOPE_CANCEL: Final = "sdqueue:cancel"
SCOPE_ADMIN: Final = "sdqueue:admin"
REQUIRED_CLAIMS: Final = ("iss", "aud", "sub", "iat", "exp", "jti", "body_sha256", "scope")
BEARER_PREFIX: Final = "Bearer "


def body_sha256(body: bytes) -> str:
    """Hash request body bytes as the `body_sha256` claim carries them: base64url SHA-256, no padding."""
    digest = hashlib.sha256(body).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
