"""Encryption at rest: Fernet tokens under MultiFernet, so keys rotate without downtime.

ENCRYPTION_KEYS lists Fernet keys newest first: the first encrypts, all decrypt. Without it, one key is
derived from SECRET_KEY (HKDF), which is enough for a single deployment but cannot be rotated.
"""

import base64
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["InvalidToken", "decrypt", "encrypt", "get_fernet", "rotate"]


def _derived_key() -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"jobsite-encryption-at-rest", info=b"fernet")
    return base64.urlsafe_b64encode(hkdf.derive(settings.SECRET_KEY.encode()))


@lru_cache(maxsize=1)
def get_fernet() -> MultiFernet:
    keys: list[str] | list[bytes] = settings.ENCRYPTION_KEYS or [_derived_key()]
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from None


def encrypt(plaintext: str) -> str:
    return get_fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """Raises InvalidToken when no configured key opens the token."""
    return get_fernet().decrypt(token.encode()).decode()


def rotate(token: str) -> str:
    """Re-encrypt a token under the newest key."""
    return get_fernet().rotate(token.encode()).decode()
