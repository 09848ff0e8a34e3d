"""Password hashing with argon2id (RFC 9106 parameters of argon2-cffi's defaults)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from medshard.errors import InvalidInputError

_HASHER = PasswordHasher()
MIN_LENGTH = 8
#: A hash to verify against when the user does not exist, so timing does not tell.
_DUMMY = _HASHER.hash("medshard-dummy-password")


def hash_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise InvalidInputError(f"a password needs at least {MIN_LENGTH} characters")
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches; runs a full hash even for a missing user."""
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False
